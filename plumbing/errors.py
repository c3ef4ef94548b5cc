"""Domain errors as gRPC statuses: a code, a message, and google.rpc details
(ErrorInfo with a stable reason in domain "shop"; BadRequest field violations).

Servicers raise ShopError; the server interceptor turns it into the status.
Clients (the order service, the gateway) read it back with from_rpc_error.
"""

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "shop"


@dataclass
class ShopError(Exception):
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # (field, description) pairs, sent as google.rpc.BadRequest.
    violations: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def with_metadata(self, **metadata: str) -> "ShopError":
        self.metadata.update({k: str(v) for k, v in metadata.items()})
        return self

    def to_status(self) -> grpc.Status:
        details = []
        if self.reason:
            info = error_details_pb2.ErrorInfo(
                reason=self.reason, domain=DOMAIN, metadata=self.metadata
            )
            details.append(_pack(info))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
            details.append(_pack(bad))
        proto = status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=details
        )
        return rpc_status.to_status(proto)


@dataclass
class DatabaseUnavailable(ShopError):
    """The service's own database did not answer for now (unreachable,
    restarting, crashed, locked past its timeout): UNAVAILABLE, a condition
    to retry, never INTERNAL. plumbing.db raises it; the order saga names
    the order it hit.

    `shared`: the condition is the database's, which every replica shares,
    so the answer tells the client's transparent retry (meant for a replica
    gone) not to spend the rest of its deadline trying again: gRFC A6's
    grpc-retry-pushback-ms, negative. A replica still waiting for its
    database at start is not shared: another may be ready."""

    shared: bool = True

    def to_status(self) -> grpc.Status:
        status = super().to_status()
        if not self.shared:
            return status
        return status._replace(trailing_metadata=(*status.trailing_metadata, (RETRY_PUSHBACK_KEY, "-1")))


# gRFC A6: a server's answer to the client's retry policy; negative: do not retry.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def database_unavailable(
    message: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, shared: bool = True
) -> DatabaseUnavailable:
    """`message` tells the caller what to expect; the driver's own text (it
    names hosts and ports) is for the log alone."""
    return DatabaseUnavailable(code, message, code.name, {"cause": "database"}, shared=shared)


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def violations_message(violations: list[tuple[str, str]]) -> str:
    """One line naming every (field, description) violation."""
    return "; ".join(f"{f}: {d}" for f, d in violations)


def invalid_argument(violations: list[tuple[str, str]], reason: str = "INVALID_ARGUMENT") -> ShopError:
    return ShopError(grpc.StatusCode.INVALID_ARGUMENT, violations_message(violations), reason, violations=list(violations))


def not_found(kind: str, key: str) -> ShopError:
    """`kind` ("product", "payment method") `key` is unknown: its metadata
    names the id under the kind's own key (product_id, payment_method_id),
    as API.md's ErrorInfo does, besides the generic resource and id."""
    metadata = {"resource": kind, "id": key, f"{kind.replace(' ', '_')}_id": key}
    return ShopError(grpc.StatusCode.NOT_FOUND, f"{kind} {key!r} not found", "NOT_FOUND", metadata)


def failed_precondition(reason: str, message: str, **metadata) -> ShopError:
    return ShopError(grpc.StatusCode.FAILED_PRECONDITION, message, reason).with_metadata(**metadata)


def from_rpc_error(error: grpc.RpcError) -> ShopError:
    """The ShopError a failed call carried (or a bare one for transport errors)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    result = ShopError(code or grpc.StatusCode.UNKNOWN, message or "")
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    if status is None:
        return result
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            result.reason = info.reason
            result.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            result.violations = [(v.field, v.description) for v in bad.field_violations]
    return result
