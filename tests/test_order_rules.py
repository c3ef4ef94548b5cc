"""The order domain's rules, without servers: payment methods that are card
numbers (declared on CreateOrderRequest), idempotency keys, request fingerprints, page tokens, upstream errors,
and the order service's configuration."""

import datetime as dt
import json
from base64 import urlsafe_b64encode

import grpc
import pytest

from order_svc import checks, failures, model
from plumbing import field_rules
from plumbing.config import ConfigError, OrderConfig
from plumbing.errors import ShopError
from plumbing.validation import Violations
from shop.order.v1 import order_pb2 as pb


def payment_method_violations(value):
    request = pb.CreateOrderRequest(customer_id="C1", product_id="P1", quantity=1, payment_method=value)
    return field_rules.violations_of(request)


@pytest.mark.parametrize(
    "value", ["4242424242424242", "4242 4242 4242 4242", "4242-4242-4242-4242", "378282246310005", "424242424242"]
)
def test_a_card_number_is_not_a_payment_method(value):
    ((field, description),) = payment_method_violations(value)
    assert field == "payment_method" and "POST /payment_methods" in description
    assert value.replace(" ", "").replace("-", "")[-4:] not in description


@pytest.mark.parametrize(
    "value",
    ["tok_visa", "tok_chargeDeclined", "pm_0123456789abcdef01234567", "pm_999999999999999999999999", "pm_0123", "pm_doesnotexist", ""],
)
def test_test_tokens_payment_method_ids_and_none_pass(value):
    # A pm_ id never issued is the payment service's to refuse, after the order is stored.
    assert payment_method_violations(value) == []


@pytest.mark.parametrize(
    "value",
    [
        "12345678901",
        "12345678901234567890",
        "PM_0123456789ABCDEF01234567",
        "visa",
        "tok_",
        "pm_",
        "pm_a b",
        # Twelve digits or more outside an issued id's shape: a card number, perhaps.
        "pm_4242424242424242",
        "pm_4242-4242-4242-4242",
        "tok_4242424242424242",
    ],
)
def test_anything_else_is_refused_naming_the_forms_a_payment_method_takes(value):
    ((field, description),) = payment_method_violations(value)
    assert field == "payment_method" and "tok_" in description and "pm_" in description


@pytest.mark.parametrize("key, valid", [("k", True), ("x" * 255, True), ("a b~!", True), ("", False), ("x" * 256, False), ("é", False), ("a\tb", False)])
def test_idempotency_key_is_1_to_255_printable_ascii_characters(key, valid):
    violations = Violations()
    checks.check_idempotency_key(violations, key)
    assert (violations.items == []) is valid


def test_no_idempotency_key_is_no_key():
    violations = Violations()
    assert checks.check_idempotency_key(violations, None) == ""
    assert violations.items == []


def test_fingerprint_ignores_item_order_but_not_quantities_or_method():
    base = model.OrderRequest("C1", (("P1", 1), ("P2", 2)), "tok_visa", "k")
    assert base.fingerprint() == model.OrderRequest("C1", (("P2", 2), ("P1", 1)), "tok_visa", "other").fingerprint()
    assert base.fingerprint() != model.OrderRequest("C1", (("P1", 1), ("P2", 3)), "tok_visa", "k").fingerprint()
    assert base.fingerprint() != model.OrderRequest("C1", (("P1", 1), ("P2", 2)), "tok_mastercard", "k").fingerprint()
    assert base.fingerprint() != model.OrderRequest("C2", (("P1", 1), ("P2", 2)), "tok_visa", "k").fingerprint()


def test_page_token_round_trips_its_cursor():
    cursor = model.Cursor(dt.datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=dt.UTC), 42, "C1")
    token = checks.encode_page_token(cursor)
    assert checks.decode_page_token(token) == cursor
    assert "=" not in token


def forged_token(created_at: str, seq) -> str:
    raw = json.dumps({"t": created_at, "s": seq, "c": ""}).encode()
    return urlsafe_b64encode(raw).decode().rstrip("=")


# Well formed, but no list issues them: a seq past 64 bits, or not positive;
# a time that leaves the calendar once in UTC.
FORGED_TOKENS = [
    forged_token("2026-11-30T05:24:53+00:00", 2**63),
    forged_token("2026-11-30T05:24:53+00:00", 0),
    forged_token("2026-11-30T05:24:53+00:00", -1),
    forged_token("0001-01-01T00:00:00+05:00", 1),
    forged_token("9999-12-31T23:59:59-05:00", 1),
]


@pytest.mark.parametrize(
    "token", ["", "x", "!!!", "e30", "W10", "eyJ0IjoiMjAyNi0xMS0yMVQxMDowMDowMCIsInMiOjEsImMiOiIifQ", *FORGED_TOKENS]
)
def test_anything_but_an_issued_token_is_refused(token):
    assert checks.decode_page_token(token) is None


def test_the_largest_seq_a_database_holds_is_a_token_still():
    token = forged_token("2026-11-30T05:24:53+00:00", checks.MAX_SEQ)
    assert checks.decode_page_token(token).seq == 2**63 - 1


@pytest.mark.parametrize("page_size, valid, size", [(0, True, 50), (1, True, 1), (200, True, 200), (201, False, None), (-1, False, None)])
def test_page_size_is_50_by_default_and_at_most_200(page_size, valid, size):
    # The bounds are declared on ListOrdersRequest.page_size; the default is the order service's.
    assert (field_rules.violations_of(pb.ListOrdersRequest(page_size=page_size)) == []) is valid
    if valid:
        violations = Violations()
        got, _ = checks.check_page(violations, "", page_size, "")
        assert violations.items == [] and got == size


@pytest.mark.parametrize(
    "code, expected, reason",
    [
        (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
        (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    ],
)
def test_an_upstream_without_a_sure_answer_keeps_its_code_and_names_the_order(code, expected, reason):
    error = failures.upstream_unavailable("payment", ShopError(code, "boom"), "ord_1", "failed")
    assert (error.code, error.reason, error.metadata) == (expected, reason, {"order_id": "ord_1", "service": "payment"})
    assert "ord_1" in error.message


def test_an_order_recovery_had_to_fail_answers_the_503_row_naming_the_order():
    error = failures.interrupted("ord_1")
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    assert error.metadata["order_id"] == "ord_1"


def test_an_upstream_refusal_keeps_its_reason_and_details_and_names_the_order():
    refusal = ShopError(grpc.StatusCode.FAILED_PRECONDITION, "P1: 5 requested, 2 available", "OUT_OF_STOCK", {"product_id": "P1"})
    error = failures.with_order_id(refusal, "ord_1")
    assert (error.code, error.reason, error.message) == (refusal.code, "OUT_OF_STOCK", refusal.message)
    assert error.metadata == {"product_id": "P1", "order_id": "ord_1"}


def test_a_stored_failure_gives_back_the_very_same_error():
    error = ShopError(grpc.StatusCode.INVALID_ARGUMENT, "bad", "INVALID_ARGUMENT", {"order_id": "o"}, [("f", "d")])
    again = model.Failure.of(error).error()
    assert (again.code, again.message, again.reason, again.metadata, again.violations) == (
        error.code,
        error.message,
        error.reason,
        error.metadata,
        error.violations,
    )


def test_order_config_reads_the_environment(monkeypatch):
    monkeypatch.setenv("INVENTORY_ADDR", "inventory:1")
    monkeypatch.setenv("PAYMENT_ADDR", "dns:///payment:2")
    monkeypatch.setenv("DOWNSTREAM_TIMEOUT_S", "2.5")
    monkeypatch.setenv("RECOVERY_INTERVAL_S", "7")
    monkeypatch.delenv("RECOVERY_AFTER_S", raising=False)
    config = OrderConfig.from_env()
    assert config == OrderConfig("inventory:1", "dns:///payment:2", 2.5, 7.0, 2.5)


def test_order_config_defaults_run_locally(monkeypatch):
    for name in ("INVENTORY_ADDR", "PAYMENT_ADDR", "DOWNSTREAM_TIMEOUT_S", "RECOVERY_INTERVAL_S", "RECOVERY_AFTER_S"):
        monkeypatch.delenv(name, raising=False)
    config = OrderConfig.from_env()
    assert config == OrderConfig("localhost:50051", "localhost:50052", 5.0, 5.0, 5.0)


def test_order_config_refuses_a_bad_interval(monkeypatch):
    monkeypatch.setenv("RECOVERY_INTERVAL_S", "soon")
    with pytest.raises(ConfigError):
        OrderConfig.from_env()
