"""payment_svc.charges on its own: Luhn, brand detection, expiry, CVC,
tokenization and what the simulated processor answers; with the field rules
the payment proto declares on a card and a charge, checked first as the
service's interceptor checks them."""

import dataclasses
import datetime as dt
import re

import pytest

from payment_svc import charges
from plumbing import field_rules
from plumbing.errors import ShopError
from shop.payment.v1 import payment_pb2 as pb

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)


def violations_of(number="4242424242424242", exp_month=12, exp_year=2030, cvc="123", now=NOW):
    """What the payment service refuses a card with: the declared field rules
    first, then what tokenize checks across fields."""
    card = pb.Card(number=number, exp_month=exp_month, exp_year=exp_year, cvc=cvc)
    with pytest.raises(ShopError) as info:
        field_rules.check_request(pb.CreatePaymentMethodRequest(card=card))
        charges.tokenize(number, exp_month, exp_year, cvc, now)
    return info.value


@pytest.mark.parametrize(
    "number",
    ["4242424242424242", "5555555555554444", "378282246310005", "6011111111111117", "79927398713", "0"],
)
def test_luhn_accepts_valid_numbers(number):
    assert charges.luhn_valid(number)


@pytest.mark.parametrize("number", ["4242424242424241", "5555555555554445", "378282246310006", "79927398710"])
def test_luhn_rejects_a_wrong_check_digit(number):
    assert not charges.luhn_valid(number)


@pytest.mark.parametrize(
    "number, brand",
    [
        ("4242424242424242", "visa"),
        ("4000000000000002", "visa"),
        ("5105105105105100", "mastercard"),
        ("5555555555554444", "mastercard"),
        ("2221000000000009", "mastercard"),
        ("2720990000000000", "mastercard"),
        ("378282246310005", "amex"),
        ("341111111111111", "amex"),
        ("6011111111111117", "discover"),
        ("6500000000000002", "discover"),
        ("6445644564456445", "discover"),
        # Stripe's test cards of the other brands it names.
        ("3056930009020004", "diners"),
        ("36227206271667", "diners"),
        ("3566002020360505", "jcb"),
        ("3530111333300000", "jcb"),
        ("6200000000000005", "unionpay"),
        ("5000000000000009", "unknown"),
        ("5600000000000000", "unknown"),
        ("2220990000000000", "unknown"),
        ("2721000000000000", "unknown"),
        ("3527000000000000", "unknown"),
        ("3590000000000000", "unknown"),
        ("3060000000000000", "unknown"),
        ("6012000000000000", "unknown"),
    ],
)
def test_brand_is_detected_from_the_prefix(number, brand):
    assert charges.card_brand(number) == brand


def test_a_card_is_good_through_the_end_of_its_expiry_month_utc():
    last_moment = dt.datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert not charges.is_expired(6, 2026, last_moment)
    assert charges.is_expired(6, 2026, dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
    # 01:00 on 1 July in UTC+2 is still June in UTC.
    assert not charges.is_expired(
        6, 2026, dt.datetime(2026, 7, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    )
    assert charges.is_expired(12, 2025, NOW)
    assert not charges.is_expired(1, 2027, NOW)


def test_tokenize_keeps_brand_last4_expiry_and_a_random_id():
    method = charges.tokenize("4242 4242 4242 4242", 12, 2030, "123", NOW)
    assert (method.card_brand, method.card_last4, method.exp_month, method.exp_year) == (
        "visa",
        "4242",
        12,
        2030,
    )
    assert re.fullmatch(r"pm_[0-9a-f]{24}", method.id)
    assert method.processor_outcome == charges.APPROVE
    assert charges.tokenize("4242424242424242", 12, 2030, "123", NOW).id != method.id
    # Nothing else of the card is kept, so nothing else can leak.
    assert [f.name for f in dataclasses.fields(method)] == [
        "id",
        "card_brand",
        "card_last4",
        "exp_month",
        "exp_year",
        "processor_outcome",
        "customer_id",
    ]


def test_tokenize_decides_the_processor_behaviour_of_the_decline_cards():
    assert (
        charges.tokenize("4000000000000002", 1, 2030, "123", NOW).processor_outcome == charges.CARD_DECLINED
    )
    assert (
        charges.tokenize("4000000000009995", 1, 2030, "123", NOW).processor_outcome
        == charges.INSUFFICIENT_FUNDS
    )


def test_tokenize_accepts_a_card_in_its_expiry_month():
    assert charges.tokenize("4242424242424242", 6, 2026, "123", NOW).exp_month == 6


def test_amex_needs_a_four_digit_cvc():
    assert charges.tokenize("378282246310005", 12, 2030, "1234", NOW).card_brand == "amex"
    error = violations_of("378282246310005", cvc="123")
    assert error.violations == [("card.cvc", "must be 4 digits")]


@pytest.mark.parametrize("cvc", ["12", "1234", "12a", "１２３", ""])
def test_other_brands_need_a_three_digit_cvc(cvc):
    assert [field for field, _ in violations_of(cvc=cvc).violations] == ["card.cvc"]


@pytest.mark.parametrize(
    "number",
    [
        "",
        "4242-4242-4242-4242",
        "４２４２４２４２４２４２４２４２",  # full-width digits pass str.isdigit(), not the card check
        "42424242424",  # 11 digits
        "42424242424242424242",  # 20 digits
        "4242424242424241",  # Luhn fails
    ],
)
def test_bad_numbers_are_refused_without_quoting_them(number):
    error = violations_of(number=number)
    assert error.code.name == "INVALID_ARGUMENT"
    assert [field for field, _ in error.violations] == ["card.number"]
    if number:
        assert number not in str(error) and number not in repr(error)


@pytest.mark.parametrize(
    "exp_month, exp_year, field",
    [
        (0, 2030, "card.exp_month"),
        (13, 2030, "card.exp_month"),
        (12, 30, "card.exp_year"),
        (12, 10000, "card.exp_year"),
    ],
)
def test_bad_expiry_fields_are_refused(exp_month, exp_year, field):
    assert [f for f, _ in violations_of(exp_month=exp_month, exp_year=exp_year).violations] == [field]


def test_an_expired_card_is_refused_on_the_field_that_is_past():
    assert [f for f, _ in violations_of(exp_month=12, exp_year=2025).violations] == ["card.exp_year"]
    assert [f for f, _ in violations_of(exp_month=5, exp_year=2026).violations] == ["card.exp_month"]


def test_every_broken_rule_of_a_card_is_reported_at_once():
    error = violations_of(number="4242-4242", exp_month=13, exp_year=99, cvc="1")
    assert [f for f, _ in error.violations] == ["card.number", "card.exp_month", "card.exp_year", "card.cvc"]


def test_every_problem_tokenize_finds_is_reported_at_once():
    # An amex prefix with a bad check digit, and a CVC of 3 digits: amex's has 4.
    error = violations_of(number="378282246310006", cvc="987")
    assert [f for f, _ in error.violations] == ["card.number", "card.cvc"]


def test_test_tokens_match_the_documented_cards():
    tokens = charges.TEST_TOKENS
    assert {name: (t.card_brand, t.card_last4, t.processor_outcome) for name, t in tokens.items()} == {
        "tok_visa": ("visa", "4242", "approve"),
        "tok_mastercard": ("mastercard", "4444", "approve"),
        "tok_chargeDeclined": ("visa", "0002", "card_declined"),
        "tok_insufficientFunds": ("visa", "9995", "insufficient_funds"),
    }


def test_authorize_captures_declines_and_declines_an_expired_card():
    approve = charges.tokenize("4242424242424242", 6, 2026, "123", NOW)
    assert charges.authorize(approve, NOW) == charges.Authorization("CAPTURED", "")
    assert charges.authorize(approve, dt.datetime(2026, 7, 1, tzinfo=dt.UTC)) == charges.Authorization(
        "DECLINED", "expired_card"
    )
    declined = charges.tokenize("4000000000000002", 6, 2030, "123", NOW)
    assert charges.authorize(declined, NOW) == charges.Authorization("DECLINED", "card_declined")
    far_future = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
    assert charges.authorize(charges.TEST_TOKENS["tok_visa"], far_future).status == "CAPTURED"


@pytest.mark.parametrize(
    "amount_cents, currency, fields",
    [
        (1, "USD", []),
        (10**12, "EUR", []),
        (0, "USD", ["amount_cents"]),
        (-5, "USD", ["amount_cents"]),
        (10**15 + 1, "USD", ["amount_cents"]),
        (100, "usd", ["currency"]),
        (100, "USD\n", ["currency"]),
        (100, "", ["currency"]),
    ],
)
def test_charge_amount_and_currency_rules(amount_cents, currency, fields):
    request = pb.ChargeRequest(order_id="o1", amount_cents=amount_cents, currency=currency, payment_method="tok_visa")
    assert [f for f, _ in field_rules.violations_of(request)] == fields


def test_payment_ids_are_pay_and_24_hex():
    assert re.fullmatch(r"pay_[0-9a-f]{24}", charges.new_payment_id())
