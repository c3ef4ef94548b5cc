"""`python -m gateway` as it runs in production: granian, two worker
processes, real HTTP, in front of in-process gRPC backends.

The Redis tests need Redis at TEST_REDIS_URL; they skip without it unless
REQUIRE_REDIS=1.
"""

import contextlib
import glob
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from launcher.stack import free_port_base
from tests.harness import ROOT
from tests.test_gateway_support import redis_or_skip, running_backends

pytestmark = pytest.mark.e2e

BUDGET = 8
# Bounds, not assertions: each only keeps a broken run from hanging.
START_TIMEOUT_S = 30
SPREAD_TIMEOUT_S = 30


def _free_port() -> int:
    # Below the ephemeral range: a port-0 gRPC server or a client socket of
    # another test cannot take it between this pick and the gateway's bind.
    return free_port_base()


class GatewayProcess:
    def __init__(self, env: dict[str, str], log_path: str):
        self.port = int(env["GATEWAY_PORT"])
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict | None = None,
        source: str = "127.0.0.1",
    ):
        """One request on its own connection, so either worker may take it;
        `source` picks the client address (any of 127.0.0.0/8)."""
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0)
        )
        try:
            connection.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def wait_until_serving(self) -> None:
        give_up = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                if self.request("GET", "/health")[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not start:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path) as log:
            return log.read()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def gateway_env(backends, **settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        GATEWAY_PORT=str(_free_port()),
        INVENTORY_ADDR=backends.inventory,
        PAYMENT_ADDR=backends.payment,
        ORDER_ADDR=backends.order,
        LOG_FORMAT="json",
        GATEWAY_WORKERS="2",
        GATEWAY_THREADS="4",
    )
    env.update(settings)
    return env


@pytest.fixture(scope="module")
def redis_url():
    return redis_or_skip()


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    data = tmp_path_factory.mktemp("gateway-e2e")
    with running_backends(lambda name: f"sqlite:///{data}/{name}.db") as running:
        yield running


@pytest.fixture(scope="module")
def gateway(backends, redis_url, tmp_path_factory):
    """Two workers sharing Redis; the test owns the metrics directory so it
    can see which worker answered what."""
    workdir = tmp_path_factory.mktemp("gateway-process")
    metrics_dir = workdir / "metrics"
    env = gateway_env(
        backends,
        RATE_LIMIT=f"{BUDGET}/hour",
        RATE_LIMIT_STORAGE=redis_url,
        RATE_LIMIT_KEY_PREFIX=f"e2e-{uuid.uuid4().hex}",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    running = GatewayProcess(env, str(workdir / "gateway.log"))
    try:
        running.wait_until_serving()
        running.metrics_dir = str(metrics_dir)
        yield running
    finally:
        running.stop()


def requests_by_worker(metrics_dir: str, route: str) -> dict[int, Counter]:
    """Per worker pid: its gateway_http_requests_total for `route`, by status."""
    by_worker: dict[int, Counter] = {}
    for path in glob.glob(os.path.join(metrics_dir, "counter_*.db")):
        pid = int(re.search(r"counter_(\d+)\.db$", path).group(1))
        counts = Counter()
        for metric in MultiProcessCollector.merge([path], accumulate=True):
            for sample in metric.samples:
                if sample.name == "gateway_http_requests_total" and sample.labels.get("route") == route:
                    counts[sample.labels["status"]] += int(sample.value)
        if counts:
            by_worker[pid] = counts
    return by_worker


def metric_value(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def until_both_workers_answer(metrics_dir: str, route: str, send, at_least: int = 0) -> int:
    """Call send() until both workers have answered `route` (and at least
    `at_least` times); returns how many calls it made. Bounded by time, not
    by a count: the gateway serves once its first worker is up, and on a busy
    machine the second may start seconds later."""
    sent = 0
    give_up = time.monotonic() + SPREAD_TIMEOUT_S
    while sent < at_least or len(requests_by_worker(metrics_dir, route)) < 2:
        if time.monotonic() > give_up:
            break
        send()
        sent += 1
    return sent


def test_rate_limit_holds_across_two_workers_with_redis(gateway):
    statuses = [gateway.request("GET", "/inventory/P001")[0] for _ in range(BUDGET + 2)]
    assert statuses[:BUDGET] == [200] * BUDGET
    assert statuses[BUDGET:] == [429, 429]
    # Keep asking until both workers have answered this route: with a budget
    # per worker, the second one would have served 200s of its own.
    def over_budget():
        assert gateway.request("GET", "/inventory/P001")[0] == 429

    until_both_workers_answer(gateway.metrics_dir, "/inventory/{product_id}", over_budget)
    workers = requests_by_worker(gateway.metrics_dir, "/inventory/{product_id}")
    assert len(workers) == 2, workers
    assert sum(counts["200"] for counts in workers.values()) == BUDGET

    status, headers, body = gateway.request(
        "GET", "/inventory", headers={"X-Forwarded-For": f"203.0.113.{os.getpid() % 250}"}
    )
    assert status == 429, "a made-up X-Forwarded-For must not buy a new budget"
    assert int(headers["Retry-After"]) > 0
    assert "X-RateLimit-Limit" in headers
    error = json.loads(body)["error"]
    assert (error["code"], error["status"], error["reason"]) == (429, "RESOURCE_EXHAUSTED", "RATE_LIMITED")


def test_metrics_sum_across_workers(gateway):
    def healthy():
        assert gateway.request("GET", "/health")[0] == 200

    sent = until_both_workers_answer(gateway.metrics_dir, "/health", healthy, at_least=20)
    assert len(requests_by_worker(gateway.metrics_dir, "/health")) == 2
    expected = sum(c["200"] for c in requests_by_worker(gateway.metrics_dir, "/health").values())
    assert expected >= sent
    # Every scrape, whichever worker answers it, sees the sum over both.
    for _ in range(6):
        status, _, body = gateway.request("GET", "/metrics")
        assert status == 200
        assert (
            metric_value(body.decode(), "gateway_http_requests_total", route="/health", status="200")
            == expected
        )


def upstream_calls_by_worker(metrics_dir: str, service: str) -> dict[int, int]:
    by_worker = {}
    for path in glob.glob(os.path.join(metrics_dir, "counter_*.db")):
        pid = int(re.search(r"counter_(\d+)\.db$", path).group(1))
        by_worker[pid] = sum(
            int(sample.value)
            for metric in MultiProcessCollector.merge([path], accumulate=True)
            for sample in metric.samples
            if sample.name == "grpc_client_handled_total" and sample.labels.get("grpc_service") == service
        )
    return by_worker


def test_traffic_stats_read_the_shared_figures(gateway):
    # Another client address: its own budget, whatever other tests spent.
    for _ in range(6):
        assert gateway.request("GET", "/inventory/P002", source="127.0.0.2")[0] == 200
    first = json.loads(gateway.request("GET", "/mesh/traffic-stats")[2])
    second = json.loads(gateway.request("GET", "/mesh/traffic-stats")[2])
    # The second read counts the first (and nothing else came in between).
    assert second["total_requests"] == first["total_requests"] + 1
    assert second["rate_limited_requests"] == first["rate_limited_requests"]
    per_worker = upstream_calls_by_worker(gateway.metrics_dir, "shop.inventory.v1.InventoryService")
    assert first["upstreams"]["inventory"]["requests"] == second["upstreams"]["inventory"]["requests"]
    assert first["upstreams"]["inventory"]["requests"] == sum(per_worker.values()) >= 6


def test_memory_storage_is_one_budget_across_two_workers(backends, tmp_path):
    env = gateway_env(backends, RATE_LIMIT=f"{BUDGET}/hour", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    gateway = GatewayProcess(env, str(tmp_path / "gateway.log"))
    try:
        gateway.wait_until_serving()
        statuses = [gateway.request("GET", "/inventory/P001")[0] for _ in range(BUDGET + 2)]
        assert statuses == [200] * BUDGET + [429, 429]

        def over_budget():
            assert gateway.request("GET", "/inventory/P001")[0] == 429

        until_both_workers_answer(str(tmp_path / "metrics"), "/inventory/{product_id}", over_budget)
        workers = requests_by_worker(str(tmp_path / "metrics"), "/inventory/{product_id}")
        assert len(workers) == 2, workers
        assert sum(counts["200"] for counts in workers.values()) == BUDGET
    finally:
        gateway.stop()


@pytest.fixture
def single_worker(backends, tmp_path):
    """One worker on memory storage, with the metrics directory left to
    `python -m gateway` to make."""
    gateway = GatewayProcess(gateway_env(backends, GATEWAY_WORKERS="1"), str(tmp_path / "gateway.log"))
    try:
        gateway.wait_until_serving()
        yield gateway
    finally:
        gateway.stop()


def test_chunked_body_over_64_kib_is_413_over_real_http(single_worker):
    connection = http.client.HTTPConnection("127.0.0.1", single_worker.port, timeout=30)
    try:
        body = iter([b'{"customer_id": "'] + [b"C" * 8192] * 9 + [b'"}'])
        headers = {"Content-Type": "application/json", "Connection": "close"}
        connection.request("POST", "/orders", body=body, headers=headers, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413
        error = json.loads(response.read())["error"]
        assert (error["code"], error["reason"]) == (413, "PAYLOAD_TOO_LARGE")
    finally:
        connection.close()
    assert single_worker.request("GET", "/inventory/P001")[0] == 200


def test_sigterm_stops_the_server_and_removes_the_metrics_dir_it_made(single_worker):
    assert single_worker.request("GET", "/inventory/P001")[0] == 200
    (made,) = [
        json.loads(line)["metrics_dir"]
        for line in single_worker.log().splitlines()
        if '"metrics_dir"' in line
    ]
    assert os.path.isdir(made)
    assert single_worker.stop() == 0
    assert '"message": "stopped"' in single_worker.log()
    assert not os.path.exists(made)


def test_sigterm_lets_a_request_in_flight_finish(backends, tmp_path):
    """A graceful stop: a request the server has taken is answered, not cut."""
    slow = GatewayProcess(
        gateway_env(backends, GATEWAY_WORKERS="1", UPSTREAM_TIMEOUT_S="10"), str(tmp_path / "gateway.log")
    )
    scripted = backends.scripted_orders
    try:
        slow.wait_until_serving()
        scripted.delay_s = 1.5
        connection = http.client.HTTPConnection("127.0.0.1", slow.port, timeout=30)
        connection.request("GET", "/orders/ord_slow", headers={"Connection": "close"})
        time.sleep(0.5)
        slow.process.send_signal(signal.SIGTERM)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        assert json.loads(response.read())["id"] == "ord_slow"
        assert slow.process.wait(timeout=30) == 0
    finally:
        scripted.delay_s = 0.0
        slow.stop()


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /orders?customer_id=" + b"C" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /inventory HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    ],
)
def test_a_request_that_is_not_readable_http_gets_the_servers_minimal_answer(single_worker, request_bytes, status):
    """API.md: a request that cannot be parsed as HTTP may get the server's own
    minimal answer, never a page."""
    with socket.create_connection(("127.0.0.1", single_worker.port), timeout=10) as raw:
        raw.sendall(request_bytes)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode()
    assert body == b""
    assert single_worker.request("GET", "/inventory/P001")[0] == 200


def test_the_default_threads_start_without_granians_warning_and_many_keep_it(backends, tmp_path):
    """granian warns that threads are many for the cores; the default is
    measured (docs/performance.md), so it starts quietly, while a setting
    far past the cores still gets the warning."""
    warning = "Configuration allows spawning up to"
    for threads, warned in ((None, False), ("64", True)):
        env = gateway_env(backends, GATEWAY_WORKERS="1")
        if threads is None:
            del env["GATEWAY_THREADS"]
        else:
            env["GATEWAY_THREADS"] = threads
        gateway = GatewayProcess(env, str(tmp_path / f"gateway-{threads}.log"))
        try:
            gateway.wait_until_serving()
        finally:
            gateway.stop()
        log = gateway.log()
        assert "Started worker-1" in log
        assert (warning in log) is warned, log
