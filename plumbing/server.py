"""The server bootstrap every gRPC service uses: health, reflection, the
interceptor, a bounded thread pool, the metrics port and a graceful SIGTERM
drain (health NOT_SERVING -> drain delay -> server.stop(grace)); readiness
(see plumbing.health) follows the service's database."""

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from plumbing.config import ServerConfig
from plumbing.health import SHUTTING_DOWN, HealthServicer
from plumbing.interceptors import ServerInterceptor
from plumbing.metrics import start_metrics_server
from plumbing.readiness import WAITING_FOR_DATABASE, DatabaseReadiness

log = logging.getLogger("plumbing.server")


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
    it is set."""

    def __init__(
        self,
        services: list[Service],
        port: int,
        workers: int = 16,
        max_concurrent_rpcs: int | None = None,
        max_connection_age_s: float = 30.0,
        host: str = "[::]",
        ready: threading.Event | None = None,
    ):
        self.services = services
        self.ready = ready
        self.health = HealthServicer(experimental_non_blocking=True)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            interceptors=[ServerInterceptor(ready)],
            # Overload answers RESOURCE_EXHAUSTED instead of an unbounded queue.
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[
                # Clients reconnect (and re-resolve) now and then, so new
                # replicas get their share of long-lived channels.
                ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", 10_000),
                ("grpc.so_reuseport", 0),
            ],
        )
        for service in services:
            service.add_to_server(service.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [s.name for s in services]
            + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {host}:{port}")

    def start(self) -> "ShopServer":
        self.server.start()
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
    start_metrics_server(config.metrics_port)
    server = ShopServer(
        services,
        config.port,
        workers=config.workers,
        max_concurrent_rpcs=config.max_concurrent_rpcs,
        max_connection_age_s=config.max_connection_age_s,
        ready=database.prepared if database else None,
    ).start()
    stopping = threading.Event()

    def on_signal(signum, _frame):
        log.info("shutdown requested", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
            extra={"port": server.port, "metrics_port": config.metrics_port, "services": [s.name for s in services]},
        )
    stopping.wait()
    server.begin_shutdown()
    time.sleep(config.drain_delay_s)
    server.stop(config.shutdown_grace_s)
    on_stop()
    log.info("stopped")
