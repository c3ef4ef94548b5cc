"""The server bootstrap every gRPC service uses: health, reflection, the
interceptor, a bounded thread pool, the metrics port and a graceful SIGTERM
drain (health NOT_SERVING -> drain delay -> server.stop(grace)); readiness
(see plumbing.health) follows the service's database; mutual TLS when
configured, with health alone in plaintext on HEALTH_PORT; and, with
PROCESSES > 1, several processes of the service serve one port."""

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import Engine

from plumbing import db, field_rules, tracing
from plumbing import tls as mtls
from plumbing.config import ConfigError, ServerConfig, TlsConfig
from plumbing.health import SHUTTING_DOWN
from plumbing.interceptors import ServerInterceptor
from plumbing.logs import setup_logging
from plumbing.metrics import ObservedHealthServicer, start_metrics_server
from plumbing.readiness import WAITING_FOR_DATABASE, DatabaseReadiness
from plumbing.reflection import enable_reflection
from plumbing.scheduling import schedule_as_batch
from plumbing.targets import bind_error, join_host_port

log = logging.getLogger("plumbing.server")

# The largest request a service takes: every shop message is a few KiB at
# most (the gateway refuses bodies over 64 KiB), so anything near this is
# not a request worth reading.
MAX_REQUEST_BYTES = 1024 * 1024


@dataclass
class Service:
    """One gRPC service to serve: its full name, servicer and generated adder."""

    name: str
    servicer: object
    add_to_server: Callable[[object, grpc.Server], None]


class ShopServer:
    """A started gRPC server with health and reflection for its services.

    With `ready` (set once its database is prepared), the services start
    NOT_SERVING, and every call but health checks answers UNAVAILABLE until
    it is set. With `tls`, it serves mutual TLS and enforces the caller
    table; `health_port` serves health alone in plaintext."""

    def __init__(
        self,
        services: list[Service],
        port: int,
        workers: int = 16,
        max_concurrent_rpcs: int | None = None,
        max_connection_age_s: float = 30.0,
        host: str = "::",
        share_port: bool = False,
        ready: threading.Event | None = None,
        tls: TlsConfig | None = None,
        reflection_enabled: bool = True,
        health_port: int | None = None,
    ):
        self.services = services
        self.ready = ready
        self.health = ObservedHealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            # With TLS on, each RPC admits only the callers its table entry names.
            interceptors=[ServerInterceptor(ready, enforce_callers=tls is not None)],
            # Overload answers RESOURCE_EXHAUSTED instead of an unbounded queue.
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[
                # Clients reconnect (and re-resolve) now and then, so new
                # replicas get their share of long-lived channels.
                ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", 10_000),
                # Only the processes of one service share a port (PROCESSES):
                # a second shop started by mistake must fail to bind, not
                # quietly take half the calls.
                ("grpc.so_reuseport", 1 if share_port else 0),
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ],
        )
        for service in services:
            service.add_to_server(service.servicer, self.server)
            field_rules.prepare_service(service.name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if reflection_enabled:
            enable_reflection(
                [s.name for s in services] + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], self.server
            )
        credentials = None if tls is None else mtls.server_credentials(tls)
        self.port = _listen(self.server, host, port, credentials)
        # Kubelet's gRPC probes speak no TLS: the same health statuses, alone,
        # in plaintext on a port of their own.
        self.health_server = None
        self.health_port = None
        if health_port is not None:
            self.health_server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-health"),
                options=[
                    ("grpc.so_reuseport", 1 if share_port else 0),
                    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ],
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = _listen(self.health_server, host, health_port, what="HEALTH_PORT")

    def start(self) -> "ShopServer":
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        ready = self.ready is None or self.ready.is_set()
        self.set_serving(ready, "" if ready else WAITING_FOR_DATABASE)
        return self

    def set_serving(self, serving: bool, reason: str = "") -> None:
        """Readiness: every service SERVING, or NOT_SERVING for `reason`.
        "" (liveness) is left as it is; after begin_shutdown nothing changes."""
        self.health.reason = "" if serving else reason
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self.services:
            self.health.set(service.name, status)

    def begin_shutdown(self) -> None:
        """Health turns NOT_SERVING for every service; calls still run."""
        self.health.reason = SHUTTING_DOWN
        self.health.enter_graceful_shutdown()

    def stop(self, grace_s: float) -> None:
        """Refuse new calls, let in-flight ones finish within grace_s."""
        self.begin_shutdown()
        self.server.stop(grace_s).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()


def _listen(
    server: grpc.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
    what: str = "gRPC port",
) -> int:
    """Bind the port (mutual TLS with credentials); the port bound."""
    try:
        if credentials is None:
            bound = server.add_insecure_port(join_host_port(host, port))
        else:
            bound = server.add_secure_port(join_host_port(host, port), credentials)
    except RuntimeError:  # grpcio's "Failed to bind"
        bound = 0
    if bound == 0:
        raise ConfigError(f"cannot listen on {what} {join_host_port(host, port)}: {_why_not_bound(host, port)}")
    return bound


def _why_not_bound(host: str, port: int) -> str:
    """Why a port could not be bound, which grpc does not say: a plain
    socket's own answer for the same address."""
    in_use = "it is in use (another shop may be running?)"
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return f"{host!r} is not a host name or address (GRPC_BIND_HOST?)"
    for family, _, _, _, address in addresses:
        error = bind_error(family, address)
        if error is not None and error.errno != errno.EADDRINUSE:
            return f"{error.strerror} (GRPC_BIND_HOST?)"
    return in_use


def serve(
    config: ServerConfig,
    services: list[Service],
    background: list[Callable[[threading.Event], None]] = (),
    on_stop: Callable[[], None] = lambda: None,
    database: DatabaseReadiness | None = None,
) -> None:
    """Run a service process until SIGTERM or SIGINT, then drain and stop.

    With a `database`, the services serve NOT_SERVING until it is prepared
    (however long that takes), and readiness follows it from then on.
    `background` tasks run in daemon threads, once the database is prepared,
    and get an event set at shutdown.
    """
    tracing.setup_tracing(config.name)
    in_group = os.environ.get(PROCESS_INDEX_ENV) is not None
    if not in_group:
        # A process of a group leaves the metrics port to the group's first process.
        start_metrics_server(config.metrics_port, config.metrics_bind_host)
    server = ShopServer(
        services,
        config.port,
        workers=config.workers,
        max_concurrent_rpcs=config.max_concurrent_rpcs,
        max_connection_age_s=config.max_connection_age_s,
        host=config.bind_host,
        share_port=in_group,
        ready=database.prepared if database else None,
        tls=config.tls,
        reflection_enabled=config.reflection,
        health_port=config.health_port,
    ).start()
    if config.tls is None:
        log.warning("TLS is off: the caller table is not enforced, every peer may call every RPC")
    stopping = threading.Event()
    parent = os.getppid()
    # A copy of a group stops with the group's first process, however that ends.
    stop_on_signals(stopping, orphaned=(lambda: os.getppid() != parent) if in_group else None)
    try:
        prepared = database is None or database.wait_until_prepared(stopping)
    except BaseException:
        server.stop(0)  # a migration that cannot succeed: exit, saying why
        raise
    if prepared:
        if database is not None:
            server.set_serving(True)

            def watch_database(stopping: threading.Event) -> None:
                database.watch(stopping, server.set_serving)

            background = [*background, watch_database]
        for task in background:
            threading.Thread(target=task, args=(stopping,), name=task.__name__, daemon=True).start()
        log.info(
            "serving",
            extra={
                "port": server.port,
                "metrics_port": config.metrics_port,
                "services": [s.name for s in services],
                "tls_identity": config.tls.identity if config.tls else None,
                "health_port": server.health_port,
            },
        )
    # With a timeout: a signal the kernel hands to another thread runs its
    # handler only when the main thread next runs Python (2 in 5 SIGTERMs
    # after a SIGSTOP were never acted on while this waited unbounded).
    while not stopping.wait(SIGNAL_CHECK_S):
        pass
    server.begin_shutdown()
    time.sleep(config.drain_delay_s)
    server.stop(config.shutdown_grace_s)
    on_stop()
    tracing.shutdown()
    log.info("stopped")


@dataclass
class Composed:
    """What a service's composition root builds on its database engine."""

    services: list[Service]
    # Prepares the database (schema, seed): the services are ready once it has.
    migrate: Callable[[], None]
    background: list[Callable[[threading.Event], None]] = field(default_factory=list)
    on_stop: Callable[[], None] = lambda: None


def run_service(config: ServerConfig, compose: Callable[[Engine], Composed]) -> None:
    """A service process's whole life, the same for every service: its logs,
    a group of processes or this one alone (PROCESSES), its database engine,
    what `compose` builds on that engine served until SIGTERM (serve), and
    the engine disposed last."""
    schedule_as_batch()
    setup_logging(config.name, config.log.level, config.log.format)
    if serve_as_group(config):
        return
    engine = db.open_engine(config.database_url, pool_size=config.workers)
    composed = compose(engine)

    def on_stop() -> None:
        composed.on_stop()
        engine.dispose()

    serve(
        config,
        composed.services,
        background=composed.background,
        on_stop=on_stop,
        database=DatabaseReadiness(engine, composed.migrate),
    )


# How often the main thread, waiting to stop, runs the signal handlers a
# signal delivered to another thread left pending.
SIGNAL_CHECK_S = 0.2

# Set in each process of a group (PROCESSES > 1): its index, from 1.
PROCESS_INDEX_ENV = "SHOP_PROCESS_INDEX"


def serve_as_group(config: ServerConfig) -> bool:
    """With PROCESSES > 1, run that many copies of this service on its one
    port (SO_REUSEPORT, as in grpc's multiprocessing example: each process
    its own GIL, the kernel spreading connections over them), sharing its
    database, and return once they have all stopped. False when this process
    is to serve by itself (PROCESSES = 1, or it is one of the copies).

    This process only supervises: it serves the group's metrics (every
    copy writes to one Prometheus multiprocess folder), passes SIGTERM and
    SIGINT on, and when a copy exits unasked it stops the rest and exits
    1, so whatever runs the service (Kubernetes, make run) restarts it whole.
    """
    if config.processes <= 1 or os.environ.get(PROCESS_INDEX_ENV) is not None:
        return False
    _check_port_free(config.port)
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics_dir = tempfile.mkdtemp(prefix=f"{config.name}-metrics-")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    start_http_server(config.metrics_port, addr=config.metrics_bind_host, registry=registry)
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    copies = [
        subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env={**env, PROCESS_INDEX_ENV: str(n)})
        for n in range(1, config.processes + 1)
    ]
    stopping = threading.Event()
    stop_on_signals(stopping)
    log.info(
        "serving as a group",
        extra={"port": config.port, "processes": [c.pid for c in copies], "metrics_dir": metrics_dir},
    )
    exit_code, passed_on = 0, False
    while any(copy.poll() is None for copy in copies):
        failed = [c for c in copies if c.poll() is not None and not stopping.is_set()]
        if failed:
            log.error(
                "a process of the group exited; stopping the others",
                extra={"pid": failed[0].pid, "exit_code": failed[0].returncode},
            )
            exit_code = 1
            stopping.set()
        if stopping.is_set() and not passed_on:
            passed_on = True
            for copy in copies:
                if copy.poll() is None:
                    copy.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    for path in os.listdir(metrics_dir):
        os.remove(os.path.join(metrics_dir, path))
    os.rmdir(metrics_dir)
    if exit_code:
        raise SystemExit(exit_code)
    return True


def _check_port_free(port: int) -> None:
    """Bind the port alone, once: the group's copies share it with each
    other (SO_REUSEPORT) but must not share it with another program."""
    error = bind_error(socket.AF_INET6, ("::", port))
    if error is not None:
        raise SystemExit(f"cannot serve gRPC on port {port}: {error.strerror}")


def stop_on_signals(stopping: threading.Event, orphaned: Callable[[], bool] | None = None) -> None:
    """SIGTERM, SIGINT and SIGHUP (a terminal gone) set `stopping` (and so
    does `orphaned()` turning true). Not from the signal handler itself: a
    handler runs in the main thread between two bytecodes, possibly inside
    stopping.wait() holding the event's lock, and setting the event there
    deadlocks that thread (a second SIGTERM did, in a process group stopped
    twice over). The handler only notes the signal; a watcher thread sets
    the event."""
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    def watch() -> None:
        while not received and not (orphaned is not None and orphaned()):
            time.sleep(0.05)
        reason = signal.Signals(received[0]).name if received else "the group's first process is gone"
        log.info("shutdown requested", extra={"signal": reason})
        stopping.set()

    threading.Thread(target=watch, name="stop-on-signals", daemon=True).start()
