"""Prometheus metrics with the go-grpc-prometheus names, so the usual
dashboards and alerts for gRPC work unchanged."""

import prometheus_client
from grpc_health.v1 import health_pb2
from prometheus_client import Counter, Gauge, Histogram

from plumbing.config import ConfigError
from plumbing.health import HealthServicer

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Every RPC series is labelled by these; the completed ones by grpc_code too.
METHOD_LABELS = ("grpc_type", "grpc_service", "grpc_method")


def _handled(side: str, description: str) -> Counter:
    return Counter(f"grpc_{side}_handled_total", description, [*METHOD_LABELS, "grpc_code"])


def _handling_seconds(side: str, description: str) -> Histogram:
    return Histogram(f"grpc_{side}_handling_seconds", description, METHOD_LABELS, buckets=LATENCY_BUCKETS)


server_started = Counter("grpc_server_started_total", "RPCs started on the server.", METHOD_LABELS)
server_handled = _handled("server", "RPCs completed on the server, regardless of success or failure.")
server_handling_seconds = _handling_seconds("server", "Response latency of RPCs handled by the server.")
client_handled = _handled("client", "RPCs completed by the client, regardless of success or failure.")
client_handling_seconds = _handling_seconds(
    "client", "Latency of RPCs made by the client, until the response was received."
)


serving = Gauge(
    "shop_grpc_serving",
    "1 while this process's health service reports the gRPC service SERVING, else 0.",
    ["grpc_service"],
    # Several processes of one service (PROCESSES): SERVING only if all are.
    multiprocess_mode="min",
)


class ObservedHealthServicer(HealthServicer):
    """The shop's health servicer (plumbing.health), each service's status mirrored in
    shop_grpc_serving: a process that is up (scraped) but NOT_SERVING - its
    drain, its database away - is visible to an alert, not only to a probe."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._draining = False

    def set(self, service, status):
        super().set(service, status)
        # As the servicer itself does: once draining, statuses stay NOT_SERVING.
        if service and not self._draining:
            serving.labels(service).set(1 if status == health_pb2.HealthCheckResponse.SERVING else 0)

    def enter_graceful_shutdown(self):
        super().enter_graceful_shutdown()
        self._draining = True


# (metric, label values) -> its child: labels() takes a lock and builds a key
# on every call, and every RPC counts itself three times. Bounded as the
# series themselves are.
_children: dict = {}


def labelled(metric, *label_values: str):
    """metric.labels(*label_values), looked up once."""
    try:
        return _children[metric, label_values]
    except KeyError:
        child = _children[metric, label_values] = metric.labels(*label_values)
        return child


def split_method(full_method: str) -> tuple[str, str]:
    """'/shop.order.v1.OrderService/GetOrder' -> ('shop.order.v1.OrderService', 'GetOrder')."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def start_metrics_server(port: int, host: str = "0.0.0.0"):
    """The /metrics HTTP server, in a daemon thread: (server, thread)."""
    try:
        return prometheus_client.start_http_server(port, addr=host)
    except OSError as error:
        raise ConfigError(
            f"METRICS_PORT={port}: cannot listen there ({error.strerror}); another shop may be running"
        ) from None
