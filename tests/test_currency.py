"""A currency is three capital letters, exactly, wherever one is accepted:
"USD\\n" (which re.match's $ let through), "usd" and "US" are refused, and
nothing is stored or charged."""

import json

import grpc
import pytest

from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc
from tests import harness
from tests.test_gateway_support import admin_headers, assert_error, detail_of

BAD_CURRENCIES = ["USD\n", "usd", "US", "USDX", " USD"]


@pytest.mark.parametrize("currency", BAD_CURRENCIES)
def test_a_product_with_a_bad_currency_is_refused_and_not_stored(client, currency):
    before = client.get("/inventory/P001").get_json()
    answer = client.put(
        "/inventory/P001", json={"currency": currency, "price_cents": 1}, headers=admin_headers()
    )
    error = assert_error(answer, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    violations = detail_of(error, "google.rpc.BadRequest")["field_violations"]
    assert [v["field"] for v in violations] == ["currency"]
    assert json.dumps(currency) not in answer.get_data(as_text=True)  # never echoed
    assert client.get("/inventory/P001").get_json() == before


@pytest.mark.parametrize("currency", BAD_CURRENCIES)
def test_a_charge_in_a_bad_currency_is_refused_and_nothing_is_charged(sqlite_url, currency):
    payment = harness.run_payment(sqlite_url("payment"))
    try:
        stub = payment_pb2_grpc.PaymentServiceStub(payment.channel())
        with pytest.raises(grpc.RpcError) as refused:
            stub.Charge(
                pb.ChargeRequest(order_id="o1", amount_cents=100, currency=currency, payment_method="tok_visa"),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not stub.ListPayments(pb.ListPaymentsRequest(order_id="o1"), timeout=10).payments
    finally:
        payment.stop()
