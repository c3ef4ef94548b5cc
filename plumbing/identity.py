"""Who a call is made for, and what that caller may see.

With AUTH=jwt the gateway verifies the customer's token and passes the
verified identity on as gRPC metadata: `x-shop-subject` (the customer id)
and `x-shop-scopes` (space-separated; absent = none). The services enforce
ownership with it themselves, so a bug in the gateway does not open every
order. A call without that metadata (AUTH=off, grpcurl) follows no
ownership rule, as in the original design.
"""

import contextvars
import functools
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool

from plumbing.errors import ShopError
from plumbing.validation import ID_PATTERN
from shop.api.v1 import http_options_pb2

SUBJECT_METADATA = "x-shop-subject"
SCOPES_METADATA = "x-shop-scopes"
# The scope that sees every customer's orders and holds the admin routes.
ADMIN_SCOPE = "shop:admin"


@dataclass(frozen=True)
class Caller:
    """A verified identity: a customer id and the scopes of its token."""

    subject: str
    scopes: frozenset[str] = frozenset()

    @property
    def admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def metadata(self) -> list[tuple[str, str]]:
        """The metadata that carries this identity to a service."""
        metadata = [(SUBJECT_METADATA, self.subject)]
        if self.scopes:
            metadata.append((SCOPES_METADATA, " ".join(sorted(self.scopes))))
        return metadata


# The caller of the call being served (set by the server interceptor), or
# None when the call carried no identity.
caller_var: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller | None:
    return caller_var.get()


def caller_from_metadata(subject: str | None, scopes: str | None) -> Caller | None:
    """The Caller that metadata names; None when it names none. A subject
    that is not a customer id is refused, never read as "no identity"."""
    if subject is None and scopes is None:
        return None
    if subject is None or not ID_PATTERN.fullmatch(subject):
        raise ShopError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{SUBJECT_METADATA} must be a customer id (^[A-Za-z0-9_-]{{1,64}}$) when identity metadata is sent",
            "UNAUTHENTICATED",
        )
    return Caller(subject, frozenset((scopes or "").split()))


def may_see(caller: Caller | None, owner: str | None) -> bool:
    """Whether the caller may see a resource of `owner` (None: made without
    an identity). Without a caller there is no rule; an admin sees all; a
    customer sees their own only."""
    return caller is None or caller.admin or (owner is not None and owner == caller.subject)


def customer_for(caller: Caller | None, customer_id: str) -> str:
    """The customer a request acts for. A customer acts only for themselves:
    no customer_id means them, another one is refused. Without a caller, or
    for an admin, it is the customer_id given."""
    if caller is None or caller.admin:
        return customer_id
    if not customer_id:
        return caller.subject
    if customer_id != caller.subject:
        raise ShopError(
            grpc.StatusCode.PERMISSION_DENIED,
            "customer_id names another customer: a customer acts only for themselves",
            "PERMISSION_DENIED",
            {"customer_id": customer_id},
        )
    return customer_id


@functools.cache
def admin_rpc(full_method: str) -> bool:
    """Whether an RPC ("/pkg.Service/Method") is an admin route (its
    shop.api.v1.http option says admin): with an identity, it needs the
    admin scope, in the service as at the gateway."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return False
    options = descriptor.GetOptions()
    return options.HasExtension(http_options_pb2.http) and options.Extensions[http_options_pb2.http].admin


def needs_admin() -> ShopError:
    return ShopError(
        grpc.StatusCode.PERMISSION_DENIED, f"this needs the {ADMIN_SCOPE} scope", "PERMISSION_DENIED"
    )
