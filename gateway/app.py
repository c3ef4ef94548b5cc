"""The REST gateway's Flask application: routes transcoded from the protos'
HTTP annotations (each admitting its caller: gateway/auth.py), the
operations routes (gateway/operations.py), and the hooks every request passes through (request id,
body limit, rate limit, metrics, one access-log line, an audit line for
admin routes)."""

import logging
import os
import re
import time
from dataclasses import dataclass, field

import grpc
from flask import Flask, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway import metrics, ratelimit
from gateway.auth import Demand, Gatekeeper
from gateway.config import GatewayConfig
from gateway.errors import ApiError, from_upstream, gateway_error, invalid_argument
from gateway.operations import OPERATIONS_ROUTES, UNLIMITED_PATHS
from gateway.operations import blueprint as operations_blueprint
from gateway.responses import json_response
from gateway.transcoding import Binding, RequestError, build_request, location_for, response_json, route_table
from gateway.transcoding.routes import NOT_IN_CONVERTER, NotInConverter
from gateway.upstreams import SERVICES, Upstreams, shop_backends
from plumbing import field_rules, tracing
from plumbing.identity import Caller
from plumbing.logs import accepted_request_id, request_id_var

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")
# One line per request to an admin route, answered or refused, naming who.
audit_log = logging.getLogger("gateway.audit")

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# Requests with any other method are counted under this one label.
OTHER_METHOD = "OTHER"
# Probes and scrapes, every few seconds from every kubelet and Prometheus:
# not traced (a trace each would bury the orders').
UNTRACED_ROUTES = frozenset({"/health", "/ready", "/metrics"})



@dataclass
class Gateway:
    """What the request hooks and views share, kept on app.extensions."""

    config: GatewayConfig
    bindings: list[Binding]
    upstreams: Upstreams
    rate_limit: ratelimit.RateLimit
    gatekeeper: Gatekeeper
    started_at: float
    # Flask endpoint -> route template, for metrics and logs.
    routes: dict[str, str] = field(default_factory=dict)
    # The methods some route answers; metrics count any other as OTHER.
    methods: frozenset[str] = frozenset()


class GatewayFlask(Flask):
    def ensure_sync(self, func):
        # Every view and hook here is a plain function: skip Flask's check
        # for a coroutine, made four times a request.
        return func

    def make_default_options_response(self):
        # Flask's default is an empty text/html 200; an empty 204 says the same without HTML.
        allowed = super().make_default_options_response().headers.get("Allow", "").split(",")
        response = self.response_class(status=204)
        response.headers["Allow"] = allow_header(m.strip() for m in allowed)
        del response.headers["Content-Type"]
        return response


def allow_header(methods) -> str:
    """An Allow header's value, the same wherever it is answered (405, OPTIONS)."""
    return ", ".join(sorted(m for m in methods if m))


def create_app(config: GatewayConfig | None = None, started_at: float | None = None) -> Flask:
    config = config or GatewayConfig.from_env()
    config.validate()
    bindings = route_table(SERVICES)
    for service in SERVICES.values():
        field_rules.prepare_service(service.full_name)
    read_methods: dict[str, list[str]] = {}
    for binding in bindings:
        if binding.verb == "GET":
            read_methods.setdefault(binding.backend, []).append(binding.method.name)
    upstreams = Upstreams(
        shop_backends(config.upstreams, {name: tuple(methods) for name, methods in read_methods.items()}),
        config.upstreams.timeout_s,
        config.upstreams.tls,
    )
    rate_limit = ratelimit.RateLimit(config, os.environ.get(ratelimit.SHARED_DIR_ENV))
    gateway = Gateway(config, bindings, upstreams, rate_limit, Gatekeeper(config), started_at or time.time())

    # No static folder: Flask's /static/<path> route is no part of the API (POST /static/x would be 405).
    app = GatewayFlask("gateway", static_folder=None)
    # One byte over the limit, so _read_body can tell "exactly at the limit"
    # from "over it" (werkzeug's limited stream silently stops at the limit).
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes + 1
    app.extensions["shop_gateway"] = gateway
    # No redirects (they answer HTML): /orders/ is /orders, // is not merged.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    app.url_map.converters[NOT_IN_CONVERTER] = NotInConverter
    if config.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.trusted_proxies)

    app.before_request(_begin_request)
    app.after_request(_finish_request)
    app.teardown_request(_end_request)

    for binding in bindings:
        app.add_url_rule(
            binding.rule,
            endpoint=binding.endpoint,
            view_func=_transcoder(binding, gateway.gatekeeper.demand(binding)),
            methods=[binding.verb],
        )
        gateway.routes[binding.endpoint] = binding.template
    app.register_blueprint(operations_blueprint)
    for route in OPERATIONS_ROUTES:
        gateway.routes[route.endpoint] = route.path
    gateway.methods = frozenset(method for rule in app.url_map.iter_rules() for method in rule.methods or ())
    metrics.count_rate_limits_on(
        {route for route in gateway.routes.values() if route not in UNLIMITED_PATHS} | {metrics.UNMATCHED_ROUTE}
    )

    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _gateway() -> Gateway:
    return current_app.extensions["shop_gateway"]


# --- request hooks -----------------------------------------------------------
# Every request passes these: they fetch the request and g behind Flask's
# proxies once (each proxy access is a lookup) and keep what the answer needs
# on g.


def _begin_request() -> None:
    state, req = g._get_current_object(), request._get_current_object()
    state.started = time.perf_counter()
    state.upstream_code = ""
    state.request_id = accepted_request_id(req.headers.get("X-Request-ID"))
    state.request_id_token = request_id_var.set(state.request_id)
    gateway = _gateway()
    route = state.route = gateway.routes.get(req.endpoint, metrics.UNMATCHED_ROUTE)
    if tracing.enabled and route not in UNTRACED_ROUTES:
        # Continues the client's traceparent, if it sent one.
        state.span, state.span_token = tracing.start_server_span(
            f"{req.method} {route}", req.headers, {"http.request.method": req.method, "http.route": route}
        )
    if route not in UNLIMITED_PATHS:
        # Unknown routes count too: probing paths spends the budget.
        state.rate_limit = verdict = gateway.rate_limit.check(req.remote_addr or "")
        if not verdict.allowed:
            state.rate_limited = True
            raise gateway_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit exceeded: {verdict.limit} requests per window; retry after the time in Retry-After",
                "RATE_LIMITED",
            )
    limit = gateway.config.max_body_bytes
    if req.content_length is not None and req.content_length > limit:
        # Refused on the header alone, before a byte of the body is read.
        raise RequestEntityTooLarge()


def _finish_request(response):
    state, req = g._get_current_object(), request._get_current_object()
    headers = response.headers
    headers["X-Request-ID"] = getattr(state, "request_id", "")
    verdict = getattr(state, "rate_limit", None)
    if verdict is not None:
        for name, value in verdict.headers().items():
            headers[name] = value
    gateway = _gateway()
    route = getattr(state, "route", metrics.UNMATCHED_ROUTE)
    method = req.method if req.method in gateway.methods else OTHER_METHOD
    status = response.status_code
    elapsed = time.perf_counter() - getattr(state, "started", time.perf_counter())
    metrics.observe_request(route, method, status, elapsed)
    state.status = status
    if getattr(state, "rate_limited", False):
        metrics.labelled(metrics.rate_limited, route).inc()
    if getattr(state, "admin_route", False):
        caller: Caller | None = getattr(state, "caller", None)
        audit_log.info(
            "admin action",
            extra={
                # With AUTH=off the credential is ADMIN_TOKEN, which names no one.
                "subject": caller.subject if caller else "",
                "credential": "jwt" if gateway.gatekeeper.jwt else "admin_token",
                "client_ip": req.remote_addr,
                "method": method,
                "route": route,
                "path": req.path,
                "status": status,
            },
        )
    access_log.info(
        "request",
        extra={
            "request_id": state.request_id,
            "client_ip": req.remote_addr,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "upstream_code": getattr(state, "upstream_code", ""),
        },
    )
    return response


def _end_request(_error) -> None:
    span = g.pop("span", None)
    if span is not None:
        status = g.get("status", 500)
        tracing.end_server_span(
            span,
            g.pop("span_token"),
            error=f"HTTP {status}" if status >= 500 else None,
            **{"http.response.status_code": status},
        )
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


# --- transcoded routes -------------------------------------------------------


def _transcoder(binding: Binding, demand: Demand):
    admin = demand is Demand.ADMIN

    def transcode(**path_values):
        gateway = _gateway()
        caller = None
        if demand is not Demand.NOTHING:
            g.admin_route = admin
            g.caller = caller = gateway.gatekeeper.identify(demand, request.headers.get("Authorization"))
            gateway.gatekeeper.authorize(demand, caller)
        try:
            message = build_request(
                binding,
                path_values,
                list(request.args.items(multi=True)),
                _read_body(gateway.config.max_body_bytes) if binding.body else None,
            )
        except RequestError as error:
            raise invalid_argument(error.message, error.violations) from None
        try:
            response = gateway.upstreams.call(
                binding.backend, binding.full_method, message, binding.response_class, _outgoing_metadata(caller)
            )
        except grpc.RpcError as error:
            api_error = from_upstream(error, binding.backend, gateway.upstreams.timeout_s)
            g.upstream_code = api_error.upstream_code
            raise api_error from None
        g.upstream_code = grpc.StatusCode.OK.name
        answer = json_response(response_json(binding, response), binding.success_status)
        location = location_for(binding, response)
        if location:
            answer.headers["Location"] = location
        return answer

    transcode.__name__ = binding.endpoint
    return transcode


def _read_body(limit: int) -> bytes:
    """The whole body, or 413 once it passes `limit` (a chunked body has no
    Content-Length to check up front)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = request.stream.read(min(64 * 1024, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    return b"".join(chunks)


def _outgoing_metadata(caller: Caller | None) -> list[tuple[str, str]]:
    """What travels with the call: the request id, the verified caller (the
    services enforce ownership with it) and the idempotency key."""
    metadata = [("x-request-id", g.request_id)]
    if caller is not None:
        metadata += caller.metadata()
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            raise invalid_argument(
                "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
                [("Idempotency-Key", "must be 1 to 255 printable ASCII characters without spaces")],
            )
        metadata.append(("idempotency-key", key))
    return metadata


# --- responses and errors ----------------------------------------------------


def _api_error(error: ApiError):
    return json_response(error.body(g.get("request_id", "")), error.http_status, error.headers)


def _http_error(error: HTTPException):
    """Flask's own errors (no route, wrong method, body too large, 429) in the API's shape."""
    if isinstance(error, NotFound):
        api_error = gateway_error(
            grpc.StatusCode.NOT_FOUND, f"no route {request.method} {request.path}", "NOT_FOUND"
        )
    elif isinstance(error, MethodNotAllowed):
        allowed = allow_header(error.valid_methods or ())
        api_error = gateway_error(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{request.method} is not allowed on {request.path}; allowed: {allowed}",
            "METHOD_NOT_ALLOWED",
            http_status=405,
            headers={"Allow": allowed},
        )
    elif isinstance(error, RequestEntityTooLarge):
        limit = _gateway().config.max_body_bytes
        api_error = gateway_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request body is over {limit // 1024} KiB",
            "PAYLOAD_TOO_LARGE",
            http_status=413,
        )
    elif error.code is not None and error.code < 500:
        api_error = gateway_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            error.description or error.name,
            http_status=error.code,
        )
    else:
        return _unexpected_error(error)
    return _api_error(api_error)


def _unexpected_error(error: Exception):
    # The traceback goes to the log, never to the client.
    log.error("unhandled error", exc_info=error)
    return _api_error(gateway_error(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL"))
