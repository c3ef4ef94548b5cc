"""Every error the gateway answers, in the Google API shape:

    {"error": {"code", "status", "reason", "message", "details"}, "request_id"}

`code` is the HTTP status, `status` the gRPC code name, `reason` a stable
UPPER_SNAKE cause, and `details` the google.rpc details as JSON.
"""

import logging
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2  # also registers the detail types for Any -> JSON
from grpc_status import rpc_status

from plumbing.errors import DOMAIN, from_rpc_error

log = logging.getLogger("gateway.errors")

# As grpc-gateway maps them (runtime.HTTPStatusFromCode).
HTTP_STATUS_BY_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# The contract's fixed rows: these reasons answer these statuses whatever
# the gRPC code behind them.
HTTP_STATUS_BY_REASON = {
    "OUT_OF_STOCK": 409,
    "PAYMENT_DECLINED": 402,
    "NOT_CANCELLABLE": 409,
    "ORDER_IN_PROGRESS": 409,
    "IDEMPOTENCY_KEY_REUSED": 422,
    "IDEMPOTENCY_KEY_IN_USE": 409,
}

# Codes whose transport-level text (addresses, resolver errors, Python
# exceptions) says nothing useful to a client.
_OPAQUE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
}


@dataclass(eq=False)
class ApiError(Exception):
    http_status: int
    status: str
    reason: str
    message: str
    details: list[dict] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    # The upstream code for the access log; "" when no upstream answered.
    upstream_code: str = ""

    def __str__(self) -> str:
        return f"{self.http_status} {self.reason}: {self.message}"

    def body(self, request_id: str) -> dict:
        return {
            "error": {
                "code": self.http_status,
                "status": self.status,
                "reason": self.reason,
                "message": self.message,
                "details": self.details,
            },
            "request_id": request_id,
        }


def gateway_error(
    code: grpc.StatusCode,
    message: str,
    reason: str | None = None,
    *,
    http_status: int | None = None,
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> ApiError:
    """An error the gateway itself answers, with an ErrorInfo (and field
    violations as a BadRequest) in its details."""
    reason = reason or code.name
    details = [error_info(reason, metadata or {})]
    if violations:
        details.append(bad_request(violations))
    return ApiError(
        http_status=http_status or HTTP_STATUS_BY_CODE[code],
        status=code.name,
        reason=reason,
        message=message,
        details=details,
        headers=headers or {},
    )


def invalid_argument(message: str, violations: list[tuple[str, str]] = ()) -> ApiError:
    return gateway_error(grpc.StatusCode.INVALID_ARGUMENT, message, violations=violations)


def error_info(reason: str, metadata: dict[str, str]) -> dict:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": DOMAIN,
        "metadata": dict(metadata),
    }


def bad_request(violations: list[tuple[str, str]]) -> dict:
    return {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "field_violations": [{"field": f, "description": d} for f, d in violations],
    }


def from_upstream(error: grpc.RpcError, backend: str, timeout_s: float) -> ApiError:
    """The API error for a failed call to `backend`."""
    shop_error = from_rpc_error(error)
    code = shop_error.code
    details = _status_details(error)
    reason = shop_error.reason or code.name
    message = shop_error.message
    if not details:
        if code in _OPAQUE_CODES:
            log.warning(
                "upstream call failed",
                extra={"backend": backend, "grpc_code": code.name, "grpc_message": shop_error.message},
            )
            message = _opaque_message(code, backend, timeout_s)
        details = [error_info(reason, {"service": backend})]
    http_status = HTTP_STATUS_BY_REASON.get(reason, HTTP_STATUS_BY_CODE.get(code, 500))
    # Overload, a restarting backend or database: worth a retry soon.
    headers = {"Retry-After": "1"} if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) else {}
    return ApiError(
        http_status=http_status,
        status=code.name,
        reason=reason,
        message=message,
        details=details,
        headers=headers,
        upstream_code=code.name,
    )


def _opaque_message(code: grpc.StatusCode, backend: str, timeout_s: float) -> str:
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"the {backend} service is unavailable; try again later"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {backend} service did not answer within {timeout_s:g}s"
    return f"the {backend} service failed to answer"


def _status_details(error: grpc.RpcError) -> list[dict]:
    """Every google.rpc detail the call carried, as JSON."""
    try:
        status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    except ValueError:
        # The status trailer disagrees with the call's code: trust neither.
        return []
    if status is None:
        return []
    rendered = []
    for detail in status.details:
        try:
            as_json = json_format.MessageToDict(detail, preserving_proto_field_name=True)
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                # An empty map is left out of proto3 JSON; an ErrorInfo has one shape however it was made.
                as_json.setdefault("metadata", {})
            rendered.append(as_json)
        except (TypeError, KeyError, json_format.Error):
            # A detail type this gateway does not know: say what it was.
            rendered.append({"@type": detail.type_url})
    return rendered
