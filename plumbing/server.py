"""The server bootstrap every gRPC service uses: health, reflection, the
interceptor, a bounded thread pool, the metrics port and a graceful SIGTERM
drain (health NOT_SERVING -> drain delay -> server.stop(grace))."""

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plumbing.config import ConfigError, ServerConfig
from plumbing.interceptors import ServerInterceptor
from plumbing.metrics import ObservedHealthServicer, start_metrics_server
from plumbing.reflection import enable_reflection

log = logging.getLogger("plumbing.server")


@dataclass
class Service:
    """One gRPC service to serve: its full name, servicer and generated adder."""

    name: str
    servicer: object
    add_to_server: Callable[[object, grpc.Server], None]


class ShopServer:
    """A started gRPC server with health and reflection for its services."""

    def __init__(
        self,
        services: list[Service],
        port: int,
        workers: int = 16,
        max_concurrent_rpcs: int | None = None,
        max_connection_age_s: float = 30.0,
        host: str = "[::]",
    ):
        self.services = services
        self.health = ObservedHealthServicer(experimental_non_blocking=True)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            interceptors=[ServerInterceptor()],
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
        enable_reflection(
            [s.name for s in services] + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], self.server
        )
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # grpcio's "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise ConfigError(f"cannot listen on gRPC port {host}:{port}: it is in use (another shop may be running?)")

    def start(self) -> "ShopServer":
        self.server.start()
        for name in ["", *(s.name for s in self.services)]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def begin_shutdown(self) -> None:
        """Health turns NOT_SERVING for every service; calls still run."""
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
) -> None:
    """Run a service process until SIGTERM or SIGINT, then drain and stop.

    `background` tasks run in daemon threads and get an event set at shutdown.
    """
    start_metrics_server(config.metrics_port)
    server = ShopServer(
        services,
        config.port,
        workers=config.workers,
        max_concurrent_rpcs=config.max_concurrent_rpcs,
        max_connection_age_s=config.max_connection_age_s,
    ).start()
    stopping = threading.Event()
    for task in background:
        threading.Thread(target=task, args=(stopping,), name=task.__name__, daemon=True).start()

    def on_signal(signum, _frame):
        log.info("shutdown requested", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
