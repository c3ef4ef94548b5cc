"""The saga's upstream adapter (order_svc.upstream) over stand-in stubs, with
no channel and no server: an answer comes back in the saga's terms, a sure
refusal of Reserve, Charge or Refund raises Refused, and anything else -
an outage, a timeout, or any failure of a call that must be made good
(Release, Void, ListPayments) - raises Unsettled."""

import grpc
import pytest

from order_svc.model import Order, OrderItem, OrderStatus, Price
from order_svc.upstream import REFUSALS, InventoryClient, Payment, PaymentClient, Refused, Unsettled
from shop.inventory.v1 import inventory_pb2
from shop.payment.v1 import payment_pb2

UNKNOWN_OUTCOMES = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL]
ORDER = Order(
    "ord_1", "C1", OrderStatus.PENDING, (OrderItem("P001", 2),), "tok_visa", total_cents=3998, currency="USD"
)


class CallFailed(grpc.RpcError):
    """What a stub raises when its call fails with `code`."""

    def __init__(self, code: grpc.StatusCode):
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"the call failed: {self._code.name}"


class Stub:
    """Answers each method with `answers[name]`, or raises it if it is an error; records the requests."""

    def __init__(self, **answers):
        self.answers = answers
        self.requests: list[tuple[str, object]] = []

    def __getattr__(self, name):
        def call(request):
            self.requests.append((name, request))
            answer = self.answers[name]
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call


def test_a_reservation_answers_each_products_price():
    reservation = inventory_pb2.Reservation(
        order_id="ord_1",
        items=[
            inventory_pb2.ReservedItem(product_id="P001", quantity=2, unit_price_cents=1999, currency="USD")
        ],
    )
    stub = Stub(Reserve=reservation)
    assert InventoryClient(stub).reserve("ord_1", ORDER.items) == {"P001": Price(1999, "USD")}
    ((name, sent),) = stub.requests
    assert (name, sent.order_id, [(i.product_id, i.quantity) for i in sent.items]) == (
        "Reserve",
        "ord_1",
        [("P001", 2)],
    )


def test_a_charge_answers_the_payment_with_its_status_name():
    answer = payment_pb2.Payment(id="pay_1", status=payment_pb2.DECLINED, decline_reason="card_declined")
    stub = Stub(Charge=answer)
    assert PaymentClient(stub).charge(ORDER, owner_only=True) == Payment(
        "pay_1", "DECLINED", "card_declined"
    )
    ((_, sent),) = stub.requests
    assert (sent.order_id, sent.amount_cents, sent.currency, sent.payment_method) == (
        "ord_1",
        3998,
        "USD",
        "tok_visa",
    )
    assert (sent.customer_id, sent.owner_only) == ("C1", True)


def test_an_orders_payments_are_listed():
    listed = payment_pb2.ListPaymentsResponse(
        payments=[payment_pb2.Payment(id="pay_1", status=payment_pb2.CAPTURED)]
    )
    assert PaymentClient(Stub(ListPayments=listed)).payments("ord_1") == [Payment("pay_1", "CAPTURED", "")]


REFUSABLE = [
    ("reserve", lambda stub: InventoryClient(stub).reserve("ord_1", ORDER.items), "Reserve"),
    ("charge", lambda stub: PaymentClient(stub).charge(ORDER, False), "Charge"),
    ("refund", lambda stub: PaymentClient(stub).refund("ord_1"), "Refund"),
]
MUST_BE_DONE = [
    ("release", lambda stub: InventoryClient(stub).release("ord_1"), "Release"),
    ("void", lambda stub: PaymentClient(stub).void("ord_1"), "Void"),
    ("payments", lambda stub: PaymentClient(stub).payments("ord_1"), "ListPayments"),
]


@pytest.mark.parametrize("code", sorted(REFUSALS, key=lambda c: c.name))
@pytest.mark.parametrize("name, call, method", REFUSABLE, ids=[r[0] for r in REFUSABLE])
def test_a_sure_refusal_of_reserve_charge_or_refund_is_refused_with_its_error(name, call, method, code):
    with pytest.raises(Refused) as raised:
        call(Stub(**{method: CallFailed(code)}))
    assert (raised.value.error.code, raised.value.error.message) == (code, f"the call failed: {code.name}")


@pytest.mark.parametrize("code", UNKNOWN_OUTCOMES)
@pytest.mark.parametrize("name, call, method", REFUSABLE, ids=[r[0] for r in REFUSABLE])
def test_a_failure_without_a_sure_answer_is_unsettled(name, call, method, code):
    with pytest.raises(Unsettled) as raised:
        call(Stub(**{method: CallFailed(code)}))
    assert raised.value.error.code == code
    assert raised.value.service == ("inventory" if name == "reserve" else "payment")


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, *UNKNOWN_OUTCOMES]
)
@pytest.mark.parametrize("name, call, method", MUST_BE_DONE, ids=[r[0] for r in MUST_BE_DONE])
def test_any_failure_of_a_call_that_must_be_made_good_is_unsettled(name, call, method, code):
    with pytest.raises(Unsettled) as raised:
        call(Stub(**{method: CallFailed(code)}))
    assert raised.value.error.code == code
