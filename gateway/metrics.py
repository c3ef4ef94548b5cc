"""The gateway's Prometheus metrics, and the traffic stats derived from them.

Routes are labelled by their template ("/orders/{order_id}"), never the raw
path, so the series stay bounded. Upstream calls are counted by the channel
wrapper in plumbing/channels.py (grpc_client_handled_total and
grpc_client_handling_seconds, by service, method and code).

Every worker process writes its figures to PROMETHEUS_MULTIPROC_DIR;
/metrics and /mesh/traffic-stats both read the sum over all workers, so
neither depends on which worker answers.
"""

import os
import time
from collections import defaultdict
from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from plumbing.metrics import LATENCY_BUCKETS, labelled

UNMATCHED_ROUTE = "unmatched"
EXPOSITION_CONTENT_TYPE = CONTENT_TYPE_LATEST

http_requests = Counter(
    "gateway_http_requests_total",
    "HTTP requests answered by the gateway, by route template, method and status.",
    ["route", "method", "status"],
)
http_request_seconds = Histogram(
    "gateway_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
rate_limited = Counter(
    "gateway_rate_limited_requests_total",
    "Requests refused with 429 because the client was over RATE_LIMIT.",
    ["route"],
)

# gRPC codes that mean the backend failed to serve (HTTP 5xx), not that the
# request was refused for a reason of its own (not found, declined, ...).
SERVER_FAILURE_CODES = {
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    labelled(http_requests, route, method, str(status)).inc()
    labelled(http_request_seconds, route, method).observe(seconds)


def count_rate_limits_on(routes) -> None:
    """Start each route's rate-limited count at 0, so /metrics shows the
    series (and a query over it finds 0) before the first 429."""
    for route in routes:
        labelled(rate_limited, route)


def registry():
    """The registry to read: every worker's figures when multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return merged
    return REGISTRY


def exposition() -> bytes:
    return generate_latest(registry())


def traffic_stats(started_at: float, services: dict[str, str]) -> dict:
    """Uptime, request totals and per-upstream figures. `services` maps a
    backend name to its full gRPC service name."""
    total_requests = 0.0
    limited = 0.0
    calls: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    latency_sum: dict[str, float] = defaultdict(float)
    for family in registry().collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "gateway_http_requests_total":
                total_requests += sample.value
            elif sample.name == "gateway_rate_limited_requests_total":
                limited += sample.value
            elif sample.name == "grpc_client_handled_total":
                calls[labels["grpc_service"]][labels["grpc_code"]] += sample.value
            elif sample.name == "grpc_client_handling_seconds_bucket":
                buckets[labels["grpc_service"]][float(labels["le"])] += sample.value
            elif sample.name == "grpc_client_handling_seconds_sum":
                latency_sum[labels["grpc_service"]] += sample.value
    upstreams = {}
    for backend, service in services.items():
        codes = calls.get(service, {})
        requests = int(sum(codes.values()))
        errors = int(sum(count for code, count in codes.items() if code in SERVER_FAILURE_CODES))
        cumulative = sorted(buckets.get(service, {}).items())
        observed = cumulative[-1][1] if cumulative else 0
        upstreams[backend] = {
            "service": service,
            "requests": requests,
            "errors": errors,
            # Numbers even before the first call (nothing failed, nothing took time), so every
            # upstream's figures have one type.
            "success_rate": round((requests - errors) / requests, 4) if requests else 1.0,
            "codes": {code: int(count) for code, count in sorted(codes.items()) if count},
            "latency_ms": {
                "avg": _ms(latency_sum[service] / observed) if observed else 0.0,
                "p50": _ms(histogram_quantile(0.50, cumulative)),
                "p95": _ms(histogram_quantile(0.95, cumulative)),
                "p99": _ms(histogram_quantile(0.99, cumulative)),
            },
        }
    now = time.time()
    return {
        "started_at": datetime.fromtimestamp(started_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "uptime_seconds": round(now - started_at, 3),
        "total_requests": int(total_requests),
        "rate_limited_requests": int(limited),
        "upstreams": upstreams,
    }


def _ms(seconds: float | None) -> float:
    return 0.0 if seconds is None else round(seconds * 1000, 3)


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """Estimate the q-quantile from cumulative buckets [(le, count), ...]
    sorted by le, as Prometheus' histogram_quantile does: linear within the
    bucket that holds the rank; the highest finite bound if it is +Inf's."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
