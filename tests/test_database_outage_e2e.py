"""The shop as real processes on a PostgreSQL cluster of the test's own, which
the test restarts, crashes and starts late: the database going away gives
503s (or 504s) in the API's shape and nothing else, the services wait for it
instead of dying, and once it is back every order settles with stock and
payments balanced."""

import datetime as dt
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launcher.plan import SERVICE_NAMES, SERVICES
from launcher.stack import Stack, http, plan_stack
from plumbing.health import REASON_KEY
from plumbing.readiness import WAITING_FOR_DATABASE
from tests import harness
from tests.test_replicas_e2e import ADMIN, put_product

pytestmark = pytest.mark.e2e

PRODUCT, STOCK = "P_OUTAGE", 1_000_000


def outage_stack(private_postgres, log_dir: str, replicas: int) -> tuple[Stack, dict[str, str]]:
    """The shop's processes (not started) on new databases of the cluster, and those databases' URLs."""
    urls = {service: private_postgres.new_database(f"shop_{service}") for service in SERVICES}
    environ = {
        **{f"{service.upper()}_DATABASE_URL": url for service, url in urls.items()},
        "GATEWAY_WORKERS": "1",
        "RATE_LIMIT": "1000000/minute",
        "ADMIN_TOKEN": ADMIN["Authorization"].removeprefix("Bearer "),
        "GRPC_WORKERS": "8",
        "RECOVERY_INTERVAL_S": "1",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "DATA_DIR": os.path.join(log_dir, "data"),
    }
    specs = plan_stack(replicas, environ)
    # One gateway is enough to watch the services through.
    specs = [s for s in specs if s.module != "gateway" or s.name == "gateway-1"]
    return Stack(specs, log_dir=log_dir), urls


def readiness_of(spec) -> tuple[int, str]:
    with grpc.insecure_channel(f"127.0.0.1:{spec.port}") as channel:
        response, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
            health_pb2.HealthCheckRequest(service=SERVICE_NAMES[spec.module]), timeout=2
        )
        return response.status, dict(call.trailing_metadata() or ()).get(REASON_KEY, "")


def log_lines(stack: Stack, spec) -> list[dict]:
    with open(os.path.join(stack.log_dir, f"{spec.name}.log")) as log:
        return [json.loads(line) for line in log if line.startswith("{")]


def test_every_service_started_without_its_database_waits_not_serving_then_serves(private_postgres, tmp_path):
    stack, urls = outage_stack(private_postgres, str(tmp_path), replicas=2)
    private_postgres.stop()
    stack.launch()
    services = [(spec, proc) for spec, proc in stack.procs if spec.module != "gateway"]
    try:
        assert len(services) == 6
        for spec, _ in services:
            harness.eventually(
                lambda spec=spec: _answers(spec), what=f"{spec.name} answering health checks", timeout_s=60
            )
            assert readiness_of(spec) == (health_pb2.HealthCheckResponse.NOT_SERVING, WAITING_FOR_DATABASE)
        gateway = stack.gateway_urls()[0]
        harness.eventually(lambda: _gateway_answers(gateway), what="the gateway answering", timeout_s=60)
        status, _, body = http("GET", f"{gateway}/ready")
        assert status == 503
        assert {name: report.get("detail") for name, report in body["backends"].items()} == {
            name: WAITING_FOR_DATABASE for name in SERVICES
        }

        private_postgres.start()
        returned = time.monotonic()
        stack.wait_ready()
        print(f"\nevery service SERVING {time.monotonic() - returned:.1f}s after the database returned")
        assert all(proc.poll() is None for _, proc in services), "a service exited while its database was down"
        assert http("GET", f"{gateway}/ready")[0] == 200
        status, _, body = http(
            "POST", f"{gateway}/orders", {"customer_id": "C1", "items": [{"product_id": "P001", "quantity": 1}]}
        )
        assert status == 201, body
    finally:
        stack.stop()
    for spec, _ in services:
        lines = log_lines(stack, spec)
        retries = [line for line in lines if line["message"] == "database not ready; retrying"]
        assert retries, f"{spec.name} logged no retry"
        # Lines at attempts 1, 2, 4, 8 ..., each numbered, and no traceback.
        assert [line["attempt"] for line in retries] == [2**n for n in range(len(retries))]
        assert not [line for line in lines if line["level"] in ("ERROR", "CRITICAL")], spec.name
    # Two replicas of each service prepared one database together: neither
    # failed on the other's migration (both stayed up), applied once.
    for url in urls.values():
        with psycopg.connect(url) as conn:
            versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
            assert versions == list(range(1, len(versions) + 1)), versions  # each once


def _answers(spec) -> bool:
    try:
        readiness_of(spec)
        return True
    except grpc.RpcError:
        return False


def _gateway_answers(gateway: str) -> bool:
    try:
        return http("GET", f"{gateway}/health", timeout=2)[0] == 200
    except OSError:
        return False


@dataclass
class Answer:
    at: float
    method: str
    path: str
    status: int
    headers: dict
    body: object


class Customers:
    """Clients placing orders (and reading them back) until told to stop,
    each request a fresh customer's, every answer kept."""

    def __init__(self, gateway: str, count: int):
        self.gateway = gateway
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]

    def __enter__(self) -> "Customers":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _call(self, method: str, path: str, body=None) -> Answer:
        status, headers, payload = http(method, f"{self.gateway}{path}", body, timeout=60)
        answer = Answer(time.monotonic(), method, path, status, headers, payload)
        with self.lock:
            self.answers.append(answer)
        return answer

    def _run(self, n: int) -> None:
        i = 0
        while not self.stopping.is_set():
            i += 1
            placed = self._call(
                "POST",
                "/orders",
                {"customer_id": f"C{n}-{i}", "items": [{"product_id": PRODUCT, "quantity": 1 + i % 3}]},
            )
            if placed.status == 201:
                self._call("GET", f"/orders/{placed.body['id']}")
            if i % 5 == 0:
                self._call("GET", f"/inventory/{PRODUCT}")


def named_order(answer: Answer) -> str | None:
    for detail in answer.body["error"]["details"]:
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return detail.get("metadata", {}).get("order_id")
    return None


PENDING_SINCE = "SELECT id FROM orders WHERE status = 'PENDING' AND created_at < %s"


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_a_database_restart_and_crash_mid_load_give_503s_and_every_order_settles(private_postgres, tmp_path):
    stack, urls = outage_stack(private_postgres, str(tmp_path), replicas=1)
    stack.start()
    try:
        gateway = stack.gateway_urls()[0]
        put_product(gateway, PRODUCT, STOCK)
        with Customers(gateway, count=4) as customers:
            time.sleep(2)
            private_postgres.restart()  # pg_ctl restart -m fast: every session terminated
            time.sleep(3)
            private_postgres.stop("immediate")  # a crash
            time.sleep(6)
            private_postgres.start()  # crash recovery, then it takes connections again
            returned, returned_at = time.monotonic(), dt.datetime.now(dt.UTC)
            with psycopg.connect(urls["order"], autocommit=True) as orders_db:
                # The orders the outage left PENDING settle, under load.
                outage_settled = harness.eventually(
                    lambda: not orders_db.execute(PENDING_SINCE, (returned_at,)).fetchall() and time.monotonic(),
                    what="the orders placed before the database returned settling",
                    timeout_s=90,
                )
                time.sleep(1)  # orders go on after it
        with psycopg.connect(urls["order"], autocommit=True) as orders_db:
            harness.eventually(
                lambda: not orders_db.execute(PENDING_SINCE, (dt.datetime.now(dt.UTC),)).fetchall(),
                what="every order settling",
                timeout_s=90,
            )
        answers = customers.answers
    finally:
        stack.stop()

    statuses = Counter(a.status for a in answers)
    posts = [a for a in answers if a.method == "POST"]
    orders = dict(query(urls["order"], "SELECT id, status FROM orders"))
    print(
        f"\nrequests {len(answers)} ({dict(sorted(statuses.items()))}); orders placed {len(posts)}, "
        f"stored {len(orders)} ({dict(Counter(orders.values()))}); "
        f"503s {statuses[503]}, 504s {statuses[504]}, 500s {statuses[500]}; "
        f"the orders left PENDING settled {outage_settled - returned:.1f}s after the database returned"
    )

    # No 500s: every failure is 503 or 504 in the API's shape, a 503 with Retry-After.
    failures = [a for a in answers if a.status >= 300]
    assert {a.status for a in failures} <= {503, 504}, [(a.status, a.body) for a in failures if a.status not in (503, 504)][:3]
    assert statuses[503], "the outages were not seen: the test tested nothing"
    for answer in failures:
        error = answer.body["error"]
        assert set(answer.body) == {"error", "request_id"}
        assert (error["code"], error["status"]) == (answer.status, "UNAVAILABLE" if answer.status == 503 else "DEADLINE_EXCEEDED")
        if answer.status == 503:
            assert int(answer.headers["Retry-After"]) > 0
    assert any(a.status == 201 and a.at > returned for a in posts), "no order was placed after the database returned"

    # Every stored order was answered for: 201 with it, or an error naming it.
    answered = {a.body["id"] for a in posts if a.status == 201} | {named_order(a) for a in posts if a.status != 201}
    assert set(orders) <= answered
    assert all(orders[a.body["id"]] == "CONFIRMED" for a in posts if a.status == 201)
    assert set(orders.values()) <= {"CONFIRMED", "FAILED"}

    # Stock and payments balance: one capture per confirmed order, at its total; nothing else captured.
    confirmed = dict(query(urls["order"], "SELECT id, total_cents FROM orders WHERE status = 'CONFIRMED'"))
    sold = query(
        urls["order"],
        "SELECT COALESCE(SUM(i.quantity), 0) FROM order_items i JOIN orders o ON o.id = i.order_id "
        "WHERE o.status = 'CONFIRMED'",
    )[0][0]
    available = query(urls["inventory"], f"SELECT available FROM products WHERE product_id = '{PRODUCT}'")[0][0]
    assert STOCK - available == sold
    captures = query(urls["payment"], "SELECT order_id, amount_cents FROM payments WHERE status = 'CAPTURED'")
    assert sorted(captures) == sorted(confirmed.items())
