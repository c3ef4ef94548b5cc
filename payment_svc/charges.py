"""Card rules and the simulated card processor, with no gRPC and no SQL: what
a valid card is (Luhn, expiry, CVC), its brand, tokenization, the test tokens
and cards, and what a charge comes to.

A card number or CVC goes into tokenize() and nothing of it comes out but the
brand, the last four digits and the processor's behaviour for that card; no
message here ever quotes either.
"""

import datetime as dt
import secrets
from dataclasses import dataclass

from plumbing.messages import names_of
from plumbing.validation import Violations
from shop.payment.v1 import payment_pb2

# The proto's payment statuses (CAPTURED, DECLINED, REFUNDED), by name.
PaymentStatus = names_of(payment_pb2.PaymentStatus, "PaymentStatus")

# How the simulated processor treats a card, decided when it is tokenized.
APPROVE = "approve"
CARD_DECLINED = "card_declined"
INSUFFICIENT_FUNDS = "insufficient_funds"
# A decline reason decided at charge time, from the expiry kept with the card.
EXPIRED_CARD = "expired_card"

# Stripe's test cards that decline; any other valid card is approved.
DECLINING_CARDS = {
    "4000000000000002": CARD_DECLINED,
    "4000000000009995": INSUFFICIENT_FUNDS,
}

TOKEN_PREFIX = "tok_"
PAYMENT_METHOD_PREFIX = "pm_"
PAYMENT_PREFIX = "pay_"



@dataclass(frozen=True)
class PaymentMethod:
    """A tokenized card, or a test token. Never the number or the CVC."""

    id: str
    card_brand: str
    card_last4: str
    # None for a test token, which never expires.
    exp_month: int | None
    exp_year: int | None
    # APPROVE, CARD_DECLINED or INSUFFICIENT_FUNDS.
    processor_outcome: str
    # The customer who made it (AUTH=jwt), the only one who may see or
    # charge it; None: made without an identity (AUTH=off), or a test token.
    customer_id: str | None = None


@dataclass(frozen=True)
class Authorization:
    """The processor's answer to one charge."""

    status: PaymentStatus  # CAPTURED or DECLINED
    decline_reason: str  # empty unless DECLINED


@dataclass(frozen=True)
class Payment:
    id: str
    order_id: str
    amount_cents: int
    currency: str
    status: PaymentStatus
    card_brand: str
    card_last4: str
    decline_reason: str
    created_at: dt.datetime
    updated_at: dt.datetime
    # The order's owner; None for payments recorded before owners were kept.
    customer_id: str | None = None


TEST_TOKENS = {
    method.id: method
    for method in (
        PaymentMethod("tok_visa", "visa", "4242", None, None, APPROVE),
        PaymentMethod("tok_mastercard", "mastercard", "4444", None, None, APPROVE),
        PaymentMethod("tok_chargeDeclined", "visa", "0002", None, None, CARD_DECLINED),
        PaymentMethod("tok_insufficientFunds", "visa", "9995", None, None, INSUFFICIENT_FUNDS),
    )
}


def new_payment_method_id() -> str:
    return PAYMENT_METHOD_PREFIX + secrets.token_hex(12)


def new_payment_id() -> str:
    return PAYMENT_PREFIX + secrets.token_hex(12)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of ASCII digits."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def card_brand(digits: str) -> str:
    """The brand from the number's prefix, named as Stripe names it: visa,
    mastercard, amex, discover, diners, jcb, unionpay, or unknown."""
    if digits.startswith("4"):
        return "visa"
    if digits[:2] in ("34", "37"):
        return "amex"
    if "51" <= digits[:2] <= "55" or "2221" <= digits[:4] <= "2720":
        return "mastercard"
    if digits.startswith(("6011", "65")) or "644" <= digits[:3] <= "649":
        return "discover"
    if "300" <= digits[:3] <= "305" or digits[:3] == "309" or digits[:2] in ("36", "38", "39"):
        return "diners"
    if "3528" <= digits[:4] <= "3589":
        return "jcb"
    if digits.startswith("62"):
        return "unionpay"
    return "unknown"


def is_expired(exp_month: int, exp_year: int, now: dt.datetime) -> bool:
    """A card is good through the last moment of its expiry month, UTC."""
    now = now.astimezone(dt.UTC)
    return (exp_year, exp_month) < (now.year, now.month)


def tokenize(
    number: str, exp_month: int, exp_year: int, cvc: str, now: dt.datetime, customer_id: str | None = None
) -> PaymentMethod:
    """Check a card and keep only what may be kept, as a method of
    `customer_id`. The card has passed the field rules of its proto (12 to 19
    digits, a month and a four-digit year, a CVC of 3 or 4 digits); this
    checks what needs more than one field: the checksum, the expiry, the
    CVC's length for the brand. Every problem is reported at once, as field
    violations that never quote the number or the CVC."""
    violations = Violations()
    digits = number.replace(" ", "")
    if not luhn_valid(digits):
        violations.add("card.number", "is not a valid card number (checksum failed)")
    brand = card_brand(digits)
    if is_expired(exp_month, exp_year, now):
        if exp_year < now.astimezone(dt.UTC).year:
            violations.add("card.exp_year", "the card has expired")
        else:
            violations.add("card.exp_month", "the card has expired")
    cvc_length = 4 if brand == "amex" else 3
    if len(cvc) != cvc_length:
        violations.add("card.cvc", f"must be {cvc_length} digits")

    violations.raise_if_any()
    return PaymentMethod(
        id=new_payment_method_id(),
        card_brand=brand,
        card_last4=digits[-4:],
        exp_month=exp_month,
        exp_year=exp_year,
        processor_outcome=DECLINING_CARDS.get(digits, APPROVE),
        customer_id=customer_id,
    )


def authorize(method: PaymentMethod, now: dt.datetime) -> Authorization:
    """What the simulated processor answers to a charge on this method now."""
    if method.exp_month is not None and is_expired(method.exp_month, method.exp_year, now):
        return Authorization(PaymentStatus.DECLINED, EXPIRED_CARD)
    if method.processor_outcome == APPROVE:
        return Authorization(PaymentStatus.CAPTURED, "")
    return Authorization(PaymentStatus.DECLINED, method.processor_outcome)


def usable_for(method: PaymentMethod, customer_id: str, owner_only: bool) -> bool:
    """Whether an order of `customer_id` may be charged on `method`. A test
    token is anyone's. An order placed with an identity (its customer, or an
    admin for them) charges only methods its customer made; without one
    (AUTH=off) there is no such rule."""
    return method.id in TEST_TOKENS or not owner_only or method.customer_id == customer_id
