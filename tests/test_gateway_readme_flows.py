"""The README's curl commands, verbatim, against the gateway in front of the
real services (inventory, payment and the order saga), in-process.

Each command is parsed as curl parses it (-X, -H, -d, -i; -d without a
Content-Type sends a form) and replayed through Flask's test client.
"""

import shlex

import pytest

from tests.test_gateway_support import detail_of, make_client, running_backends


def curl(client, command: str, **placeholders):
    """Run one curl command line against the test client."""
    for name, value in placeholders.items():
        command = command.replace(name, value)
    args = shlex.split(command.replace("\\\n", " "), comments=True)
    assert args[0] == "curl"
    method, headers, data, url = None, {}, None, None
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-X":
            method = next(rest)
        elif arg == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(rest)
        elif arg == "-i":
            continue
        else:
            url = arg
    if data is not None:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    host_and_path = url.split("://", 1)[-1]
    path = "/" + host_and_path.split("/", 1)[1] if "/" in host_and_path else "/"
    return client.open(
        path, method=method or ("POST" if data is not None else "GET"), headers=headers, data=data
    )


# What `make run` would have generated and printed.
LOCAL_ADMIN_TOKEN = "0f3a9c6e1b7d4e2a8c5f0b9d3e6a1c7f"


@pytest.fixture
def client(sqlite_url):
    with running_backends(sqlite_url, real_orders=True) as backends:
        yield make_client(backends, admin_token=LOCAL_ADMIN_TOKEN)


def test_issue_flow_flat_order_body(client):
    response = curl(
        client,
        """curl -X POST localhost:30080/orders -H 'Content-Type: application/json' -d '{"product_id": "P001", "quantity": 2, "customer_id": "C123"}'""",
    )
    assert response.status_code == 201
    order = response.get_json()
    assert response.headers["Location"] == f"/orders/{order['id']}"
    assert (order["status"], order["total_cents"], order["currency"]) == ("CONFIRMED", 3998, "USD")
    assert order["items"] == [{"product_id": "P001", "quantity": 2, "unit_price_cents": 1999}]


def test_readme_catalog_flow(client):
    assert len(curl(client, "curl localhost:30080/inventory").get_json()["products"]) >= 10
    assert curl(client, "curl localhost:30080/inventory/P001").get_json()["price_cents"] == 1999
    check = curl(
        client,
        """curl -X POST localhost:30080/inventory/check -H 'Content-Type: application/json' \\
     -d '{"items": [{"product_id": "P001", "quantity": 2}]}'""",
    )
    assert check.status_code == 200
    assert check.get_json()["available"] is True


def test_readme_order_flow_place_list_get_cancel(client):
    placed = curl(
        client,
        """curl -i -X POST localhost:30080/orders -H 'Content-Type: application/json' \\
     -H 'Idempotency-Key: 3f6c1b2e' \\
     -d '{"customer_id": "C123", "items": [{"product_id": "P001", "quantity": 2}], "payment_method": "tok_visa"}'""",
    )
    assert placed.status_code == 201, placed.get_data(as_text=True)
    order_id = placed.get_json()["id"]
    assert placed.headers["Location"] == f"/orders/{order_id}"
    retried = curl(
        client,
        """curl -i -X POST localhost:30080/orders -H 'Content-Type: application/json' \\
     -H 'Idempotency-Key: 3f6c1b2e' \\
     -d '{"customer_id": "C123", "items": [{"product_id": "P001", "quantity": 2}], "payment_method": "tok_visa"}'""",
    )
    assert (retried.status_code, retried.get_json()["id"]) == (201, order_id)
    flat = curl(
        client,
        """curl -X POST localhost:30080/orders -H 'Content-Type: application/json' \\
     -d '{"product_id": "P001", "quantity": 2, "customer_id": "C123"}'""",
    )
    assert flat.status_code == 201, flat.get_data(as_text=True)
    assert curl(client, "curl localhost:30080/inventory/P001").get_json()["available"] == 96

    listed = curl(client, "curl 'localhost:30080/orders?customer_id=C123&page_size=10'").get_json()
    assert [o["id"] for o in listed["orders"]] == [flat.get_json()["id"], order_id]
    assert listed["next_page_token"] == ""
    got = curl(client, "curl localhost:30080/orders/ORDER_ID", ORDER_ID=order_id)
    assert (got.status_code, got.get_json()["status"]) == (200, "CONFIRMED")

    cancelled = curl(
        client,
        "curl -X DELETE localhost:30080/orders/ORDER_ID          # refund + return stock",
        ORDER_ID=order_id,
    )
    assert (cancelled.status_code, cancelled.get_json()["status"]) == (200, "CANCELLED")
    again = curl(client, "curl -X DELETE localhost:30080/orders/ORDER_ID", ORDER_ID=order_id)
    assert (again.status_code, again.get_json()["status"]) == (200, "CANCELLED")
    assert curl(client, "curl localhost:30080/inventory/P001").get_json()["available"] == 98

    payments = curl(
        client, "curl 'localhost:30080/payments?order_id=ORDER_ID'", ORDER_ID=order_id
    ).get_json()["payments"]
    assert [(p["status"], p["amount_cents"]) for p in payments] == [("REFUNDED", 3998)]


def test_readme_payment_method_then_order_with_it(client):
    created = curl(
        client,
        """curl -X POST localhost:30080/payment_methods -H 'Content-Type: application/json' \\
     -d '{"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}'""",
    )
    assert created.status_code == 201
    method = created.get_json()
    assert method["id"].startswith("pm_") and method["card_last4"] == "4242"
    order = client.post(
        "/orders",
        json={
            "customer_id": "C123",
            "items": [{"product_id": "P003", "quantity": 1}],
            "payment_method": method["id"],
        },
    )
    assert order.status_code == 201
    (payment,) = client.get(f"/payments?order_id={order.get_json()['id']}").get_json()["payments"]
    assert (payment["status"], payment["card_last4"], payment["amount_cents"]) == ("CAPTURED", "4242", 3499)


def test_readme_declined_card_is_402_and_keeps_the_order(client):
    declined = curl(
        client,
        """curl -X POST localhost:30080/orders -H 'Content-Type: application/json' \\
     -d '{"customer_id": "C123", "items": [{"product_id": "P002", "quantity": 1}], "payment_method": "tok_chargeDeclined"}'""",
    )
    assert declined.status_code == 402
    error = declined.get_json()["error"]
    assert (error["status"], error["reason"]) == ("FAILED_PRECONDITION", "PAYMENT_DECLINED")
    order_id = detail_of(error, "google.rpc.ErrorInfo")["metadata"]["order_id"]
    assert client.get(f"/orders/{order_id}").get_json()["status"] == "PAYMENT_FAILED"
    assert client.get("/inventory/P002").get_json()["available"] == 50


def test_readme_out_of_stock_order_is_409_naming_the_order(client):
    response = client.post(
        "/orders", json={"customer_id": "C123", "items": [{"product_id": "P010", "quantity": 11}]}
    )
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["reason"] == "OUT_OF_STOCK"
    order_id = detail_of(error, "google.rpc.ErrorInfo")["metadata"]["order_id"]
    assert client.get(f"/orders/{order_id}").get_json()["status"] == "FAILED"


def test_readme_admin_adjustment(client):
    response = curl(
        client,
        """curl -X POST localhost:30080/inventory/P001/adjustments -H "Authorization: Bearer $ADMIN_TOKEN" \\
     -H 'Content-Type: application/json' -d '{"delta": 25, "reason": "restock"}'""",
        **{"$ADMIN_TOKEN": LOCAL_ADMIN_TOKEN},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["available"] == 125


@pytest.mark.parametrize(
    "command",
    [
        "curl localhost:30080/health",
        "curl localhost:30080/ready",
        "curl localhost:30080/mesh/service-status",
        "curl localhost:30080/mesh/traffic-stats",
        "curl localhost:30080/metrics",
        "curl localhost:30080/openapi.json",
    ],
)
def test_readme_operations_commands_answer_200(client, command):
    assert curl(client, command).status_code == 200


def test_curl_without_content_type_still_sends_json_that_is_understood(client):
    # curl -d labels the body application/x-www-form-urlencoded; it is JSON all the same.
    response = curl(
        client, """curl -X POST localhost:30080/orders -d '{"product_id": "P001", "quantity": 2, "customer_id": "C123"}'"""
    )
    assert response.status_code == 201, response.get_json()
