"""PaymentService against an in-process server, on SQLite and PostgreSQL:
tokenization, the test tokens and cards, and the saga's Charge, Void and
Refund, each idempotent by order_id."""

import datetime as dt
import re

import grpc
import pytest

from plumbing.errors import from_rpc_error
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc
from tests import harness

NEXT_YEAR = dt.datetime.now(dt.UTC).year + 1


@pytest.fixture
def payment(database_url):
    running = harness.run_payment(database_url("payment"))
    yield running
    running.stop()


@pytest.fixture
def stub(payment):
    return payment_pb2_grpc.PaymentServiceStub(payment.channel())


def error_of(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


def tokenize(stub, number="4242424242424242", exp_month=12, exp_year=NEXT_YEAR, cvc="123"):
    card = pb.Card(number=number, exp_month=exp_month, exp_year=exp_year, cvc=cvc)
    return stub.CreatePaymentMethod(pb.CreatePaymentMethodRequest(card=card), timeout=10)


def charge(stub, order_id="o1", payment_method="tok_visa", amount_cents=1999, currency="USD"):
    request = pb.ChargeRequest(
        order_id=order_id, amount_cents=amount_cents, currency=currency, payment_method=payment_method
    )
    return stub.Charge(request, timeout=10)


def payments_of(stub, order_id):
    return list(stub.ListPayments(pb.ListPaymentsRequest(order_id=order_id), timeout=10).payments)


def utc(year, month, day=1, hour=0):
    return dt.datetime(year, month, day, hour, tzinfo=dt.UTC)


# CreatePaymentMethod


def test_create_payment_method_keeps_brand_last4_and_expiry(stub):
    method = tokenize(stub, number="4242 4242 4242 4242", exp_month=7, exp_year=NEXT_YEAR)
    assert re.fullmatch(r"pm_[0-9a-f]{24}", method.id)
    assert (method.card_brand, method.card_last4, method.exp_month, method.exp_year) == (
        "visa",
        "4242",
        7,
        NEXT_YEAR,
    )


@pytest.mark.parametrize(
    "number, cvc, brand, last4",
    [
        ("5555555555554444", "123", "mastercard", "4444"),
        ("2223003122003222", "123", "mastercard", "3222"),
        ("378282246310005", "1234", "amex", "0005"),
        ("6011111111111117", "123", "discover", "1117"),
        ("3530111333300000", "123", "jcb", "0000"),
        ("6200000000000005", "123", "unionpay", "0005"),
        ("5000000000000009", "123", "unknown", "0009"),
    ],
)
def test_create_payment_method_detects_the_brand(stub, number, cvc, brand, last4):
    method = tokenize(stub, number=number, cvc=cvc)
    assert (method.card_brand, method.card_last4) == (brand, last4)


def test_two_tokenizations_of_one_card_get_different_ids(stub):
    assert tokenize(stub).id != tokenize(stub).id


def test_a_payment_method_can_be_read_back_by_its_id(stub):
    made = tokenize(stub)
    assert stub.GetPaymentMethod(pb.GetPaymentMethodRequest(payment_method_id=made.id), timeout=10) == made
    token = stub.GetPaymentMethod(pb.GetPaymentMethodRequest(payment_method_id="tok_mastercard"), timeout=10)
    assert (token.card_brand, token.card_last4) == ("mastercard", "4444")


@pytest.mark.parametrize("method_id, code", [("pm_0123456789abcdef01234567", "NOT_FOUND"), ("pm 1", "INVALID_ARGUMENT")])
def test_an_unknown_or_malformed_payment_method_id_is_refused(stub, method_id, code):
    request = pb.GetPaymentMethodRequest(payment_method_id=method_id)
    error = from_rpc_error(error_of(stub.GetPaymentMethod, request))
    assert (error.code.name, error.reason) == (code, code)


def test_create_payment_method_without_a_card_is_invalid(stub):
    error = from_rpc_error(error_of(stub.CreatePaymentMethod, pb.CreatePaymentMethodRequest()))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert [f for f, _ in error.violations] == ["card"]


@pytest.mark.parametrize(
    "number, exp_month, exp_year, cvc, fields",
    [
        # The declared field rules, all broken at once.
        ("4242-4242-4242-4242", 13, 99, "98765", ["card.number", "card.exp_month", "card.exp_year", "card.cvc"]),
        # Past the rules, what needs more than one field: an amex prefix with a
        # bad check digit, and a CVC judged as amex's (4 digits).
        ("378282246310006", 12, NEXT_YEAR, "987", ["card.number", "card.cvc"]),
    ],
)
def test_bad_card_names_every_field_and_never_quotes_the_number_or_cvc(stub, number, exp_month, exp_year, cvc, fields):
    card = pb.Card(number=number, exp_month=exp_month, exp_year=exp_year, cvc=cvc)
    raw = error_of(stub.CreatePaymentMethod, pb.CreatePaymentMethodRequest(card=card))
    error = from_rpc_error(raw)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert [f for f, _ in error.violations] == fields
    details = raw.details() + repr(error.violations) + repr(error.metadata)
    trailers = b"".join(v if isinstance(v, bytes) else v.encode() for _, v in raw.trailing_metadata())
    assert number not in details and number.encode() not in trailers
    assert cvc not in details and cvc.encode() not in trailers


@pytest.mark.parametrize(
    "number",
    ["4242424242424241", "4242 4242 4242 4241", "4242-4242-4242-4242", "42424242424242424242", "abcd"],
)
def test_invalid_card_numbers_are_refused_on_card_number(stub, number):
    raw = error_of(
        stub.CreatePaymentMethod,
        pb.CreatePaymentMethodRequest(
            card=pb.Card(number=number, exp_month=1, exp_year=NEXT_YEAR, cvc="123")
        ),
    )
    error = from_rpc_error(raw)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in error.violations] == ["card.number"]
    assert number not in raw.details()


def test_expired_card_is_refused(stub):
    error = from_rpc_error(
        error_of(
            stub.CreatePaymentMethod,
            pb.CreatePaymentMethodRequest(
                card=pb.Card(number="4242424242424242", exp_month=12, exp_year=2020, cvc="123")
            ),
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in error.violations] == ["card.exp_year"]


def test_amex_with_a_three_digit_cvc_is_refused(stub):
    error = from_rpc_error(
        error_of(
            stub.CreatePaymentMethod,
            pb.CreatePaymentMethodRequest(
                card=pb.Card(number="378282246310005", exp_month=1, exp_year=NEXT_YEAR, cvc="123")
            ),
        )
    )
    assert error.violations == [("card.cvc", "must be 4 digits")]


def test_card_is_accepted_through_the_last_moment_of_its_expiry_month(payment, stub):
    payment.servicer.clock = lambda: dt.datetime(2031, 3, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert tokenize(stub, exp_month=3, exp_year=2031).exp_month == 3
    payment.servicer.clock = lambda: utc(2031, 4, 1)
    error = from_rpc_error(
        error_of(
            stub.CreatePaymentMethod,
            pb.CreatePaymentMethodRequest(
                card=pb.Card(number="4242424242424242", exp_month=3, exp_year=2031, cvc="123")
            ),
        )
    )
    assert [f for f, _ in error.violations] == ["card.exp_month"]


# Charge


@pytest.mark.parametrize(
    "token, status, reason, brand, last4",
    [
        ("tok_visa", pb.CAPTURED, "", "visa", "4242"),
        ("tok_mastercard", pb.CAPTURED, "", "mastercard", "4444"),
        ("tok_chargeDeclined", pb.DECLINED, "card_declined", "visa", "0002"),
        ("tok_insufficientFunds", pb.DECLINED, "insufficient_funds", "visa", "9995"),
    ],
)
def test_each_test_token_charges_as_documented(stub, token, status, reason, brand, last4):
    paid = charge(stub, payment_method=token)
    assert (paid.status, paid.decline_reason, paid.card_brand, paid.card_last4) == (
        status,
        reason,
        brand,
        last4,
    )


@pytest.mark.parametrize(
    "number, status, reason",
    [
        ("4242424242424242", pb.CAPTURED, ""),
        ("5555555555554444", pb.CAPTURED, ""),
        ("4000000000000002", pb.DECLINED, "card_declined"),
        ("4000000000009995", pb.DECLINED, "insufficient_funds"),
    ],
)
def test_tokenized_cards_charge_as_the_processor_decided(stub, number, status, reason):
    method = tokenize(stub, number=number)
    paid = charge(stub, payment_method=method.id)
    assert (paid.status, paid.decline_reason, paid.card_last4) == (status, reason, number[-4:])


def test_captured_payment_carries_the_order_amount_and_utc_timestamps(stub):
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    paid = charge(stub, order_id="order-42", amount_cents=10**12, currency="EUR")
    assert re.fullmatch(r"pay_[0-9a-f]{24}", paid.id)
    assert (paid.order_id, paid.amount_cents, paid.currency, paid.status) == (
        "order-42",
        10**12,
        "EUR",
        pb.CAPTURED,
    )
    created = paid.created_at.ToDatetime(dt.UTC)
    # UTC, not local time: a time-zone slip would be hours off.
    assert before <= created <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    assert paid.updated_at == paid.created_at
    assert stub.GetPayment(pb.GetPaymentRequest(payment_id=paid.id), timeout=10) == paid


def test_charge_of_a_payment_method_whose_expiry_has_passed_is_declined_expired_card(payment, stub):
    payment.servicer.clock = lambda: utc(2031, 3, 15)
    method = tokenize(stub, exp_month=3, exp_year=2031)
    assert charge(stub, order_id="in-time", payment_method=method.id).status == pb.CAPTURED
    payment.servicer.clock = lambda: utc(2031, 4, 1)
    late = charge(stub, order_id="too-late", payment_method=method.id)
    assert (late.status, late.decline_reason) == (pb.DECLINED, "expired_card")


@pytest.mark.parametrize(
    "reference", ["tok_unknown", "pm_000000000000000000000000", "4242424242424242", "pm_../x"]
)
def test_unknown_payment_method_is_invalid_on_payment_method_and_not_quoted(stub, reference):
    raw = error_of(
        stub.Charge,
        pb.ChargeRequest(order_id="o1", amount_cents=100, currency="USD", payment_method=reference),
    )
    error = from_rpc_error(raw)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert [f for f, _ in error.violations] == ["payment_method"]
    assert reference not in raw.details()
    assert payments_of(stub, "o1") == []


@pytest.mark.parametrize(
    "order_id, amount_cents, currency, payment_method, fields",
    [
        ("", 100, "USD", "tok_visa", ["order_id"]),
        ("bad id", 100, "USD", "tok_visa", ["order_id"]),
        ("o1\n", 100, "USD", "tok_visa", ["order_id"]),
        ("o" * 65, 100, "USD", "tok_visa", ["order_id"]),
        ("o1", 0, "USD", "tok_visa", ["amount_cents"]),
        ("o1", -1, "USD", "tok_visa", ["amount_cents"]),
        ("o1", 100, "usd", "tok_visa", ["currency"]),
        ("o1", 100, "", "tok_visa", ["currency"]),
        ("o1", 100, "USD", "", ["payment_method"]),
        # Every broken field rule at once (an unknown token is found only past them).
        ("", 0, "dollars", "tok_nope", ["order_id", "amount_cents", "currency"]),
        ("o1", 100, "USD", "tok_nope", ["payment_method"]),
    ],
)
def test_charge_validates_its_fields(stub, order_id, amount_cents, currency, payment_method, fields):
    error = from_rpc_error(
        error_of(
            stub.Charge,
            pb.ChargeRequest(
                order_id=order_id, amount_cents=amount_cents, currency=currency, payment_method=payment_method
            ),
        )
    )
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert [f for f, _ in error.violations] == fields


def test_repeated_charge_returns_the_first_result_and_charges_once(stub):
    first = charge(stub, order_id="o1", payment_method="tok_visa", amount_cents=1999)
    again = charge(stub, order_id="o1", payment_method="tok_visa", amount_cents=1999)
    # A repeat names the order: whatever else it says, the first result stands.
    different = charge(stub, order_id="o1", payment_method="tok_chargeDeclined", amount_cents=5)
    assert first == again == different
    assert payments_of(stub, "o1") == [first]


def test_repeated_declined_charge_returns_the_same_decline(stub):
    first = charge(stub, order_id="o1", payment_method="tok_chargeDeclined")
    assert charge(stub, order_id="o1", payment_method="tok_visa") == first
    assert first.status == pb.DECLINED


def test_charges_of_different_orders_are_separate_payments(stub):
    one, two = charge(stub, order_id="o1"), charge(stub, order_id="o2")
    assert one.id != two.id
    assert payments_of(stub, "o1") == [one] and payments_of(stub, "o2") == [two]


# Void


def test_void_refunds_an_existing_capture(stub):
    paid = charge(stub, order_id="o1")
    voided = stub.Void(pb.VoidRequest(order_id="o1"), timeout=10).payments
    assert [(p.id, p.status) for p in voided] == [(paid.id, pb.REFUNDED)]
    assert stub.GetPayment(pb.GetPaymentRequest(payment_id=paid.id), timeout=10).status == pb.REFUNDED


def test_charge_after_void_is_refused_as_order_voided(stub):
    assert list(stub.Void(pb.VoidRequest(order_id="o1"), timeout=10).payments) == []
    error = from_rpc_error(
        error_of(
            stub.Charge,
            pb.ChargeRequest(order_id="o1", amount_cents=100, currency="USD", payment_method="tok_visa"),
        )
    )
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_VOIDED")
    assert error.metadata == {"order_id": "o1"}
    assert payments_of(stub, "o1") == []


def test_charge_after_a_void_that_refunded_is_refused_and_charges_nothing_new(stub):
    paid = charge(stub, order_id="o1")
    stub.Void(pb.VoidRequest(order_id="o1"), timeout=10)
    error = from_rpc_error(
        error_of(
            stub.Charge,
            pb.ChargeRequest(order_id="o1", amount_cents=100, currency="USD", payment_method="tok_visa"),
        )
    )
    assert error.reason == "ORDER_VOIDED"
    assert [(p.id, p.status) for p in payments_of(stub, "o1")] == [(paid.id, pb.REFUNDED)]


def test_repeated_void_changes_state_once(stub):
    charge(stub, order_id="o1")
    first = stub.Void(pb.VoidRequest(order_id="o1"), timeout=10)
    for _ in range(3):
        assert stub.Void(pb.VoidRequest(order_id="o1"), timeout=10) == first
    assert len(first.payments) == 1


def test_void_of_a_declined_payment_keeps_it_declined(stub):
    declined = charge(stub, order_id="o1", payment_method="tok_insufficientFunds")
    assert list(stub.Void(pb.VoidRequest(order_id="o1"), timeout=10).payments) == [declined]


def test_void_needs_a_valid_order_id(stub):
    for order_id in ("", "no spaces"):
        error = from_rpc_error(error_of(stub.Void, pb.VoidRequest(order_id=order_id)))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in error.violations] == ["order_id"]


# Refund


def test_refund_moves_a_capture_to_refunded(stub):
    paid = charge(stub, order_id="o1")
    refunded = stub.Refund(pb.RefundRequest(order_id="o1"), timeout=10)
    assert (refunded.id, refunded.status, refunded.amount_cents) == (paid.id, pb.REFUNDED, paid.amount_cents)
    assert refunded.created_at == paid.created_at
    assert refunded.updated_at.ToDatetime() >= paid.updated_at.ToDatetime()


def test_repeated_refund_returns_the_refunded_payment_unchanged(stub):
    charge(stub, order_id="o1")
    first = stub.Refund(pb.RefundRequest(order_id="o1"), timeout=10)
    for _ in range(3):
        assert stub.Refund(pb.RefundRequest(order_id="o1"), timeout=10) == first
    assert payments_of(stub, "o1") == [first]


def test_refund_without_a_payment_is_not_found(stub):
    error = from_rpc_error(error_of(stub.Refund, pb.RefundRequest(order_id="o1")))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert error.metadata["order_id"] == "o1"


def test_refund_of_a_voided_order_that_never_charged_is_not_found(stub):
    stub.Void(pb.VoidRequest(order_id="o1"), timeout=10)
    assert (
        from_rpc_error(error_of(stub.Refund, pb.RefundRequest(order_id="o1"))).code
        == grpc.StatusCode.NOT_FOUND
    )


def test_refund_of_a_declined_payment_is_not_refundable(stub):
    declined = charge(stub, order_id="o1", payment_method="tok_chargeDeclined")
    error = from_rpc_error(error_of(stub.Refund, pb.RefundRequest(order_id="o1")))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_REFUNDABLE")
    assert error.metadata == {"order_id": "o1", "payment_id": declined.id}
    assert payments_of(stub, "o1") == [declined]


def test_refund_after_void_returns_the_payment_the_void_refunded(stub):
    charge(stub, order_id="o1")
    voided = stub.Void(pb.VoidRequest(order_id="o1"), timeout=10).payments
    assert stub.Refund(pb.RefundRequest(order_id="o1"), timeout=10) == voided[0]


def test_refund_needs_a_valid_order_id(stub):
    error = from_rpc_error(error_of(stub.Refund, pb.RefundRequest(order_id="")))
    assert [f for f, _ in error.violations] == ["order_id"]


# GetPayment and ListPayments


def test_get_payment_of_an_unknown_id_is_not_found(stub):
    error = from_rpc_error(
        error_of(stub.GetPayment, pb.GetPaymentRequest(payment_id="pay_000000000000000000000000"))
    )
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert error.metadata["payment_id"] == "pay_000000000000000000000000"


@pytest.mark.parametrize("payment_id", ["", "pay 1", "../pay"])
def test_get_payment_needs_a_valid_id(stub, payment_id):
    error = from_rpc_error(error_of(stub.GetPayment, pb.GetPaymentRequest(payment_id=payment_id)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in error.violations] == ["payment_id"]


def test_list_payments_of_an_order_without_any_is_empty(stub):
    charge(stub, order_id="other")
    assert payments_of(stub, "o1") == []


@pytest.mark.parametrize("order_id", ["", "bad/id", "o1\n"])
def test_list_payments_needs_a_valid_order_id(stub, order_id):
    error = from_rpc_error(error_of(stub.ListPayments, pb.ListPaymentsRequest(order_id=order_id)))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert [f for f, _ in error.violations] == ["order_id"]


def test_payments_survive_a_restart(database_url):
    url = database_url("payment")
    first = harness.run_payment(url)
    paid = charge(payment_pb2_grpc.PaymentServiceStub(first.channel()), order_id="o1")
    first.stop()
    second = harness.run_payment(url)
    try:
        stub = payment_pb2_grpc.PaymentServiceStub(second.channel())
        assert payments_of(stub, "o1") == [paid]
        assert charge(stub, order_id="o1") == paid
    finally:
        second.stop()
