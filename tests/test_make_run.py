"""`make run` (python -m launcher) as a user runs it: a real process that
starts the shop on free ports and supervises it. A service killed under it
comes back while the rest keep serving; a crash loop is reported with the
last lines of the process; a failure at first start stops make run with the
process's own error; Ctrl-C stops everything and restarts nothing."""

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launcher import databases, supervisor
from launcher.plan import local_environ, plan, replicated_environ
from launcher.stack import free_port_base, http, plan_stack
from plumbing.config import ConfigError
from tests.conftest import POSTGRES_ADMIN_URL
from tests.harness import ROOT, eventually

pytestmark = pytest.mark.e2e

SERVICES = ("inventory", "payment", "order")
# A route of each backend: 503 while it is down, its own answer once it is up.
ROUTE_OF = {"inventory": "/inventory/P001", "payment": "/payments/pay_none", "order": "/orders/ord_none"}


class MakeRun:
    """`python -m launcher` with its output read as it comes."""

    def __init__(self, tmp_path, **settings):
        env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), RATE_LIMIT="100000/minute")
        for name in ("ADMIN_TOKEN", "AUTH", "LOG_FORMAT", "INVENTORY_ADDR", "PAYMENT_ADDR", "ORDER_ADDR"):
            env.pop(name, None)
        for spec in plan({}):
            for _, setting, _ in spec.listens_on():
                env[setting] = str(free_port_base())
        env.update(settings)
        self.gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.said: list[str] = []  # make run's own lines (stdout)
        self.logs: list[str] = []  # the processes' output, passed on (stderr)
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.said), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.logs), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, count: int = 1) -> list[re.Match]:
        """The first `count` lines make run said that match `pattern`."""

        def found():
            matches = [m for m in map(re.compile(pattern).search, list(self.said)) if m]
            if len(matches) < count and self.proc.poll() is not None:
                raise AssertionError(f"make run exited with {self.proc.returncode}:\n" + "\n".join(self.said))
            return matches[:count] if len(matches) >= count else None

        return eventually(found, timeout_s=120, what=f"make run saying {pattern!r}")

    def pids(self) -> dict[str, int]:
        (starting,) = self.wait_for(r"starting (.*)")
        return {name: int(pid) for name, pid in re.findall(r"(\S+) \(pid (\d+)\)", starting.group(1))}

    def restarted(self) -> list[str]:
        return [m.group(1) for m in map(re.compile(r"\] (\S+) started again").search, list(self.said)) if m]

    def finish(self, timeout_s: float = 60) -> int:
        """Ctrl-C, as a terminal sends it; make run's exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            for reader in self._readers:
                reader.join(timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def make_run(tmp_path):
    started = []

    def start(**settings) -> MakeRun:
        run = MakeRun(tmp_path, **settings)
        started.append(run)
        return run

    yield start
    for run in started:
        run.finish()
        run.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_one_line_says_the_shop_is_ready_and_a_generated_admin_token_works(make_run):
    shop = make_run()
    (ready,) = shop.wait_for(r"shop is ready at (\S+); try: curl (\S+)")
    assert http("GET", shop.gateway + "/ready")[0] == 200
    assert ready.group(2).endswith("/inventory")
    (said_token,) = shop.wait_for(r"admin token for this run \(ADMIN_TOKEN was unset\): (\S+)")
    token = said_token.group(1)
    status, _, product = http(
        "POST",
        shop.gateway + "/inventory/P003/adjustments",
        {"delta": 5, "reason": "restock"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 200, product
    pids = shop.pids()
    if hasattr(os, "SCHED_BATCH"):
        # Every thread of every process, the gateway's workers too (plumbing/scheduling.py).
        for name, pid in pids.items():
            policies = {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}
            workers = [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
            policies |= {os.sched_getscheduler(worker) for worker in workers}
            assert policies == {os.SCHED_BATCH}, name
    assert shop.finish() == 0
    assert [line for line in shop.said if "shop is ready" in line] == [ready.string]
    assert shop.restarted() == []
    assert not any(map(alive, pids.values()))
    assert not any("Traceback" in line for line in shop.logs)


def test_a_killed_service_comes_back_while_the_others_keep_serving(make_run):
    shop = make_run()
    shop.wait_for("shop is ready")
    pids = shop.pids()
    for n, service in enumerate(SERVICES, start=1):
        os.kill(pids[f"{service}-1"], signal.SIGKILL)
        status, _, body = http("GET", shop.gateway + ROUTE_OF[service])
        _, _, mesh = http("GET", shop.gateway + "/mesh/service-status")
        if status == 503:
            assert body["error"]["status"] == "UNAVAILABLE"
        else:
            assert status in (200, 404), body  # it answers as itself
        if status != 503 or mesh["backends"][service]["status"] == "SERVING":
            # Only if restarted already: a fast restart can win the race.
            shop.wait_for(rf"{service}-1 started again")
        # Restarted after the first backoff, well within the 5 s promised.
        (exit_line,) = shop.wait_for(rf"{service}-1 was killed by SIGKILL after \S+ s; restarting it in (\S+) s")
        assert float(exit_line.group(1)) == supervisor.FIRST_BACKOFF_S
        shop.wait_for(rf"{service}-1 is back \(pid (\d+)\)")
        eventually(lambda: http("GET", shop.gateway + "/ready")[0] == 200, timeout_s=60, what="/ready 200 again")
        # /ready asks on a channel of its own; the calls' channel reconnects
        # after its own backoff (at most MAX_RECONNECT_BACKOFF_MS).
        route = shop.gateway + ROUTE_OF[service]
        eventually(
            lambda: http("GET", route)[0] in (200, 404),  # noqa: B023 - called before the loop moves on
            timeout_s=60,
            what=f"{ROUTE_OF[service]} answered by {service} again",
        )
        assert len(shop.restarted()) == n
    # Nothing else was restarted: the gateway, say, is the process it was.
    assert shop.restarted() == [f"{service}-1" for service in SERVICES]
    assert alive(pids["gateway-1"])
    assert shop.finish() == 0


def test_a_crash_looping_process_is_reported_with_its_last_lines(make_run):
    shop = make_run(LOG_LEVEL="INFO")
    shop.wait_for("shop is ready")
    pid = shop.pids()["payment-1"]
    for kills in range(1, supervisor.CRASH_LOOP_EXITS + 1):
        os.kill(pid, signal.SIGKILL)
        (back,) = shop.wait_for(r"payment-1 is back \(pid (\d+)\)", count=kills)[-1:]
        pid = int(back.group(1))
    delays = [float(m.group(1)) for m in shop.wait_for(r"payment-1 .* restarting it in (\S+) s", count=3)]
    assert delays == [0.5, 1.0, 2.0]
    (report,) = shop.wait_for(r"payment-1 is crash-looping \(3 exits in a row")
    # The report quotes the process's own last lines (its JSON log).
    report_at = shop.said.index(report.string)
    quoted = shop.said[report_at + 1 :]
    assert any('"service": "payment"' in line for line in quoted)
    assert shop.finish() == 0


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_hang_up_stops_every_process_of_a_shop_bound_to_one_address(make_run):
    """GRPC_BIND_HOST names one address: make run looks for its services
    there (it looked on 127.0.0.1, never said the shop was ready and took a
    later crash for a failed start); per-service health ports; and a
    terminal hanging up (SIGHUP) stops the shop as Ctrl-C does, orphaning
    nothing."""
    health = {service: free_port_base() for service in ("INVENTORY", "PAYMENT", "ORDER")}
    settings = {f"{service}_HEALTH_PORT": str(port) for service, port in health.items()}
    shop = make_run(GRPC_BIND_HOST="::1", **settings)
    shop.wait_for(r"shop is ready at")
    for port in health.values():
        with grpc.insecure_channel(f"[::1]:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    pids = shop.pids()
    shop.proc.send_signal(signal.SIGHUP)
    assert shop.proc.wait(timeout=60) == 0
    assert not any(map(alive, pids.values()))
    assert shop.restarted() == []


def test_health_port_is_one_processs_so_make_run_takes_it_per_service():
    with pytest.raises(ConfigError, match="set INVENTORY_HEALTH_PORT, PAYMENT_HEALTH_PORT or ORDER_HEALTH_PORT"):
        plan({"HEALTH_PORT": "8081"})
    specs = {spec.name: spec for spec in plan({"PAYMENT_HEALTH_PORT": "8082"}, replicas=2)}
    assert [specs[name].env.get("HEALTH_PORT") for name in ("payment-1", "payment-2", "order-1")] == ["8082", "8182", None]
    assert (8182, "PAYMENT_HEALTH_PORT", "plaintext health") in specs["payment-2"].listens_on()


def test_make_run_reaches_a_service_where_grpc_bind_host_puts_it():
    def address(host):
        (spec,) = [s for s in plan({"GRPC_BIND_HOST": host, "INVENTORY_PORT": "7001"}) if s.name == "inventory-1"]
        return spec.grpc_address

    assert [address(h) for h in ("", "0.0.0.0", "::", "[::]", "::1", "[::1]", "10.1.2.3")] == [
        "127.0.0.1:7001", "127.0.0.1:7001", "127.0.0.1:7001", "127.0.0.1:7001", "[::1]:7001", "[::1]:7001", "10.1.2.3:7001",
    ]


def test_a_port_in_use_stops_make_run_before_anything_starts(make_run):
    with socket.socket() as other_shop:
        other_shop.bind(("0.0.0.0", 0))
        other_shop.listen()
        port = other_shop.getsockname()[1]
        shop = make_run(INVENTORY_PORT=str(port))
        assert shop.proc.wait(timeout=60) == 1
    shop.finish()
    said = "\n".join(shop.said)
    assert "cannot start, these ports are in use:" in said
    assert f"    port {port} (inventory-1 gRPC, INVENTORY_PORT)\n" in said
    assert "Another shop may be running" in said
    assert shop.logs == []  # nothing was started
    assert not any("Traceback" in line for line in shop.said)


def test_a_refused_setting_at_first_start_stops_make_run_with_that_error(make_run):
    shop = make_run(RATE_LIMIT="lots")
    assert shop.proc.wait(timeout=120) == 1
    shop.finish()
    text = "\n".join(shop.said)
    assert "gateway-1 exited with code 2 before it started serving" in text
    assert "RATE_LIMIT='lots' is not a rate limit" in text
    assert shop.restarted() == []
    assert not any("Traceback" in line for line in shop.said + shop.logs)


def test_a_process_alone_names_the_port_it_cannot_have(tmp_path):
    with socket.socket() as other_shop:
        other_shop.bind(("0.0.0.0", 0))
        other_shop.listen()
        port = other_shop.getsockname()[1]
        env = dict(
            os.environ,
            DATA_DIR=str(tmp_path),
            PAYMENT_PORT=str(free_port_base()),
            METRICS_PORT=str(port),
        )
        done = subprocess.run(
            [sys.executable, "-m", "payment_svc"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2
    assert f"METRICS_PORT={port}: cannot listen there" in done.stderr
    assert "another shop may be running" in done.stderr
    assert "Traceback" not in done.stderr


def test_make_run_replicated_can_start_on_empty_databases(postgres_available):
    if not postgres_available:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required but not reachable at {POSTGRES_ADMIN_URL}")
        pytest.skip("PostgreSQL not reachable")
    name = databases.unique_name("shop_reset_test")
    database_url = databases.database_url(POSTGRES_ADMIN_URL, name)
    try:
        databases.create_databases(POSTGRES_ADMIN_URL, [name])
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE left_over (id int)")
        databases.create_databases(POSTGRES_ADMIN_URL, [name])  # kept
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT to_regclass('left_over')::text").fetchone()[0] == "left_over"
        databases.create_databases(POSTGRES_ADMIN_URL, [name], reset=True)
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT to_regclass('left_over')::text").fetchone()[0] is None
    finally:
        databases.drop_databases(POSTGRES_ADMIN_URL, [name])


# --- make run's own rules, without processes -----------------------------------


def test_restarts_back_off_from_half_a_second_doubling_to_ten():
    backoff = supervisor.Backoff()
    assert [backoff.take() for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.take() == 0.5


def test_make_run_fills_in_local_credentials_and_says_how_to_use_them():
    # The rules themselves: test_gateway_hardening (local_credentials).
    environ, lines = local_environ({}, terminal=False)
    (line,) = lines
    assert environ["ADMIN_TOKEN"] in line


def test_logs_are_text_on_a_terminal_unless_log_format_says_otherwise():
    assert local_environ({}, terminal=True)[0]["LOG_FORMAT"] == "text"
    assert "LOG_FORMAT" not in local_environ({}, terminal=False)[0]
    assert local_environ({"LOG_FORMAT": "json"}, terminal=True)[0]["LOG_FORMAT"] == "json"


def test_an_exit_is_described_by_its_code_or_its_signal():
    assert supervisor.describe_exit(1) == "exited with code 1"
    assert supervisor.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert supervisor.describe_exit(-signal.SIGTERM) == "was killed by SIGTERM"



@pytest.mark.parametrize("tail, said", [([], "; it printed nothing"), (["boom"], "; its last lines:\n    boom")])
def test_a_crash_loop_report_says_what_the_process_printed_or_that_it_printed_nothing(tail, said):
    out = io.StringIO()
    runner = supervisor.Supervisor([], out=out, logs=io.StringIO())
    spec = plan({})[0]
    process = supervisor.Supervised(spec, ever_answered=True, quick_exits=supervisor.CRASH_LOOP_EXITS - 1)
    process.tail.extend(tail)
    runner._on_exit(process, -signal.SIGKILL, now=process.started_at + 0.1)
    report = out.getvalue().split("[make run] ")[-1]
    assert report.startswith(f"{spec.name} is crash-looping")
    assert report.rstrip("\n").endswith(said)


def test_run_replicated_creates_only_the_databases_no_setting_names(monkeypatch):
    created = []
    monkeypatch.setattr(databases, "create_databases", lambda url, names, reset=False: created.extend(names))
    given = {f"{s}_DATABASE_URL": f"postgresql://db/{s.lower()}" for s in ("INVENTORY", "PAYMENT", "ORDER")}
    environ = replicated_environ({**given, "POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/postgres"})
    assert created == []
    assert {k: environ[k] for k in given} == given
    environ = replicated_environ({"INVENTORY_DATABASE_URL": "postgresql://db/mine"})
    assert created == ["shop_payment", "shop_order"]
    assert environ["INVENTORY_DATABASE_URL"] == "postgresql://db/mine"
    assert environ["ORDER_DATABASE_URL"].endswith("/shop_order")


def test_run_replicated_with_no_postgres_there_refuses_to_start_saying_so():
    with pytest.raises(ConfigError) as refused:
        replicated_environ({"POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/postgres"})
    assert str(refused.value).startswith("POSTGRES_URL: cannot create the shop_* databases there: ")


def test_output_is_passed_on_in_whole_lines_and_its_tail_kept():
    # Lines arrive split across writes, several to a write, the last without
    # its newline, and one with a character split across writes: each is passed on
    # whole, once, in order.
    logs = io.StringIO()
    runner = supervisor.Supervisor([], out=io.StringIO(), logs=logs)
    process = supervisor.Supervised(spec=None)
    read_end, write_end = os.pipe()
    writes = [b'{"a": 1}\n{"b"', b': 2}\n{"c": 3}\n{"d": "\xc3', b'\xa9"}\n', b"no newline at the end"]
    reader = threading.Thread(target=runner._pass_on, args=(process, os.fdopen(read_end, "rb")))
    reader.start()
    for chunk in writes:
        os.write(write_end, chunk)
    os.close(write_end)
    reader.join(timeout=5)
    expected = ['{"a": 1}', '{"b": 2}', '{"c": 3}', '{"d": "é"}', "no newline at the end"]
    assert logs.getvalue().splitlines() == expected
    assert list(process.tail) == expected


def test_a_stack_for_tests_and_benchmarks_never_runs_in_the_developers_data(tmp_path):
    # Without a DATA_DIR of its own it would open make run's ./data.
    with pytest.raises(ValueError, match="DATA_DIR"):
        plan_stack(1, {"ADMIN_TOKEN": "x" * 32})
    specs = plan_stack(1, {"DATA_DIR": str(tmp_path)})
    assert {spec.env["DATA_DIR"] for spec in specs} == {str(tmp_path)}
