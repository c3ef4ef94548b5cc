"""The server interceptor every service runs: request id, deadline, the
caller's identity (and the admin scope on admin RPCs), one log line per RPC
(DEBUG when it went well), go-grpc-prometheus metrics, and ShopError ->
status."""

import logging
import time

import grpc

from plumbing import metrics
from plumbing.deadlines import deadline_from_remaining, deadline_var
from plumbing.errors import ShopError
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

# Health checks come every few seconds from every probe: counted in metrics,
# never logged.
_QUIET_SERVICES = {"grpc.health.v1.Health"}


class ServerInterceptor(grpc.ServerInterceptor):
    def __init__(self):
        # method -> (the service's handler, the observed handler wrapping it):
        # wrapped once per method, not once per call.
        self._observed: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming: health Watch, reflection
        cached = self._observed.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        service, method = metrics.split_method(handler_call_details.method)
        behavior = handler.unary_unary
        admin = admin_rpc(handler_call_details.method)

        def observed(request, context):
            return self._observe(behavior, request, context, service, method, admin)

        wrapped = grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._observed[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _observe(self, behavior, request, context: grpc.ServicerContext, service, method, admin: bool):
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
        caller_token = None
        metrics.labelled(metrics.server_started, "unary", service, method).inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            caller = caller_from_metadata(subject, scopes)
            caller_token = caller_var.set(caller)
            if admin and caller is not None and not caller.admin:
                raise needs_admin()
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
            if caller_token is not None:
                caller_var.reset(caller_token)
            deadline_var.reset(deadline_token)
            request_id_var.reset(rid_token)
