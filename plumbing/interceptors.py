"""The server interceptor every service runs: with TLS on, the caller table
first (plumbing/access.py); then request id, deadline, the customer's
identity (and the admin scope on admin RPCs), the request's field rules
(plumbing/field_rules.py), one log line per RPC (DEBUG when it went well),
go-grpc-prometheus metrics, and ShopError -> status."""

import logging
import threading
import time

import grpc

from plumbing import access, field_rules, metrics, tracing
from plumbing.deadlines import deadline_from_remaining, deadline_var
from plumbing.errors import ShopError, database_unavailable, invalid_argument
from plumbing.identity import (
    SCOPES_METADATA,
    SUBJECT_METADATA,
    admin_rpc,
    caller_from_metadata,
    caller_var,
    needs_admin,
)
from plumbing.logs import accepted_request_id, request_id_var

log = logging.getLogger("plumbing.rpc")


def _not_ready() -> ShopError:
    # Not shared: another replica may be ready, so the client may retry there.
    return database_unavailable(
        "the service is starting: it is waiting for its database; retry shortly", shared=False
    )


class _Unparsable:
    """A request whose bytes are not the method's message: answered
    INVALID_ARGUMENT by the interceptor, in its turn (after the caller check),
    where grpc would answer INTERNAL and log a traceback for a client's fault."""

    __slots__ = ()


_UNPARSABLE = _Unparsable()


def _lenient(deserialize):
    """`deserialize`, giving _UNPARSABLE for bytes it cannot parse."""
    if deserialize is None:
        return None

    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception:  # protobuf's DecodeError, or a message that will not build
            return _UNPARSABLE

    return parse


# Health checks come every few seconds from every probe: counted in metrics,
# never logged nor traced (a trace each would bury the orders').
_QUIET_SERVICES = {"grpc.health.v1.Health"}


class ServerInterceptor(grpc.ServerInterceptor):
    """`ready`, when given: until it is set (the database prepared), calls
    but health checks answer UNAVAILABLE instead of reaching a store
    without its tables. `enforce_callers` (TLS on): every RPC admits only
    the callers its table entry names."""

    def __init__(self, ready: threading.Event | None = None, enforce_callers: bool = False):
        self._ready = ready
        self._enforce_callers = enforce_callers
        # method -> (the service's handler, the observed handler wrapping it):
        # wrapped once per method, not once per call.
        self._observed: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        cached = self._observed.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        # The table's entry, looked up once per method (None: TLS off, nothing to check).
        check = access.CallerCheck(handler_call_details.method) if self._enforce_callers else None
        if handler.unary_unary is None:
            # Streaming (health Watch, reflection): checked, not observed.
            wrapped = handler if check is None or check.allowed is None else check.guard(handler)
            self._observed[handler_call_details.method] = (handler, wrapped)
            return wrapped
        service, method = metrics.split_method(handler_call_details.method)
        behavior = handler.unary_unary
        admin = admin_rpc(handler_call_details.method)
        # The request type's declared field rules, built once (None: it declares none).
        rules = field_rules.request_check(handler_call_details.method)

        def observed(request, context):
            return self._observe(behavior, request, context, service, method, check, admin, rules)

        wrapped = grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._observed[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _observe(self, behavior, request, context: grpc.ServicerContext, service, method, check, admin: bool, rules):
        request_id = subject = scopes = None
        for key, value in context.invocation_metadata():
            if key == "x-request-id":
                request_id = value
            elif key == SUBJECT_METADATA:
                subject = value
            elif key == SCOPES_METADATA:
                scopes = value
        rid_token = request_id_var.set(accepted_request_id(request_id))
        deadline_token = deadline_var.set(deadline_from_remaining(context.time_remaining()))
        span = None
        if tracing.enabled and service not in _QUIET_SERVICES:
            span, span_token = tracing.start_server_span(
                f"{service}/{method}",
                dict(context.invocation_metadata()),
                {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            )
        metrics.labelled(metrics.server_started, "unary", service, method).inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        caller_token = customer_token = None
        try:
            if check is not None:
                # Before anything the service does, validation included.
                caller_token = access.caller_var.set(check(context))
            if self._ready is not None and not self._ready.is_set() and service not in _QUIET_SERVICES:
                raise _not_ready()
            customer = caller_from_metadata(subject, scopes)
            customer_token = caller_var.set(customer)
            if admin and customer is not None and not customer.admin:
                raise needs_admin()
            if request is _UNPARSABLE:
                raise invalid_argument([("request", "is not a valid protobuf message for this method")])
            if rules is not None:
                rules(request)
            response = behavior(request, context)
            code = context.code() or grpc.StatusCode.OK
            return response
        except ShopError as error:
            code = error.code
            context.abort_with_status(error.to_status())
        except Exception:
            code = context.code() or grpc.StatusCode.UNKNOWN
            if code in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN):
                # Not an abort: a bug. Log the traceback here, answer INTERNAL
                # without it.
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s/%s", service, method)
                context.abort(code, "internal error")
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.labelled(metrics.server_handled, "unary", service, method, code.name).inc()
            metrics.labelled(metrics.server_handling_seconds, "unary", service, method).observe(elapsed)
            # A call that went well is a DEBUG line (one per RPC is most of a
            # service's log volume and a share of its CPU); any other outcome
            # stays at INFO. Health checks are never logged.
            level = logging.DEBUG if code is grpc.StatusCode.OK else logging.INFO
            if service not in _QUIET_SERVICES and log.isEnabledFor(level):
                log.log(
                    level,
                    "rpc",
                    extra={
                        "grpc_service": service,
                        "grpc_method": method,
                        "grpc_code": code.name,
                        "duration_ms": round(elapsed * 1000, 2),
                        "peer": context.peer(),
                    },
                )
            if span is not None:
                tracing.end_server_span(
                    span,
                    span_token,
                    error=None if code is grpc.StatusCode.OK else code.name,
                    **{"rpc.grpc.status_code": code.name},
                )
            if customer_token is not None:
                caller_var.reset(customer_token)
            if caller_token is not None:
                access.caller_var.reset(caller_token)
            deadline_var.reset(deadline_token)
            request_id_var.reset(rid_token)
