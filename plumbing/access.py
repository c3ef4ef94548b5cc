"""Who may call what, with TLS on (API.md, "Service-to-service TLS").

A caller is the process named by its client certificate's URI SAN
spiffe://shop/<name>. The table of which callers each RPC admits is the
`shop.api.v1.callers` option on the RPC in protos/, beside its HTTP rule; it
is read here from the descriptors, once per method, and enforced by the
server interceptor before anything else. Health and reflection admit any
holder of a certificate from the CA (the TLS handshake checked that much).
"""

import contextvars
import logging

import grpc
from google.protobuf import descriptor_pool

from plumbing.errors import ShopError
from shop.api.v1 import http_options_pb2

log = logging.getLogger("plumbing.access")

SPIFFE_PREFIX = "spiffe://shop/"
IDENTITIES = ("gateway", "order", "inventory", "payment")
# The only caller whose x-shop-* metadata (the customer it acts for) a
# service believes: the gateway verified that identity itself.
IDENTITY_METADATA_PREFIX = "x-shop-"
IDENTITY_VOUCHER = "gateway"
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)

# The verified caller of the RPC being served; None with TLS off, when no
# caller is known.
caller_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)


def spiffe_id(name: str) -> str:
    return SPIFFE_PREFIX + name


def callers_of(full_method: str) -> frozenset[str] | None:
    """The callers the table admits to '/package.Service/Method': None for
    any certificate holder (health, reflection), empty for no one (a method
    the shop's protos do not describe, or one without an entry)."""
    service, _, method = full_method.lstrip("/").partition("/")
    if service in OPEN_SERVICES:
        return None
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return frozenset()
    return frozenset(descriptor.GetOptions().Extensions[http_options_pb2.callers].allow)


def caller_of(context: grpc.ServicerContext) -> str:
    """The caller's name from its certificate ('' without a spiffe://shop/ identity)."""
    # The full auth context costs ~11 us a call (it copies the PEM); the
    # certificate's SANs (peer_identities) ~1 us, and they decide the name.
    sans = tuple(context.peer_identities() or ())
    caller = _callers_by_sans.get(sans)
    if caller is None:
        # gRPC sets peer_spiffe_id only for a certificate with exactly one URI SAN.
        values = context.auth_context().get("peer_spiffe_id")
        uri = values[0].decode() if values else ""
        caller = uri[len(SPIFFE_PREFIX) :] if uri.startswith(SPIFFE_PREFIX) else ""
        if len(_callers_by_sans) >= _MAX_KNOWN_CERTIFICATES:
            _callers_by_sans.clear()
        _callers_by_sans[sans] = caller
    return caller


# SAN list -> caller name: a handful of certificates (one per process, new
# ones at rotation), bounded all the same.
_callers_by_sans: dict[tuple[bytes, ...], str] = {}
_MAX_KNOWN_CERTIFICATES = 256


def believes_identity_metadata() -> bool:
    """Whether the x-shop-* metadata of the RPC being served may be believed:
    with TLS on, from the gateway only (with it off, no caller is known)."""
    caller = caller_var.get()
    return caller is None or caller == IDENTITY_VOUCHER


class CallerCheck:
    """The table's entry for one method, looked up once; called per RPC with
    its context, it raises PERMISSION_DENIED for a caller the entry does not
    admit, and for x-shop-* metadata from anyone but the gateway."""

    def __init__(self, full_method: str):
        self.method = full_method.lstrip("/")
        self.allowed = callers_of(full_method)

    def __call__(self, context: grpc.ServicerContext) -> str:
        caller = caller_of(context)
        if self.allowed is not None and caller not in self.allowed:
            raise self._denied(caller, f"{caller or 'a caller without a shop identity'} may not call {self.method}")
        if caller != IDENTITY_VOUCHER:
            for key, _ in context.invocation_metadata():
                if key.startswith(IDENTITY_METADATA_PREFIX):
                    raise self._denied(caller, f"{key} is believed only from the {IDENTITY_VOUCHER}, not {caller}")
        return caller

    def _denied(self, caller: str, message: str) -> ShopError:
        log.warning("caller denied", extra={"caller": caller, "grpc_method": self.method, "cause": message})
        return ShopError(
            grpc.StatusCode.PERMISSION_DENIED,
            message,
            "CALLER_NOT_ALLOWED",
            {"caller": caller, "method": self.method},
        )

    def guard(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A streaming handler that runs the check first (the interceptor
        checks unary calls itself)."""
        kind = next(k for k in ("unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
        behavior = getattr(handler, kind)

        def checked(request_or_iterator, context, **kwargs):
            try:
                self(context)
            except ShopError as error:
                context.abort_with_status(error.to_status())
            return behavior(request_or_iterator, context, **kwargs)

        # A non-blocking handler (health Watch) stays one: grpc reads this
        # from the function it calls, and passes it send_response_callback.
        checked.experimental_non_blocking = getattr(behavior, "experimental_non_blocking", False)
        return handler._replace(**{kind: checked})
