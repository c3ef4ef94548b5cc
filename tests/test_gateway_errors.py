"""The error table of the contract, row by row, and the rule under it: every
answer is JSON in the error shape, never HTML or a traceback."""

import io
import itertools

import grpc
import pytest

from gateway.errors import HTTP_STATUS_BY_CODE
from gateway.transcoding import route_table
from gateway.upstreams import SERVICES
from plumbing.config import UpstreamConfig
from plumbing.errors import ShopError, failed_precondition
from tests import harness
from tests.test_gateway_support import (
    admin_headers,
    assert_error,
    detail_of,
    make_client,
    unused_address,
)

ORDER = {"customer_id": "C123", "items": [{"product_id": "P001", "quantity": 2}]}


# 400 INVALID_ARGUMENT


@pytest.mark.parametrize(
    "data, content_type",
    [
        ("{not json", "application/json"),
        ("customer_id=C1", "application/x-www-form-urlencoded"),
        ("", "application/json"),
    ],
)
def test_body_that_is_not_json_is_400(client, orders, data, content_type):
    response = client.post("/orders", data=data, content_type=content_type)
    assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert orders.calls == []


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_a_json_body_is_taken_whatever_its_content_type(client, content_type):
    # `curl -d '{...}'` without -H labels the body as a form.
    response = client.post("/inventory/check", data='{"product_id": "P001", "quantity": 1}', content_type=content_type)
    assert response.status_code == 200, response.get_json()


def test_wrong_types_are_400_naming_each_field(client):
    response = client.post(
        "/orders", json={"customer_id": 7, "items": [{"product_id": "P001", "quantity": "two"}]}
    )
    error = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    fields = {v["field"] for v in detail_of(error, "google.rpc.BadRequest")["field_violations"]}
    assert fields == {"customer_id", "items[0].quantity"}


def test_unknown_body_field_is_400(client):
    response = client.post("/inventory/check", json={"product_id": "P001", "quantity": 1, "urgent": True})
    error = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert detail_of(error, "google.rpc.BadRequest")["field_violations"] == [
        {"field": "urgent", "description": "unknown field"}
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"product_id": "P001", "quantity": 0},
        {"product_id": "P001", "quantity": 1001},
        {"items": []},
        {"items": [{"product_id": "P001", "quantity": 1}] * 51},
        {"product_id": "P 001", "quantity": 1},
    ],
)
def test_missing_or_out_of_range_fields_are_400_from_the_service(client, body):
    response = client.post("/inventory/check", json=body)
    error = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert detail_of(error, "google.rpc.BadRequest")["field_violations"]


def test_an_upstream_error_info_without_metadata_still_has_a_metadata_object(client):
    # The service's ErrorInfo has an empty metadata map, which proto3 JSON leaves out.
    error = assert_error(client.post("/inventory/check", json={"items": []}), 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert detail_of(error, "google.rpc.ErrorInfo") == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "INVALID_ARGUMENT",
        "domain": "shop",
        "metadata": {},
    }


def test_unknown_query_parameter_is_400(client):
    error = assert_error(client.get("/inventory?sort=price"), 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert detail_of(error, "google.rpc.BadRequest")["field_violations"] == [
        {"field": "sort", "description": "unknown query parameter"}
    ]


# 413 PAYLOAD_TOO_LARGE


def test_body_over_64_kib_by_content_length_is_413(client, orders):
    big = '{"customer_id": "' + "C" * (64 * 1024) + '"}'
    response = client.post("/orders", data=big, content_type="application/json")
    assert_error(response, 413, "INVALID_ARGUMENT", "PAYLOAD_TOO_LARGE")
    assert orders.calls == []


def test_body_over_64_kib_without_content_length_is_413_while_streaming(client, orders):
    big = b'{"customer_id": "' + b"C" * (70 * 1024) + b'"}'
    response = client.post(
        "/orders",
        input_stream=io.BytesIO(big),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(response, 413, "INVALID_ARGUMENT", "PAYLOAD_TOO_LARGE")
    assert orders.calls == []


def test_body_of_exactly_64_kib_is_read(client, orders):
    # White space: a customer id of 64 KiB would be refused by its pattern.
    start = '{"customer_id": "C1", "product_id": "P001", "quantity": 1'
    padding = 64 * 1024 - len(start + "}")
    body = start + " " * padding + "}"
    assert len(body) == 64 * 1024
    response = client.post("/orders", data=body, content_type="application/json")
    assert response.status_code == 201


# 404


def test_unknown_order_is_404(client, orders):
    orders.fail_with = ShopError(
        grpc.StatusCode.NOT_FOUND, "order 'nope' not found", "NOT_FOUND", {"id": "nope"}
    )
    assert_error(client.get("/orders/nope"), 404, "NOT_FOUND", "NOT_FOUND")


def test_unknown_product_and_payment_are_404(client):
    assert_error(client.get("/inventory/P404"), 404, "NOT_FOUND", "NOT_FOUND")
    assert_error(client.get("/payments/pay_404"), 404, "NOT_FOUND", "NOT_FOUND")


# The fixed rows keyed by reason


@pytest.mark.parametrize(
    "reason, code, http_status, route",
    [
        ("OUT_OF_STOCK", grpc.StatusCode.FAILED_PRECONDITION, 409, ("POST", "/orders")),
        ("PAYMENT_DECLINED", grpc.StatusCode.FAILED_PRECONDITION, 402, ("POST", "/orders")),
        ("NOT_CANCELLABLE", grpc.StatusCode.FAILED_PRECONDITION, 409, ("DELETE", "/orders/ord_1")),
        ("ORDER_IN_PROGRESS", grpc.StatusCode.FAILED_PRECONDITION, 409, ("DELETE", "/orders/ord_1")),
        ("IDEMPOTENCY_KEY_REUSED", grpc.StatusCode.INVALID_ARGUMENT, 422, ("POST", "/orders")),
        ("IDEMPOTENCY_KEY_IN_USE", grpc.StatusCode.ABORTED, 409, ("POST", "/orders")),
    ],
)
def test_fixed_rows_answer_their_status_with_the_order_id(client, orders, reason, code, http_status, route):
    orders.fail_with = ShopError(code, f"{reason.lower()} happened", reason, {"order_id": "ord_1"})
    method, path = route
    response = client.open(
        path, method=method, json=ORDER if method == "POST" else None, headers={"Idempotency-Key": "k1"}
    )
    error = assert_error(response, http_status, code.name, reason)
    info = detail_of(error, "google.rpc.ErrorInfo")
    assert (info["reason"], info["domain"], info["metadata"]) == (reason, "shop", {"order_id": "ord_1"})
    assert error["message"] == f"{reason.lower()} happened"


def test_failed_precondition_without_a_fixed_row_is_400(client, orders):
    orders.fail_with = failed_precondition("SOMETHING_ELSE", "not now")
    assert_error(client.post("/orders", json=ORDER), 400, "FAILED_PRECONDITION", "SOMETHING_ELSE")


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_every_grpc_code_maps_as_grpc_gateway_maps_it_with_the_code_as_reason(client, orders, code):
    orders.fail_with = ShopError(code, "it went wrong")
    response = client.get("/orders/ord_1")
    assert_error(response, HTTP_STATUS_BY_CODE[code], code.name, code.name)


def test_status_table_matches_the_contract():
    expected = {
        "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409, "ABORTED": 409, "FAILED_PRECONDITION": 400, "RESOURCE_EXHAUSTED": 429,
        "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500,
        "UNKNOWN": 500, "DATA_LOSS": 500,
    }  # fmt: skip
    assert {
        code.name: HTTP_STATUS_BY_CODE[code] for code in HTTP_STATUS_BY_CODE if code.name in expected
    } == expected


# 503 and 504


def test_backend_down_is_503_unavailable(backends):
    backends.order = unused_address()
    client = make_client(backends)
    error = assert_error(client.get("/orders/ord_1"), 503, "UNAVAILABLE", "UNAVAILABLE")
    assert detail_of(error, "google.rpc.ErrorInfo")["metadata"] == {"service": "order"}
    assert "127.0.0.1" not in error["message"]


def test_backend_refusing_with_unavailable_is_503_with_retry_after(client, orders):
    orders.fail_with = ShopError(grpc.StatusCode.UNAVAILABLE, "draining")
    response = client.get("/orders/ord_1")
    assert_error(response, 503, "UNAVAILABLE", "UNAVAILABLE")
    assert response.headers["Retry-After"] == "1"


def test_a_backend_whose_database_is_away_is_503_with_retry_after_and_its_message(client, orders):
    orders.fail_with = ShopError(
        grpc.StatusCode.UNAVAILABLE,
        "order database is unavailable; order ord_9 is stored, and will be completed or compensated shortly",
        "UNAVAILABLE",
        {"order_id": "ord_9", "service": "order database"},
    )
    response = client.post("/orders", json={"customer_id": "C1", "items": [{"product_id": "P001", "quantity": 1}]})
    error = assert_error(response, 503, "UNAVAILABLE", "UNAVAILABLE")
    assert response.headers["Retry-After"] == "1"
    assert detail_of(error, "google.rpc.ErrorInfo")["metadata"]["order_id"] == "ord_9"
    assert "ord_9" in error["message"]


def test_a_write_locked_by_another_process_past_the_deadline_is_503_not_500(backends, sqlite_url):
    # The inventory's own SQLite file, held by a process outside the shop.
    path = sqlite_url("inventory").removeprefix("sqlite:///")
    upstreams = UpstreamConfig(backends.inventory, backends.payment, backends.order, timeout_s=1.5)
    client = make_client(backends, upstreams=upstreams)
    adjustment = {"delta": 5, "reason": "restock"}
    with harness.write_lock_held_by_another_process(path):
        response = client.post("/inventory/P001/adjustments", json=adjustment, headers=admin_headers())
    error = assert_error(response, 503, "UNAVAILABLE", "UNAVAILABLE")
    assert response.headers["Retry-After"] == "1"
    assert "locked" in error["message"]
    assert client.post("/inventory/P001/adjustments", json=adjustment, headers=admin_headers()).status_code == 200


def test_backend_slower_than_the_deadline_is_504(backends):
    backends.scripted_orders.delay_s = 5
    upstreams = UpstreamConfig(backends.inventory, backends.payment, backends.order, timeout_s=0.2)
    client = make_client(backends, upstreams=upstreams)
    error = assert_error(client.get("/orders/ord_1"), 504, "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED")
    assert "0.2s" in error["message"]


# 404 / 405 of the gateway itself


@pytest.mark.parametrize("path", ["/", "/nope", "/orders/ord_1/items", "/inventory//P001", "/v1/orders"])
def test_unknown_route_is_404(client, path):
    assert_error(client.get(path), 404, "NOT_FOUND", "NOT_FOUND")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_flask_static_files_route_is_not_served(client, method):
    assert_error(client.open("/static/app.js", method=method), 404, "NOT_FOUND", "NOT_FOUND")


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("DELETE", "/inventory", {"GET", "HEAD", "OPTIONS"}),
        ("PATCH", "/orders/ord_1", {"GET", "DELETE", "HEAD", "OPTIONS"}),
        ("PUT", "/orders", {"GET", "POST", "HEAD", "OPTIONS"}),
        ("POST", "/health", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_wrong_method_is_405_with_allow(client, method, path, allowed):
    response = client.open(path, method=method)
    assert_error(response, 405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED")
    assert set(response.headers["Allow"].split(", ")) == allowed


# 500


def test_unexpected_exception_is_500_json_without_a_traceback(client, monkeypatch, caplog):
    def explode(*_args, **_kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.application.extensions["shop_gateway"].upstreams, "call", explode)
    response = client.get("/inventory")
    error = assert_error(response, 500, "INTERNAL", "INTERNAL")
    assert "secret internals" not in response.get_data(as_text=True)
    assert error["message"] == "internal error"
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


def test_opaque_upstream_internal_error_text_is_not_passed_on(client, orders):
    orders.fail_with = RuntimeError("Traceback: db password=hunter2")
    response = client.get("/orders/ord_1")
    assert_error(response, 500, "INTERNAL", "INTERNAL")
    assert "hunter2" not in response.get_data(as_text=True)


# Never HTML, never a traceback

_PATH_VALUES = {"order_id": "ord_1", "product_id": "P001", "payment_id": "pay_1"}
_BODIES = [
    ("{", "application/json"),
    ("[]", "application/json"),
    ('"text"', "application/json"),
    ('{"customer_id": [], "items": "x", "delta": {}, "card": 5, "name": null}', "application/json"),
    ('{"quantity": 1e999}', "application/json"),
    ("<html></html>", "text/html"),
    ("\xff\xfe", "application/json"),
]


def _concrete(template: str) -> str:
    for name, value in _PATH_VALUES.items():
        template = template.replace("{" + name + "}", value)
    return template


def test_no_route_ever_answers_html_or_a_traceback(client):
    paths = sorted({_concrete(b.template) for b in route_table(SERVICES)}) + [
        "/health",
        "/nope",
        "/orders/x/y",
    ]
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    checked = 0
    for path, method, (data, content_type) in itertools.product(paths, methods, _BODIES):
        response = client.open(
            path + "?page_size=abc",
            method=method,
            data=data,
            content_type=content_type,
            headers=admin_headers(),
        )
        text = response.get_data(as_text=True)
        assert "html" not in response.headers.get("Content-Type", ""), (method, path)
        assert "<html" not in text.lower() and "Traceback" not in text, (method, path, text)
        if response.status_code == 204:
            assert method == "OPTIONS" and text == ""
        else:
            assert response.mimetype == "application/json", (method, path, text)
        if method not in ("HEAD", "OPTIONS") and response.status_code >= 400:
            body = response.get_json()
            assert set(body) == {"error", "request_id"}, (method, path, body)
            assert body["error"]["code"] == response.status_code
        checked += 1
    assert checked == len(paths) * len(methods) * len(_BODIES)


def test_overloaded_backend_is_429_with_a_short_retry_after(client, orders):
    orders.fail_with = ShopError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many concurrent calls")
    response = client.get("/orders/ord_1")
    assert_error(response, 429, "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED")
    assert response.headers["Retry-After"] == "1"
