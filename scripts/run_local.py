"""`make run`: start every process of the shop on this machine and supervise
them as Kubernetes would. `make run-replicated` (--replicas 2) runs two of
each on PostgreSQL and Redis.

Each process reads the plain names (METRICS_PORT, DATABASE_URL, PROCESSES,
TLS_CERT_FILE, TLS_KEY_FILE); this launcher maps the per-service forms
(INVENTORY_METRICS_PORT, INVENTORY_DATABASE_URL, INVENTORY_PROCESSES,
GATEWAY_TLS_CERT_FILE, ...) onto them, so one environment configures all.
--tls (make run TLS=1) makes a local CA and a certificate per process in
$DATA_DIR/tls and runs with mutual TLS.

Supervision: an exit that make run did not ask for (a crash, a SIGKILL, a
SIGTERM from elsewhere) is reported and the process started again after a
backoff (0.5 s doubling to 10 s, reset once it has stayed up STAYED_UP_S),
while the others keep serving. A process that fails before it ever answered
(a port in use, a refused setting) stops make run with its error instead: a
restart would fail the same way. Ctrl-C or SIGTERM to make run stops
everything gracefully and restarts nothing.
"""

import argparse
import collections
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.upstreams import SERVICES as BACKENDS
from plumbing.channels import dial
from plumbing.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, TlsConfig
from plumbing.server import stop_on_signals

SERVICES = ("inventory", "payment", "order")
# Each process's own certificate; TLS_CA_FILE is shared.
PER_PROCESS_TLS = ("TLS_CERT_FILE", "TLS_KEY_FILE")
# Each service process's module, and the health name of its readiness.
SERVICE_NAMES = {f"{name}_svc": service.full_name for name, service in BACKENDS.items()}
# Replica n listens on the default port + n * REPLICA_PORT_STEP.
REPLICA_PORT_STEP = 100

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
# A process up this long is well again: its next restart waits FIRST_BACKOFF_S.
STAYED_UP_S = 30.0
# Exits in a row, each before STAYED_UP_S, that make a crash loop.
CRASH_LOOP_EXITS = 3
# The lines of a process's output kept to show when it fails.
TAIL_LINES = 20
FIRST_START_TAIL_LINES = 5
POLL_S = 0.1
PROBE_EVERY_S = 0.25
# Said once if the shop is up but /ready still answers 503 after this long.
NOT_READY_HINT_AFTER_S = 20.0
STOP_TIMEOUT_S = 20.0


@dataclass
class ProcessSpec:
    name: str  # "inventory-1"
    module: str  # "inventory_svc"
    env: dict[str, str]
    port: int
    metrics_port: int | None

    def listens_on(self) -> list[tuple[int, str, str]]:
        """(port, the setting that chose it, what it serves) for each port it binds."""
        if self.module == "gateway":
            return [(self.port, "GATEWAY_PORT", "HTTP")]
        key = self.module.removesuffix("_svc").upper()
        ports = [(self.port, f"{key}_PORT", "gRPC")]
        if self.metrics_port:
            ports.append((self.metrics_port, f"{key}_METRICS_PORT", "metrics"))
        return ports


def plan(environ: dict[str, str], replicas: int = 1) -> list[ProcessSpec]:
    """The processes to start and the environment of each."""
    specs = []
    addrs: dict[str, str] = {}
    for service in SERVICES:
        key = service.upper()
        port = int(environ.get(f"{key}_PORT", DEFAULT_PORTS[service]))
        metrics = int(environ.get(f"{key}_METRICS_PORT", DEFAULT_METRICS_PORTS[service]))
        ports = [port + n * REPLICA_PORT_STEP for n in range(replicas)]
        addrs[f"{key}_ADDR"] = environ.get(f"{key}_ADDR") or ",".join(f"localhost:{p}" for p in ports)
        for n, replica_port in enumerate(ports):
            env = {k: v for k, v in environ.items() if k not in ("METRICS_PORT", "DATABASE_URL", "PROCESSES")}
            env.update(own_tls(environ, key))
            env[f"{key}_PORT"] = str(replica_port)
            env["OTEL_SERVICE_NAME"] = service
            if environ.get(f"{key}_PROCESSES"):
                env["PROCESSES"] = environ[f"{key}_PROCESSES"]
            env["METRICS_PORT"] = str(metrics + n * REPLICA_PORT_STEP)
            if environ.get(f"{key}_DATABASE_URL"):
                env["DATABASE_URL"] = environ[f"{key}_DATABASE_URL"]
            specs.append(ProcessSpec(f"{service}-{n + 1}", f"{service}_svc", env, replica_port, metrics + n * REPLICA_PORT_STEP))
    gateway_port = int(environ.get("GATEWAY_PORT", 30080))
    for n in range(replicas):
        env = {k: v for k, v in environ.items() if k not in ("METRICS_PORT", "DATABASE_URL")}
        env.update(own_tls(environ, "GATEWAY"))
        env.update(addrs)
        env["GATEWAY_PORT"] = str(gateway_port + n)
        env["OTEL_SERVICE_NAME"] = "gateway"
        specs.append(ProcessSpec(f"gateway-{n + 1}", "gateway", env, gateway_port + n, None))
    for spec in specs:
        for service in SERVICES:
            spec.env.setdefault(f"{service.upper()}_ADDR", addrs[f"{service.upper()}_ADDR"])
    return specs


def own_tls(environ: dict[str, str], key: str) -> dict[str, str]:
    """TLS_CERT_FILE and TLS_KEY_FILE of one process, from its per-process
    forms ("" when it has none: one certificate never serves two identities)."""
    return {name: environ.get(f"{key}_{name}", "") for name in PER_PROCESS_TLS}


def local_credentials(environ: dict[str, str]) -> list[str]:
    """What a shop on this machine needs to be usable, filled into environ,
    and the lines that tell how to use it: with AUTH=off and no ADMIN_TOKEN,
    a random admin token; with AUTH=jwt and no keys, a random
    AUTH_HS256_SECRET (`python -m gateway` alone keeps refusing both)."""
    python = os.path.relpath(sys.executable)
    if environ.get("AUTH", "off").strip().lower() != "jwt":
        if environ.get("ADMIN_TOKEN", "").strip():
            return ["admin routes take Authorization: Bearer $ADMIN_TOKEN (yours)"]
        # 64 hex digits: 32 random bytes, and never the "change-me" of a placeholder.
        token = environ["ADMIN_TOKEN"] = secrets.token_hex(32)
        return [f"admin token for this run (ADMIN_TOKEN was unset): {token}  (export ADMIN_TOKEN={token})"]
    if environ.get("AUTH_JWKS_URL", "").strip():
        return ["AUTH=jwt: tokens come from your identity provider (AUTH_JWKS_URL)"]
    if environ.get("AUTH_HS256_SECRET", "").strip():
        lines = ["AUTH=jwt: tokens are signed with your AUTH_HS256_SECRET (export it where you mint them)"]
    else:
        environ["AUTH_HS256_SECRET"] = secrets.token_hex(32)
        lines = [f"AUTH=jwt with a local secret: export AUTH_HS256_SECRET={environ['AUTH_HS256_SECRET']}"]
    lines += [
        "a customer's token:  TOKEN=$(" + python + " -m gateway.token --sub C123)",
        "an admin's token:    TOKEN=$(" + python + " -m gateway.token --sub ops --scope shop:admin)",
        "then:                curl -H \"Authorization: Bearer $TOKEN\" localhost:30080/orders",
    ]
    return lines




def tls_environ(environ: dict[str, str]) -> dict[str, str]:
    """make run TLS=1: a local CA and a certificate per process in
    $DATA_DIR/tls (the CA kept across runs, the certificates fresh), and the
    settings that hand each process its own."""
    from scripts.certs import make_certificates

    directory = make_certificates(os.path.join(environ.get("DATA_DIR", "data"), "tls")).resolve()
    environ = dict(environ)
    environ.setdefault("TLS_CA_FILE", str(directory / "ca.crt"))
    for name in ("gateway", *SERVICES):
        environ.setdefault(f"{name.upper()}_TLS_CERT_FILE", str(directory / f"{name}.crt"))
        environ.setdefault(f"{name.upper()}_TLS_KEY_FILE", str(directory / f"{name}.key"))
    return environ


def tls_of(spec: ProcessSpec) -> TlsConfig | None:
    """The certificate a process serves with, to call it as itself (None: plaintext)."""
    files = [spec.env.get(name, "") for name in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")]
    return TlsConfig.load(*files) if all(files) else None


def local_environ(environ: dict[str, str], terminal: bool) -> tuple[dict[str, str], list[str]]:
    """make run's own defaults on top of `environ`: text logs for a terminal,
    and the credentials of local_credentials (with the lines to print)."""
    environ = dict(environ)
    if terminal and not environ.get("LOG_FORMAT", "").strip():
        environ["LOG_FORMAT"] = "text"
    return environ, local_credentials(environ)


# --- checks before and during the run ------------------------------------------


def port_taken(port: int) -> bool:
    """Whether something listens on `port` (on any address), as a process
    binding it would find. SO_REUSEADDR, as servers set it: connections in
    TIME_WAIT from a shop just stopped do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def ports_in_use(specs: list[ProcessSpec]) -> list[str]:
    """One line for each port a process would bind that is taken."""
    return [
        f"port {port} ({spec.name} {what}, {setting})"
        for spec in specs
        for port, setting, what in spec.listens_on()
        if port and port_taken(port)
    ]


def probe(spec: ProcessSpec, timeout_s: float = 1.0) -> str | None:
    """What a process answers: its health status for a gRPC service
    ("SERVING", "NOT_SERVING", ...), "SERVING" for a gateway whose /health
    says ok; None if it does not answer (yet)."""
    if spec.module == "gateway":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{spec.port}/health", timeout=timeout_s) as response:
                return "SERVING" if response.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None
    with dial(f"127.0.0.1:{spec.port}", tls_of(spec)) as channel:
        try:
            # The service's own name (its readiness): "" only says the process is alive.
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAMES[spec.module])
            answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
        except grpc.RpcError:
            return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def shop_ready(gateway_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/ready", timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


# --- supervision ---------------------------------------------------------------


class Backoff:
    """How long to wait before a restart: FIRST_BACKOFF_S, doubling each time
    up to MAX_BACKOFF_S, until reset()."""

    def __init__(self):
        self.next_s = FIRST_BACKOFF_S

    def take(self) -> float:
        delay = self.next_s
        self.next_s = min(self.next_s * 2, MAX_BACKOFF_S)
        return delay

    def reset(self) -> None:
        self.next_s = FIRST_BACKOFF_S


@dataclass
class Supervised:
    """One process of the shop, across its restarts."""

    spec: ProcessSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    # It has answered since this start; ever_answered: since make run began.
    answered: bool = False
    ever_answered: bool = False
    next_probe: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    quick_exits: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None


class FirstStartFailed(Exception):
    """A process failed before it ever answered: make run stops."""


class Supervisor:
    """Runs the processes of `specs`: passes their output on to `logs`, says
    what happens on `out`, restarts what exits unasked."""

    def __init__(self, specs: list[ProcessSpec], out=sys.stdout, logs=sys.stderr, cwd: str | None = None):
        self.processes = [Supervised(spec) for spec in specs]
        self.out = out
        self.logs = logs
        self.cwd = cwd
        self.stopping = threading.Event()
        self._output_lock = threading.Lock()

    def say(self, text: str) -> None:
        self._write(self.out, f"[make run] {text}")

    def _write(self, stream, line: str) -> None:
        # One write per line, under one lock: on a terminal the processes'
        # lines and make run's own never run into each other.
        with self._output_lock:
            stream.write(line + "\n")
            stream.flush()

    # Starting and watching

    def _spawn(self, process: Supervised) -> None:
        spec = process.spec
        # A session of its own: a terminal's Ctrl-C reaches make run alone,
        # which stops everything in order; and what a process leaves behind
        # (workers) can be killed with its group, as a container's would be.
        process.proc = subprocess.Popen(
            [sys.executable, "-m", spec.module],
            env=spec.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.started_at = time.monotonic()
        process.answered = False
        process.next_probe = 0.0
        process.restart_at = None
        process.reader = threading.Thread(
            target=self._pass_on, args=(process, process.proc.stdout), name=f"logs-{spec.name}", daemon=True
        )
        process.reader.start()

    def _pass_on(self, process: Supervised, stream) -> None:
        """Copy a process's output to `logs`, line by line, keeping its tail."""
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                process.tail.append(line)
                self._write(self.logs, line)

    @staticmethod
    def _exited(proc: subprocess.Popen, block: bool = False) -> int | None:
        """Its exit status if it has exited (waiting for that if `block`),
        after killing what it left in its group: looked at without reaping
        it first, so that the group's id cannot have been reused."""
        if hasattr(os, "waitid"):
            flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
            try:
                if os.waitid(os.P_PID, proc.pid, flags) is None:
                    return None
            except ChildProcessError:
                return proc.wait()  # reaped already
        elif (proc.wait() if block else proc.poll()) is None:
            # No waitid (macOS before Python 3.13): reaped first, then its group.
            return None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.wait()

    def start(self) -> None:
        for process in self.processes:
            self._spawn(process)

    def pids(self) -> dict[str, int]:
        return {p.spec.name: p.proc.pid for p in self.processes if p.proc is not None}

    def watch_once(self) -> None:
        """One look at every process: exits, answers, restarts due."""
        now = time.monotonic()
        for process in self.processes:
            if process.proc is None:
                if process.restart_at is not None and now >= process.restart_at and not self.stopping.is_set():
                    self._spawn(process)
                    process.restarts += 1
                    self.say(f"{process.spec.name} started again (pid {process.proc.pid}, restart {process.restarts})")
                continue
            returncode = self._exited(process.proc)
            if returncode is not None:
                self._on_exit(process, returncode, now)
            elif not process.answered and now >= process.next_probe:
                process.next_probe = now + PROBE_EVERY_S
                if probe(process.spec) is not None:
                    process.answered = True
                    if process.ever_answered:
                        self.say(f"{process.spec.name} is back (pid {process.proc.pid})")
                    process.ever_answered = True

    def _on_exit(self, process: Supervised, returncode: int, now: float) -> None:
        spec = process.spec
        process.proc = None
        if process.reader is not None:
            process.reader.join(timeout=2)  # the rest of its output, for its tail
        if not process.ever_answered:
            tail = list(process.tail)[-FIRST_START_TAIL_LINES:]
            raise FirstStartFailed(
                f"{spec.name} {describe_exit(returncode)} before it started serving"
                + ("; its last lines:\n" + "\n".join(f"    {line}" for line in tail) if tail else "")
            )
        lived_s = now - process.started_at
        if lived_s >= STAYED_UP_S:
            process.backoff.reset()
            process.quick_exits = 0
        else:
            process.quick_exits += 1
        delay = process.backoff.take()
        process.restart_at = now + delay
        self.say(f"{spec.name} {describe_exit(returncode)} after {lived_s:.1f} s; restarting it in {delay:g} s")
        if process.quick_exits >= CRASH_LOOP_EXITS:
            self.say(
                f"{spec.name} is crash-looping ({process.quick_exits} exits in a row, each within "
                f"{STAYED_UP_S:g} s of its start); its last lines:\n"
                + "\n".join(f"    {line}" for line in process.tail)
            )

    def all_answered(self) -> bool:
        return all(p.answered for p in self.processes)

    # Stopping

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every process (each drains), wait, kill what outlives it."""
        self.stopping.set()
        running = [p for p in self.processes if p.proc is not None]
        # os.kill, not Popen.send_signal: that would reap an exited process
        # before _exited could kill what it left in its group.
        for process in running:
            os.kill(process.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while running and time.monotonic() < deadline:
            running = [p for p in running if self._exited(p.proc) is None]
            time.sleep(POLL_S)
        for process in running:
            self.say(f"{process.spec.name} did not stop within {timeout_s:g} s of SIGTERM; killing it")
            os.kill(process.proc.pid, signal.SIGKILL)
            self._exited(process.proc, block=True)
        for process in self.processes:
            if process.reader is not None:
                process.reader.join(timeout=2)


def stop(procs, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM everything (each drains), then wait; kill what outlives it."""
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for _, proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_postgres_databases(admin_url: str, names: list[str], reset: bool = False) -> None:
    """Create the databases that do not exist (all of them, dropped first, if `reset`)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if reset:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        for name in names:
            if name not in existing:
                conn.execute(f'CREATE DATABASE "{name}"')


def replicated_environ(environ: dict[str, str], reset: bool = False) -> dict[str, str]:
    """Two replicas share state: PostgreSQL for the services, Redis for the
    gateway's rate limit. POSTGRES_URL names the server (its admin database)."""
    environ = dict(environ)
    admin_url = environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    base = admin_url.rsplit("/", 1)[0]
    create_postgres_databases(admin_url, [f"shop_{s}" for s in SERVICES], reset)
    for service in SERVICES:
        environ.setdefault(f"{service.upper()}_DATABASE_URL", f"{base}/shop_{service}")
    environ.setdefault("RATE_LIMIT_STORAGE", "redis://127.0.0.1:6379")
    return environ


def run(specs: list[ProcessSpec], credentials: Sequence[str] = (), out=sys.stdout, logs=sys.stderr) -> int:
    """Supervise `specs` until SIGINT or SIGTERM; the exit status of make run."""
    supervisor = Supervisor(specs, out=out, logs=logs)
    say = supervisor.say
    taken = ports_in_use(specs)
    if taken:
        say(
            "cannot start, these ports are in use:\n"
            + "".join(f"    {port}\n" for port in taken)
            + "Another shop may be running (a second `make run`?): stop it, or set the settings named to free ports."
        )
        return 1

    stop_on_signals(supervisor.stopping)
    supervisor.start()
    gateway = next(s for s in specs if s.module == "gateway")
    say("starting " + ", ".join(f"{name} (pid {pid})" for name, pid in supervisor.pids().items()))
    for spec in specs:
        if spec.module == "gateway":
            say(f"  {spec.name:<11} http://localhost:{spec.port}")
        else:
            say(f"  {spec.name:<11} grpc localhost:{spec.port}, metrics http://localhost:{spec.metrics_port}/metrics")
    for line in credentials:
        say(line)
    if tls_of(gateway):
        files = " ".join(f"{flag} {gateway.env[name]}" for flag, name in (
            ("-cacert", "TLS_CA_FILE"), ("-cert", "TLS_CERT_FILE"), ("-key", "TLS_KEY_FILE")))
        say(f"mutual TLS between the processes; grpcurl {files} localhost:{specs[0].port} list")
    say("Ctrl-C stops everything.")

    exit_code = 0
    ready = hinted = False
    all_up_at = next_ready_check = None
    try:
        while not supervisor.stopping.is_set():
            supervisor.watch_once()
            now = time.monotonic()
            if not ready and supervisor.all_answered() and now >= (next_ready_check or now):
                all_up_at = all_up_at or now
                next_ready_check = now + PROBE_EVERY_S
                if shop_ready(gateway.port):
                    ready = True
                    say(f"shop is ready at http://localhost:{gateway.port}; try: curl localhost:{gateway.port}/inventory")
                elif not hinted and now - all_up_at > NOT_READY_HINT_AFTER_S:
                    hinted = True
                    say(f"every process is up, but not every backend is SERVING yet: curl localhost:{gateway.port}/ready")
            supervisor.stopping.wait(POLL_S)
    except FirstStartFailed as failure:
        say(f"{failure}\nstopping the rest.")
        exit_code = 1
    signal.signal(signal.SIGINT, lambda *_: None)  # a second Ctrl-C does not cut the drain short
    say("stopping every process.")
    supervisor.stop()
    say("stopped.")
    return exit_code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument(
        "--reset-databases",
        action="store_true",
        help="with --replicas: drop the shop_* PostgreSQL databases and start on empty ones",
    )
    parser.add_argument("--tls", action="store_true", help="mutual TLS between the processes, with local certificates")
    args = parser.parse_args()
    environ, credentials = local_environ(dict(os.environ), terminal=sys.stderr.isatty())
    if args.tls:
        environ = tls_environ(environ)
    if args.replicas > 1:
        environ = replicated_environ(environ, reset=args.reset_databases)
    elif args.reset_databases:
        parser.error("--reset-databases is for --replicas (make run-replicated); make run's SQLite lives in DATA_DIR")
    return run(plan(environ, args.replicas), credentials)


if __name__ == "__main__":
    sys.exit(main())
