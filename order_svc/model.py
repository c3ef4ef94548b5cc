"""The order service's model: an order's statuses and the saga's steps, the
Order type and what it is made of, a validated request to place one, a page
of a list, and the Store the orders are kept in (as a Protocol: store.py has
the SQL one). No calls, no SQL: the saga, the store and the servicer all speak
in these.

The statuses are the proto's (shop.order.v1.OrderStatus, and for an order's
payment shop.payment.v1.PaymentStatus), by name, so there is one list of
them; a status is a str, as it is stored.
"""

import datetime as dt
import enum
import hashlib
import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Protocol

import grpc

from plumbing.errors import ShopError
from plumbing.messages import names_of
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2

# PENDING (the saga is in flight), CONFIRMED, PAYMENT_FAILED, FAILED, CANCELLED.
OrderStatus = names_of(order_pb2.OrderStatus, "OrderStatus")
# A payment of the order, as the payment service reports it: CAPTURED, DECLINED, REFUNDED.
PaymentStatus = names_of(payment_pb2.PaymentStatus, "PaymentStatus")


class Step(enum.StrEnum):
    """Where the saga of an order is (saga.py's docstring says what each
    means); AT_REST when no step is under way. Kept in the order service's
    own database, never sent: not part of the proto."""

    AT_REST = ""
    RESERVING = "RESERVING"
    # Written by earlier versions only; still recovered.
    CHARGING = "CHARGING"
    VOIDING = "VOIDING"
    RELEASING = "RELEASING"
    CANCELLING = "CANCELLING"


@dataclass(frozen=True)
class OrderItem:
    product_id: str
    quantity: int
    # Set from the inventory's reservation.
    unit_price_cents: int = 0
    currency: str = ""


@dataclass(frozen=True)
class Price:
    """What one unit of a product costs, as the inventory's reservation says."""

    unit_price_cents: int
    currency: str


@dataclass(frozen=True)
class Failure:
    """The error a failed order answers with, kept with the order so that a
    retry with its idempotency key gets the very same one."""

    code: str  # a grpc.StatusCode name
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    violations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, error: ShopError) -> "Failure":
        return cls(
            error.code.name,
            error.reason,
            error.message,
            dict(error.metadata),
            tuple(map(tuple, error.violations)),
        )

    def error(self) -> ShopError:
        return ShopError(
            grpc.StatusCode[self.code], self.message, self.reason, dict(self.metadata), list(self.violations)
        )


@dataclass(frozen=True)
class Order:
    id: str
    customer_id: str
    status: OrderStatus
    items: tuple[OrderItem, ...]
    payment_method: str
    total_cents: int = 0
    currency: str = ""
    payment_id: str = ""
    step: Step = Step.AT_REST
    # The final status decided for an order being compensated.
    outcome: OrderStatus | None = None
    failure: Failure | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    # Insertion order: the tie-break of created_at in lists.
    seq: int = 0

    def priced(self, prices: dict[str, Price]) -> "Order":
        """The order at these prices: unit prices, total and currency (""
        when the items are priced in more than one)."""
        items = tuple(
            replace(
                i,
                unit_price_cents=prices[i.product_id].unit_price_cents,
                currency=prices[i.product_id].currency,
            )
            for i in self.items
        )
        currencies = {i.currency for i in items}
        total = sum(i.unit_price_cents * i.quantity for i in items)
        return replace(
            self, items=items, total_cents=total, currency=currencies.pop() if len(currencies) == 1 else ""
        )


def new_order_id() -> str:
    return "ord_" + secrets.token_hex(12)


@dataclass(frozen=True)
class OrderRequest:
    """A validated CreateOrder, in normal form (the flat form is one item)."""

    customer_id: str
    items: tuple[tuple[str, int], ...]
    payment_method: str
    idempotency_key: str = ""
    # Placed with a verified identity (the customer, or an admin for them):
    # only the customer's own payment methods may be charged (payment checks it).
    owner_only: bool = False

    def fingerprint(self) -> str:
        """What makes two requests with one idempotency key the same request."""
        canonical = json.dumps(
            {
                "customer_id": self.customer_id,
                "items": sorted(self.items),
                "payment_method": self.payment_method,
            },
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Cursor:
    """Where a page of a list ends: the last order's sort key, and the filter
    the list was asked with (a token is only good for the same filter)."""

    created_at: dt.datetime
    seq: int
    customer_id: str


@dataclass(frozen=True)
class Page:
    orders: list[Order]
    # Where the next page starts; None on the last page.
    next_cursor: Cursor | None


class Store(Protocol):
    """What the saga keeps its orders in (store.OrderStore; in memory in the
    saga's unit tests). Every move is a compare-and-set and answers None when
    the order had moved on."""

    def create(
        self, order: Order, idempotency_key: str, fingerprint: str, owner: str, lease_until: dt.datetime
    ) -> Order | None:
        """Store a new order, its lease held by `owner`; None if the customer's key is taken."""

    def find_by_idempotency_key(self, customer_id: str, key: str) -> tuple[Order, str] | None:
        """The order placed with this key, and its request's fingerprint."""

    def get(self, order_id: str) -> Order | None: ...

    def list_orders(self, customer_id: str, limit: int, cursor: Cursor | None) -> list[Order]: ...

    def advance(
        self,
        order_id: str,
        expected: tuple[OrderStatus, Step],
        owner: str | None,
        lease_until: dt.datetime | None,
        failure: Failure | None = None,
        items: tuple[OrderItem, ...] | None = None,
        known: Order | None = None,
        **changes,
    ) -> Order | None:
        """Apply `changes` if the order is at `expected` and `owner` (unless
        None) holds its lease; lease_until None ends the lease."""

    def begin_cancel(self, order_id: str, owner: str, lease_until: dt.datetime) -> Order | None:
        """CONFIRMED -> CONFIRMED at step CANCELLING."""

    def release_lease(self, order_id: str, owner: str) -> None: ...

    def stuck_orders(self, now: dt.datetime, untouched_since: dt.datetime, limit: int) -> list[str]:
        """Orders mid-saga whose lease has lapsed, untouched since `untouched_since`."""

    def claim(
        self,
        order_id: str,
        owner: str,
        now: dt.datetime,
        lease_until: dt.datetime,
        untouched_since: dt.datetime,
    ) -> Order | None:
        """Take the lease of a stuck order; None if it is not stuck."""

    def oldest_pending_created_at(self) -> dt.datetime | None: ...

    def forget_idempotency_keys(self, placed_before: dt.datetime, limit: int) -> int: ...
