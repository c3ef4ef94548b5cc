"""CreateOrder checks everything before any side effect: a refused request
leaves no order, reserves nothing, and never echoes or logs a card number."""

import logging

import grpc
import pytest

from plumbing.errors import from_rpc_error
from shop.order.v1 import order_pb2 as pb
from tests import harness


@pytest.fixture
def shop(sqlite_url):
    shop = harness.OrderShop.start(sqlite_url)
    yield shop
    shop.stop()


def item(product_id="P001", quantity=1):
    return pb.Item(product_id=product_id, quantity=quantity)


VALID = dict(customer_id="C1", items=[item()])

CARD_NUMBERS = ["4242424242424242", "4242 4242 4242 4242", "4000-0000-0000-0002", "378282246310005"]


@pytest.mark.parametrize(
    "fields, violated",
    [
        (dict(items=[item()]), ["customer_id"]),
        (dict(VALID, customer_id="C 1"), ["customer_id"]),
        (dict(VALID, customer_id="C" * 65), ["customer_id"]),
        (dict(customer_id="C1"), ["items"]),
        (dict(customer_id="C1", items=[item()] * 51), ["items"]),
        (dict(customer_id="C1", items=[item(quantity=0)]), ["items[0].quantity"]),
        (dict(customer_id="C1", items=[item(), item(quantity=1001)]), ["items[1].quantity"]),
        (dict(customer_id="C1", items=[item(quantity=-3)]), ["items[0].quantity"]),
        (dict(customer_id="C1", items=[item(product_id="P/001")]), ["items[0].product_id"]),
        (dict(customer_id="C1", product_id="P001", quantity=0), ["quantity"]),
        (dict(customer_id="C1", product_id="P001", quantity=1, items=[item()]), ["items"]),
        (dict(VALID, payment_method="tok visa"), ["payment_method"]),
        # Only test tokens and issued ids: nothing that could hold a card number.
        (dict(VALID, payment_method="x4242424242424242"), ["payment_method"]),
        (dict(VALID, payment_method="pm_4242424242424242"), ["payment_method"]),
        (dict(VALID, payment_method="tok_visa-4242424242424242"), ["payment_method"]),
        # The declared field rules are checked first, all at once; a missing
        # customer_id (which AUTH=jwt fills from the token) only past them.
        (dict(customer_id="", items=[item(quantity=0), item(product_id="")]), ["items[0].quantity", "items[1].product_id"]),
    ],
)
def test_invalid_order_is_refused_and_changes_nothing(shop, fields, violated):
    orders = shop.orders()
    with pytest.raises(grpc.RpcError) as info:
        orders.CreateOrder(pb.CreateOrderRequest(**fields), timeout=10)

    error = from_rpc_error(info.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert [field for field, _ in error.violations] == violated
    assert list(orders.ListOrders(pb.ListOrdersRequest(), timeout=10).orders) == []
    assert shop.inventory_faults.calls == []


@pytest.mark.parametrize("card_number", CARD_NUMBERS)
def test_card_number_as_payment_method_points_to_payment_methods_and_is_never_echoed(shop, card_number, caplog):
    caplog.set_level(logging.DEBUG)
    orders = shop.orders()
    with pytest.raises(grpc.RpcError) as info:
        orders.CreateOrder(pb.CreateOrderRequest(**VALID, payment_method=card_number), timeout=10)

    error = from_rpc_error(info.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    ((field, description),) = error.violations
    assert field == "payment_method" and "POST /payment_methods" in description
    digits = card_number.replace(" ", "").replace("-", "")
    for text in (info.value.details(), repr(info.value.trailing_metadata()), caplog.text):
        assert card_number not in text and digits not in text and digits[-8:] not in text
    assert list(orders.ListOrders(pb.ListOrdersRequest(), timeout=10).orders) == []


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_invalid_idempotency_key_is_refused(shop, key):
    orders = shop.orders()
    with pytest.raises(grpc.RpcError) as info:
        orders.CreateOrder(pb.CreateOrderRequest(**VALID), timeout=10, metadata=[("idempotency-key", key)])

    error = from_rpc_error(info.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.violations] == ["idempotency-key"]
    assert list(orders.ListOrders(pb.ListOrdersRequest(), timeout=10).orders) == []


def test_idempotency_key_of_255_printable_characters_is_accepted(shop):
    key = ("A key, with spaces & punctuation ~!" * 8)[:255]
    order = shop.orders().CreateOrder(pb.CreateOrderRequest(**VALID), timeout=10, metadata=[("idempotency-key", key)])
    assert order.status == pb.CONFIRMED


@pytest.mark.parametrize("order_id", ["", "ord 1", "o" * 65])
def test_get_and_cancel_check_the_order_id(shop, order_id):
    orders = shop.orders()
    for call, request in ((orders.GetOrder, pb.GetOrderRequest), (orders.CancelOrder, pb.CancelOrderRequest)):
        with pytest.raises(grpc.RpcError) as info:
            call(request(order_id=order_id), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
