"""The PCI boundary: a full card number or CVC never reaches a log line, a
database row or the database files, whatever path the card takes (approved,
declined, refused as invalid)."""

import io
import json
import logging
import pathlib
import re

import grpc
import pytest
import sqlalchemy as sa

from plumbing.logs import JsonFormatter
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc
from tests import harness

# (number, cvc): the CVCs are unlike any other value the service handles
# (amounts, expiry, last4), so finding one quoted anywhere means it leaked.
CARDS = [
    ("4242424242424242", "731"),
    ("5555555555554444", "846"),
    ("378282246310005", "5927"),
    ("4000000000000002", "318"),
    ("4000000000009995", "629"),
]
# Refused cards must not leak either: a bad check digit, and a good number
# with a CVC of the wrong length.
REFUSED = [("4242424242424241", "417"), ("5555555555554444", "93")]
EXP_MONTH, EXP_YEAR = 11, 2099


def spaced(number: str) -> str:
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def exercise_every_path(stub) -> list[pb.PaymentMethod]:
    """Tokenize and charge each card (one with spaces), refund and void,
    read it all back, and try the refused cards."""
    methods = []
    for n, (number, cvc) in enumerate(CARDS):
        card = pb.Card(
            number=spaced(number) if n == 0 else number, exp_month=EXP_MONTH, exp_year=EXP_YEAR, cvc=cvc
        )
        method = stub.CreatePaymentMethod(pb.CreatePaymentMethodRequest(card=card), timeout=10)
        methods.append(method)
        order_id = f"order-{n}"
        paid = stub.Charge(
            pb.ChargeRequest(order_id=order_id, amount_cents=1999, currency="USD", payment_method=method.id),
            timeout=10,
        )
        stub.GetPayment(pb.GetPaymentRequest(payment_id=paid.id), timeout=10)
        if paid.status == pb.CAPTURED:
            stub.Refund(pb.RefundRequest(order_id=order_id), timeout=10)
        stub.Void(pb.VoidRequest(order_id=order_id), timeout=10)
        stub.ListPayments(pb.ListPaymentsRequest(order_id=order_id), timeout=10)
    for number, cvc in REFUSED:
        card = pb.Card(number=number, exp_month=EXP_MONTH, exp_year=EXP_YEAR, cvc=cvc)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreatePaymentMethod(pb.CreatePaymentMethodRequest(card=card), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A card number pasted where a payment method id belongs.
    with pytest.raises(grpc.RpcError):
        stub.Charge(
            pb.ChargeRequest(order_id="pasted", amount_cents=100, currency="USD", payment_method=CARDS[0][0]),
            timeout=10,
        )
    return methods


def card_secrets() -> list[str]:
    numbers = {n for n, _ in CARDS + REFUSED}
    return sorted(numbers | {spaced(n) for n in numbers})


def cvcs() -> list[str]:
    return [c for _, c in CARDS + REFUSED]


def test_card_numbers_and_cvcs_never_reach_the_logs(database_url, capfd):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("payment"))
    root, sql = logging.getLogger(), logging.getLogger("sqlalchemy")
    saved_levels = root.level, sql.level
    root.addHandler(handler)
    # SQLAlchemy quiets its own logger to WARNING unless told otherwise.
    root.setLevel(logging.DEBUG)
    sql.setLevel(logging.DEBUG)
    try:
        # Started after DEBUG is on, so every statement is logged with its
        # parameters (and SQLAlchemy's own lines: its pool, its migrations).
        running = harness.run_payment(database_url("payment"))
        try:
            exercise_every_path(payment_pb2_grpc.PaymentServiceStub(running.channel()))
        finally:
            running.stop()
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_levels[0])
        sql.setLevel(saved_levels[1])
    captured = capfd.readouterr()
    records = stream.getvalue()
    logs = records + captured.out + captured.err
    lines = [json.loads(line) for line in records.splitlines() if line.startswith("{")]
    # The capture saw the RPCs and the SQL with its parameters, so a leak would show.
    assert {"CreatePaymentMethod", "Charge"} <= {line.get("grpc_method") for line in lines}
    assert "INSERT INTO payment_methods" in logs
    for secret in card_secrets():
        assert secret not in logs
    for cvc in cvcs():
        # Quoted: a JSON or proto string value, or a Python repr in SQL parameters.
        assert f'"{cvc}"' not in logs and f"'{cvc}'" not in logs
        # Bare, in our own log records; not part of a longer number, an id, a
        # time or a duration. (Not in the raw stderr, where thread ids are bare numbers.)
        assert not re.search(rf"(?<![\w.:]){cvc}(?![\w.])", records)


def test_card_numbers_and_cvcs_are_stored_in_no_row(database_url):
    running = harness.run_payment(database_url("payment"))
    try:
        methods = exercise_every_path(payment_pb2_grpc.PaymentServiceStub(running.channel()))
        values = []
        with running.engine.connect() as conn:
            tables = sa.MetaData()
            tables.reflect(conn)
            for table in tables.tables.values():
                for row in conn.execute(sa.select(table)):
                    values += [str(v) for v in row]
    finally:
        running.stop()
    assert {m.id for m in methods} <= set(values)
    for secret in card_secrets():
        assert not [v for v in values if secret in v]
    for cvc in cvcs():
        assert cvc not in values


def test_card_numbers_never_reach_the_sqlite_files(sqlite_url):
    url = sqlite_url("payment")
    path = pathlib.Path(url.removeprefix("sqlite:///"))
    running = harness.run_payment(url)

    def database_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))

    try:
        methods = exercise_every_path(payment_pb2_grpc.PaymentServiceStub(running.channel()))
        # While running, the new rows live in the -wal file.
        while_running = database_bytes()
    finally:
        running.stop()
    after_checkpoint = database_bytes()
    for raw in (while_running, after_checkpoint):
        # The files read are where the data is: every payment method id is in them.
        assert all(m.id.encode() in raw for m in methods)
        for secret in card_secrets():
            assert secret.encode() not in raw
        assert b"cvc" not in raw.lower()
