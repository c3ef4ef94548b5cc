"""The gateway's own operations routes (API.md, "Operations"): liveness,
readiness, Prometheus metrics, traffic and service status, and the OpenAPI
document. They are one Blueprint with one list, OPERATIONS_ROUTES: the app
registers it, the rate limiter leaves exactly these paths out, /openapi.json
documents them from it, and the tests read it."""

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from flask import Blueprint, current_app, g, request

from gateway import metrics
from gateway.errors import gateway_error, invalid_argument
from gateway.mesh import check_backends, overall_status, service_status
from gateway.openapi import openapi_document
from gateway.responses import json_response
from gateway.upstreams import SERVICES
from plumbing.errors import violations_message

blueprint = Blueprint("operations", __name__)


def _gateway():
    return current_app.extensions["shop_gateway"]


@blueprint.before_request
def _take_no_query() -> None:
    """The operations routes take no query parameters: as on every route, an
    unknown one is a 400, not silently ignored."""
    names = sorted(set(request.args))
    if names:
        violations = [(name, "unknown query parameter") for name in names]
        raise invalid_argument(violations_message(violations), violations)


def health():
    return json_response({"status": "ok"})


def ready():
    reports = check_backends(_gateway().upstreams, [("x-request-id", g.request_id)])
    status = overall_status(reports)
    body = {
        "status": "ready" if status == "SERVING" else "not_ready",
        "backends": {report.backend.name: report.to_json() for report in reports},
    }
    if status != "SERVING":
        down = ", ".join(
            f"{r.backend.name} ({r.detail})" if r.detail else r.backend.name
            for r in reports
            if r.status != "SERVING"
        )
        error = gateway_error(grpc.StatusCode.UNAVAILABLE, f"not ready: {down} not serving", "NOT_READY")
        body.update(error.body(g.request_id))
        return json_response(body, 503)
    return json_response(body)


def prometheus_metrics():
    return current_app.response_class(metrics.exposition(), content_type=metrics.EXPOSITION_CONTENT_TYPE)


def traffic_stats():
    services = {name: service.full_name for name, service in SERVICES.items()}
    return json_response(metrics.traffic_stats(_gateway().started_at, services))


def mesh_service_status():
    return json_response(service_status(_gateway().upstreams, [("x-request-id", g.request_id)]))


def openapi():
    gateway = _gateway()
    return json_response(openapi_document(gateway.bindings, OPERATIONS_ROUTES, gateway.gatekeeper))


@dataclass(frozen=True)
class OperationsRoute:
    """One GET route of the gateway's own, and what /openapi.json says of it."""

    path: str
    view: Callable
    # Its operationId in /openapi.json: a stable name in the RPCs' style.
    operation_id: str
    summary: str
    # The JSON Schema of its 200 body; None for Prometheus's text.
    schema: dict | None

    @property
    def endpoint(self) -> str:
        return f"{blueprint.name}.{self.view.__name__}"


OPERATIONS_ROUTES = (
    OperationsRoute(
        "/health",
        health,
        "GetHealth",
        "Liveness of the gateway process",
        {"type": "object", "properties": {"status": {"type": "string"}}},
    ),
    OperationsRoute(
        "/ready",
        ready,
        "GetReadiness",
        "200 when every backend's standard health check answers SERVING, else 503",
        {"type": "object", "properties": {"status": {"type": "string"}, "backends": {"type": "object"}}},
    ),
    OperationsRoute("/metrics", prometheus_metrics, "GetMetrics", "Prometheus text exposition", None),
    OperationsRoute(
        "/mesh/traffic-stats",
        traffic_stats,
        "GetTrafficStats",
        "Uptime, request totals and per-upstream requests, errors, success rate and latency",
        {
            "type": "object",
            "properties": {
                "started_at": {"type": "string", "format": "date-time"},
                "uptime_seconds": {"type": "number"},
                "total_requests": {"type": "integer"},
                "rate_limited_requests": {"type": "integer"},
                "upstreams": {"type": "object"},
            },
        },
    ),
    OperationsRoute(
        "/mesh/service-status",
        mesh_service_status,
        "GetServiceStatus",
        "Each backend's address, health status and check latency, and an overall status",
        {"type": "object", "properties": {"overall": {"type": "string"}, "backends": {"type": "object"}}},
    ),
    OperationsRoute("/openapi.json", openapi, "GetOpenApiDocument", "This document", {"type": "object"}),
)
# Not rate limited (API.md: one budget across all routes but these).
UNLIMITED_PATHS = frozenset(route.path for route in OPERATIONS_ROUTES)

for _route in OPERATIONS_ROUTES:
    blueprint.add_url_rule(_route.path, view_func=_route.view, methods=["GET"])
