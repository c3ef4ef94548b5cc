"""Every public route through Flask's test client, against the real inventory
and payment services and a scripted order service, in-process."""

import datetime as dt
import re

import pytest

from shop.payment.v1 import payment_pb2 as payment_pb
from shop.payment.v1 import payment_pb2_grpc
from tests.test_gateway_support import (
    admin_headers,
    assert_error,
    detail_of,
    make_client,
)

NEXT_YEAR = dt.datetime.now(dt.UTC).year + 1
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


# Inventory


def test_list_inventory_returns_the_catalog_with_money_as_numbers(client):
    response = client.get("/inventory")
    assert response.status_code == 200
    products = response.get_json()["products"]
    assert len(products) >= 10
    first = products[0]
    assert set(first) == {"product_id", "name", "price_cents", "currency", "available"}
    assert type(first["price_cents"]) is int and type(first["available"]) is int


def test_get_product_answers_the_documented_shape(client):
    response = client.get("/inventory/P001")
    assert response.status_code == 200
    assert response.get_json() == {
        "product_id": "P001",
        "name": "Wireless Mouse",
        "price_cents": 1999,
        "currency": "USD",
        "available": 100,
    }


def test_unknown_product_is_404_not_found(client):
    assert_error(client.get("/inventory/P999"), 404, "NOT_FOUND", "NOT_FOUND")


def test_malformed_product_id_is_400(client):
    error = assert_error(client.get("/inventory/P!01"), 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert detail_of(error, "google.rpc.BadRequest")["field_violations"][0]["field"] == "product_id"


def test_check_availability_takes_items_or_the_flat_form(client):
    with_items = client.post("/inventory/check", json={"items": [{"product_id": "P001", "quantity": 2}]})
    assert with_items.status_code == 200
    assert with_items.get_json() == {
        "available": True,
        "items": [{"product_id": "P001", "quantity": 2, "available": 100, "in_stock": True}],
    }
    flat = client.post("/inventory/check", json={"product_id": "P004", "quantity": 500})
    assert flat.status_code == 200
    assert flat.get_json()["available"] is False


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_the_check_route_answers_other_methods_405_allowing_post(client, method):
    # "check" is no product id (declared in the proto): /inventory/check is POST's alone.
    response = client.open("/inventory/check", method=method, json={"name": "x"}, headers=admin_headers())
    assert_error(response, 405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["Allow"].split(", ")
    assert "GET" not in response.headers["Allow"] and "PUT" not in response.headers["Allow"]


def test_check_is_no_product_id_under_any_route(client):
    adjust = client.post("/inventory/check/adjustments", json={"delta": 1}, headers=admin_headers())
    assert_error(adjust, 404, "NOT_FOUND", "NOT_FOUND")
    # A product whose id only starts or ends with the word is a product like any other.
    assert_error(client.get("/inventory/checks"), 404, "NOT_FOUND", "NOT_FOUND")


def test_admin_upsert_creates_a_product(client):
    body = {"name": "Trackball", "price_cents": 4999, "currency": "USD", "available": 7}
    response = client.put("/inventory/P100", json=body, headers=admin_headers())
    assert response.status_code == 200
    assert response.get_json() == {"product_id": "P100", **body}
    assert client.get("/inventory/P100").get_json()["available"] == 7


def test_admin_adjustment_changes_stock_by_delta(client):
    response = client.post(
        "/inventory/P001/adjustments", json={"delta": 25, "reason": "restock"}, headers=admin_headers()
    )
    assert response.status_code == 200
    assert response.get_json()["available"] == 125


def test_adjustment_below_zero_is_409_out_of_stock_with_the_product(client):
    response = client.post("/inventory/P010/adjustments", json={"delta": -11}, headers=admin_headers())
    error = assert_error(response, 409, "FAILED_PRECONDITION", "OUT_OF_STOCK")
    assert detail_of(error, "google.rpc.ErrorInfo")["metadata"]["product_id"] == "P010"


def test_admin_route_without_token_is_401_with_a_challenge(client):
    response = client.put("/inventory/P001", json={"available": 1})
    assert_error(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/inventory/P001").get_json()["available"] == 100


def test_admin_route_with_wrong_token_is_401(client):
    response = client.post("/inventory/P001/adjustments", json={"delta": 1}, headers=admin_headers("guess"))
    assert_error(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwdw==", "Bearer", "Bearer ", "test-admin-token"])
def test_admin_route_with_malformed_authorization_is_401(client, authorization):
    response = client.put("/inventory/P001", json={"available": 1}, headers={"Authorization": authorization})
    assert_error(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")


def test_admin_routes_answer_403_when_no_admin_token_is_set(backends):
    client = make_client(backends, admin_token="")
    for response in (
        client.put("/inventory/P001", json={"available": 1}, headers=admin_headers("")),
        client.post("/inventory/P001/adjustments", json={"delta": 1}, headers=admin_headers("anything")),
    ):
        assert_error(response, 403, "PERMISSION_DENIED", "PERMISSION_DENIED")


# Payments


def test_create_payment_method_answers_201_with_the_token_and_no_card_number(client):
    card = {"number": "4242424242424242", "exp_month": 12, "exp_year": NEXT_YEAR, "cvc": "123"}
    response = client.post("/payment_methods", json={"card": card})
    assert response.status_code == 201
    body = response.get_json()
    assert body["id"].startswith("pm_")
    assert (body["card_brand"], body["card_last4"]) == ("visa", "4242")
    assert "4242424242424242" not in response.get_data(as_text=True)


def test_a_created_payment_method_has_a_location_that_answers_it(client):
    card = {"number": "4242424242424242", "exp_month": 12, "exp_year": NEXT_YEAR, "cvc": "123"}
    response = client.post("/payment_methods", json={"card": card})
    assert response.status_code == 201
    assert response.headers["Location"] == f"/payment_methods/{response.get_json()['id']}"
    again = client.get(response.headers["Location"])
    assert again.status_code == 200
    assert again.get_json() == response.get_json()


def test_create_payment_method_with_a_bad_card_is_400(client):
    card = {"number": "4242424242424241", "exp_month": 12, "exp_year": NEXT_YEAR, "cvc": "123"}
    response = client.post("/payment_methods", json={"card": card})
    assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert "4242424242424241" not in response.get_data(as_text=True)


@pytest.fixture
def charged(backends):
    """A payment made the way the order saga makes one (Charge is not public)."""
    import grpc

    with grpc.insecure_channel(backends.payment) as channel:
        stub = payment_pb2_grpc.PaymentServiceStub(channel)
        return stub.Charge(
            payment_pb.ChargeRequest(
                order_id="ord_42", amount_cents=3998, currency="USD", payment_method="tok_visa"
            ),
            timeout=10,
        )


def test_list_payments_of_an_order(client, charged):
    response = client.get("/payments?order_id=ord_42")
    assert response.status_code == 200
    (payment,) = response.get_json()["payments"]
    assert payment["id"] == charged.id
    assert payment["amount_cents"] == 3998 and type(payment["amount_cents"]) is int
    assert payment["status"] == "CAPTURED"
    assert payment["card_brand"] == "visa"
    assert RFC3339_UTC.fullmatch(payment["created_at"])


def test_get_payment_by_id(client, charged):
    response = client.get(f"/payments/{charged.id}")
    assert response.status_code == 200
    body = response.get_json()
    assert (body["order_id"], body["status"], body["decline_reason"]) == ("ord_42", "CAPTURED", "")


def test_unknown_payment_is_404(client):
    assert_error(client.get("/payments/pay_nope"), 404, "NOT_FOUND", "NOT_FOUND")


def test_list_payments_without_order_id_is_400(client):
    assert_error(client.get("/payments"), 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")


# Orders (scripted order service: what the gateway sends and how it answers)


def test_create_order_answers_201_with_location_and_the_order(client, orders):
    response = client.post("/orders", json={"product_id": "P001", "quantity": 2, "customer_id": "C123"})
    assert response.status_code == 201
    assert response.headers["Location"] == "/orders/ord_1"
    order = response.get_json()
    assert order["status"] == "CONFIRMED"
    assert order["total_cents"] == 3998 and type(order["total_cents"]) is int
    assert RFC3339_UTC.fullmatch(order["created_at"]) and RFC3339_UTC.fullmatch(order["updated_at"])
    (name, request, _metadata) = orders.calls[-1]
    assert name == "CreateOrder"
    assert (request.product_id, request.quantity, request.customer_id) == ("P001", 2, "C123")


def test_idempotency_key_and_request_id_travel_as_metadata(client, orders):
    response = client.post(
        "/orders",
        json={"customer_id": "C123", "items": [{"product_id": "P001", "quantity": 1}]},
        headers={"Idempotency-Key": "key-123", "X-Request-ID": "req-abc"},
    )
    assert response.status_code == 201
    assert response.headers["X-Request-ID"] == "req-abc"
    metadata = orders.calls[-1][2]
    assert metadata["idempotency-key"] == "key-123"
    assert metadata["x-request-id"] == "req-abc"


def test_malformed_idempotency_key_is_400_and_not_forwarded(client, orders):
    response = client.post("/orders", json={"customer_id": "C1"}, headers={"Idempotency-Key": "has space"})
    assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert orders.calls == []


def test_order_with_a_card_is_refused_before_reaching_any_service(client, orders):
    body = {
        "customer_id": "C123",
        "items": [{"product_id": "P001", "quantity": 1}],
        "card": {"number": "4242424242424242"},
    }
    response = client.post("/orders", json=body)
    error = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert "/payment_methods" in error["message"]
    assert detail_of(error, "google.rpc.BadRequest")["field_violations"][0]["field"] == "card"
    assert "4242424242424242" not in response.get_data(as_text=True)
    assert orders.calls == []


def test_list_orders_passes_filters_and_paging(client, orders):
    response = client.get("/orders?customer_id=C123&page_size=20&page_token=t1")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"orders", "next_page_token"}
    assert body["next_page_token"] == ""
    request = orders.calls[-1][1]
    assert (request.customer_id, request.page_size, request.page_token) == ("C123", 20, "t1")


def test_list_orders_with_a_non_numeric_page_size_is_400_and_not_forwarded(client, orders):
    error = assert_error(client.get("/orders?page_size=abc"), 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert detail_of(error, "google.rpc.BadRequest")["field_violations"][0]["field"] == "page_size"
    assert orders.calls == []


def test_get_order(client, orders):
    response = client.get("/orders/ord_7")
    assert response.status_code == 200
    assert response.get_json()["id"] == "ord_7"
    assert orders.calls[-1][1].order_id == "ord_7"


def test_delete_order_answers_200_with_the_cancelled_order(client):
    response = client.delete("/orders/ord_7")
    assert response.status_code == 200
    assert response.get_json()["status"] == "CANCELLED"
    assert "Location" not in response.headers


def test_trailing_slash_reaches_the_same_route(client):
    assert client.get("/inventory/").status_code == 200
