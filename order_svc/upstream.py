"""The saga's upstreams, inventory and payment, as the saga asks them: each
call returns its answer, or raises Refused (the upstream said no for sure:
nothing was done) or Unsettled (it did not answer for sure: what it did is
unknown, and the order stays at its step for a later attempt).

`Inventory` and `Payments` say what the saga needs; `InventoryClient` and
`PaymentClient` do it over the gRPC stubs, whose channels give every call a
deadline; the saga's unit tests do it in memory.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import grpc

from order_svc.model import Order, OrderItem, Price
from plumbing.errors import ShopError, from_rpc_error
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc

# Codes with which an upstream said no for sure: nothing was done. Any other
# failure (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...) leaves the outcome
# unknown.
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class Refused(Exception):
    """An upstream said no for sure: nothing was done. `error` is its answer."""

    def __init__(self, service: str, error: ShopError):
        super().__init__(f"{service}: {error}")
        self.service = service
        self.error = error


class Unsettled(Exception):
    """An upstream did not answer for sure: the order stays at its step, for
    a later attempt."""

    def __init__(self, service: str, error: ShopError):
        super().__init__(f"{service}: {error}")
        self.service = service
        self.error = error


@dataclass(frozen=True)
class Payment:
    """A payment of an order, as the payment service answered."""

    id: str
    # A PaymentStatus name (CAPTURED, DECLINED, REFUNDED).
    status: str
    decline_reason: str = ""


class Inventory(Protocol):
    def reserve(self, order_id: str, items: Iterable[OrderItem]) -> dict[str, Price]:
        """Hold the items' stock for the order, all or nothing, and answer
        each product's price. Idempotent by order id: a second Reserve
        answers the first one's prices. Refused: nothing is held."""

    def release(self, order_id: str) -> None:
        """Give back whatever the order holds, and refuse any later Reserve
        for it. Idempotent; never Refused (it must be done: a refusal is
        tried again like an outage)."""


class Payments(Protocol):
    def charge(self, order: Order, owner_only: bool) -> Payment:
        """Charge the order's total on its payment method, for its customer.
        Idempotent by order id: a retry answers the first charge. Refused:
        nothing is charged (an unknown payment method, a voided order)."""

    def payments(self, order_id: str) -> list[Payment]:
        """Every payment of the order. Never Refused."""

    def void(self, order_id: str) -> None:
        """Refund any capture of the order and refuse any later Charge for
        it. Idempotent; never Refused."""

    def refund(self, order_id: str) -> None:
        """Refund the order's capture. Idempotent. Refused: it stays charged."""


def _ask(service: str, call: Callable, request, refusals: frozenset = REFUSALS):
    """call(request), its failure as Refused (a code in `refusals`) or Unsettled."""
    try:
        return call(request)
    except grpc.RpcError as rpc_error:
        error = from_rpc_error(rpc_error)
        if error.code in refusals:
            raise Refused(service, error) from None
        raise Unsettled(service, error) from None


class InventoryClient:
    """Inventory over gRPC."""

    def __init__(self, stub: inventory_pb2_grpc.InventoryServiceStub):
        self.stub = stub

    def reserve(self, order_id: str, items: Iterable[OrderItem]) -> dict[str, Price]:
        request = inventory_pb2.ReserveRequest(
            order_id=order_id,
            items=[inventory_pb2.Item(product_id=i.product_id, quantity=i.quantity) for i in items],
        )
        reservation = _ask("inventory", self.stub.Reserve, request)
        return {line.product_id: Price(line.unit_price_cents, line.currency) for line in reservation.items}

    def release(self, order_id: str) -> None:
        _ask(
            "inventory",
            self.stub.Release,
            inventory_pb2.ReleaseRequest(order_id=order_id),
            refusals=frozenset(),
        )


class PaymentClient:
    """Payment over gRPC."""

    def __init__(self, stub: payment_pb2_grpc.PaymentServiceStub):
        self.stub = stub

    def charge(self, order: Order, owner_only: bool) -> Payment:
        request = payment_pb2.ChargeRequest(
            order_id=order.id,
            amount_cents=order.total_cents,
            currency=order.currency,
            payment_method=order.payment_method,
            customer_id=order.customer_id,
            owner_only=owner_only,
        )
        return _payment(_ask("payment", self.stub.Charge, request))

    def payments(self, order_id: str) -> list[Payment]:
        request = payment_pb2.ListPaymentsRequest(order_id=order_id)
        return [
            _payment(p)
            for p in _ask("payment", self.stub.ListPayments, request, refusals=frozenset()).payments
        ]

    def void(self, order_id: str) -> None:
        _ask("payment", self.stub.Void, payment_pb2.VoidRequest(order_id=order_id), refusals=frozenset())

    def refund(self, order_id: str) -> None:
        _ask("payment", self.stub.Refund, payment_pb2.RefundRequest(order_id=order_id))


def _payment(payment: payment_pb2.Payment) -> Payment:
    return Payment(payment.id, payment_pb2.PaymentStatus.Name(payment.status), payment.decline_reason)
