"""Two real processes of every service on PostgreSQL, two gateways sharing
Redis: the deployment Kubernetes runs, on this machine."""

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import redis

from launcher import databases
from launcher.plan import SERVICES
from launcher.stack import Stack, http, metric_total, plan_stack
from plumbing.channels import MAX_RECONNECT_BACKOFF_MS
from tests.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "e2e-admin-" + uuid.uuid4().hex
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _require(what: str, env: str, reachable) -> None:
    try:
        reachable()
    except Exception as error:  # noqa: BLE001 - any failure means "not here"
        if os.environ.get(env) == "1":
            pytest.fail(f"{what} required but not reachable: {error}")
        pytest.skip(f"{what} not reachable")


@pytest.fixture
def replicated(tmp_path):
    _require("PostgreSQL", "REQUIRE_POSTGRES", lambda: psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2).close())
    _require("Redis", "REQUIRE_REDIS", lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping())
    with databases.fresh_databases(POSTGRES_ADMIN_URL, "shop_e2e", SERVICES) as database_urls:
        environ = {
            **database_urls,
            "RATE_LIMIT": "1000000/minute",
            "RATE_LIMIT_STORAGE": REDIS_URL,
            "GATEWAY_WORKERS": "2",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "DRAIN_DELAY_S": "0.5",
            "SHUTDOWN_GRACE_S": "5",
            "MAX_CONNECTION_AGE_S": "5",
            "RECOVERY_INTERVAL_S": "1",
            "LOG_LEVEL": os.environ.get("E2E_LOG_LEVEL", "WARNING"),
            "DATA_DIR": str(tmp_path / "data"),
        }
        stack = Stack(plan_stack(2, environ), log_dir=str(tmp_path)).start()
        yield stack
        stack.stop()


def put_product(gateway: str, product_id: str, available: int) -> None:
    status, _, body = http(
        "PUT",
        f"{gateway}/inventory/{product_id}",
        {"name": "Limited edition", "price_cents": 1000, "currency": "USD", "available": available},
        headers=ADMIN,
    )
    assert status == 200, body


def place_order(gateway: str, customer: str, product_id: str):
    body = {"customer_id": customer, "items": [{"product_id": product_id, "quantity": 1}], "payment_method": "tok_visa"}
    return http("POST", f"{gateway}/orders", body, timeout=30)


def test_two_hundred_orders_for_fifty_units_across_replicas(replicated):
    gateways = replicated.gateway_urls()
    put_product(gateways[0], "P900", 50)
    inventory = replicated.replicas_of("inventory_svc")
    killed = threading.Event()
    results = []

    def order(n):
        if n == 30:
            # Lose one inventory replica mid-run, once both have served.
            for _ in range(100):
                reserved = [
                    metric_total(s.metrics_port, "grpc_server_handled_total", grpc_method="Reserve")
                    for s, _ in inventory
                ]
                if all(reserved):
                    break
                time.sleep(0.05)
            inventory[1][1].send_signal(signal.SIGKILL)
            killed.set()
            results.append(("reserved-by-replica", reserved))
        status, _, body = place_order(gateways[n % 2], f"C{n}", "P900")
        results.append((n, killed.is_set(), status, body))

    with ThreadPoolExecutor(max_workers=24) as pool:
        list(pool.map(order, range(200)))

    reserved_by_replica = next(r[1] for r in results if r[0] == "reserved-by-replica")
    outcomes = [r for r in results if r[0] != "reserved-by-replica"]
    assert all(count > 0 for count in reserved_by_replica), reserved_by_replica
    statuses = [status for _, _, status, _ in outcomes]
    assert set(statuses) <= {201, 409}, [b for _, _, s, b in outcomes if s not in (201, 409)][:3]
    assert statuses.count(201) == 50
    assert any(after and status == 201 for _, after, status, _ in outcomes), "no order succeeded after the kill"
    assert http("GET", f"{gateways[1]}/inventory/P900")[2]["available"] == 0

    for _, _, status, body in outcomes:
        order_id = body["id"] if status == 201 else body["error"]["details"][0]["metadata"]["order_id"]
        payments = http("GET", f"{gateways[0]}/payments?order_id={order_id}")[2]["payments"]
        captured = [p for p in payments if p["status"] == "CAPTURED"]
        assert len(captured) == (1 if status == 201 else 0), (order_id, payments)

    for module, method in (("payment_svc", "Charge"), ("order_svc", "CreateOrder")):
        counts = [
            metric_total(s.metrics_port, "grpc_server_handled_total", grpc_method=method)
            for s, _ in replicated.replicas_of(module)
        ]
        assert all(c > 0 for c in counts), (module, counts)


def test_sigterm_of_each_service_replica_in_turn_fails_no_order(replicated):
    gateways = replicated.gateway_urls()
    put_product(gateways[0], "P901", 100_000)
    stop = threading.Event()
    outcomes = []

    def customer(n):
        i = 0
        while not stop.is_set():
            status, _, body = place_order(gateways[(n + i) % 2], f"D{n}", "P901")
            outcomes.append((status, body))
            i += 1

    threads = [threading.Thread(target=customer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        for module, service in (
            ("inventory_svc", "shop.inventory.v1.InventoryService"),
            ("payment_svc", "shop.payment.v1.PaymentService"),
            ("order_svc", "shop.order.v1.OrderService"),
        ):
            for spec, proc in replicated.replicas_of(module):
                time.sleep(1)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
                replicated.restart(spec)
                # As a rollout waits for the new pod to take traffic before
                # it stops the next one.
                for _ in range(300):
                    if metric_total(spec.metrics_port, "grpc_server_handled_total", grpc_service=service):
                        break
                    time.sleep(0.1)
                else:
                    pytest.fail(f"{spec.name} took no calls after its restart")
                # ... and every client has reconnected to it (within its
                # longest reconnect backoff), like a rollout's minReadySeconds.
                time.sleep(MAX_RECONNECT_BACKOFF_MS / 1000 * 1.5)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [(s, b) for s, b in outcomes if s != 201]
    print(f"orders placed during the rolling restarts: {len(outcomes)}, failed: {len(failed)}")
    assert len(outcomes) > 50
    assert failed == []
