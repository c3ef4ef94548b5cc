"""Placing orders against in-process inventory, payment and order services,
on SQLite and PostgreSQL: totals from the inventory's prices, declines,
stock shortages and refusals, each leaving stock and payments exactly right."""

import datetime as dt
import re

import grpc
import pytest

from plumbing.errors import from_rpc_error
from shop.inventory.v1 import inventory_pb2 as inv
from shop.order.v1 import order_pb2 as pb
from shop.payment.v1 import payment_pb2 as pay
from tests import harness

NEXT_YEAR = dt.datetime.now(dt.UTC).year + 1

def place(orders, customer_id="C1", items=(("P001", 1),), payment_method="", metadata=(), timeout=10):
    request = pb.CreateOrderRequest(
        customer_id=customer_id,
        items=[pb.Item(product_id=p, quantity=q) for p, q in items],
        payment_method=payment_method,
    )
    return orders.CreateOrder(request, timeout=timeout, metadata=metadata)


def refused(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return from_rpc_error(info.value)


def stock(shop, *product_ids) -> dict[str, int]:
    products = shop.inventory_stub().ListProducts(inv.ListProductsRequest(), timeout=10).products
    return {p.product_id: p.available for p in products if p.product_id in product_ids}


def payments_of(shop, order_id):
    return list(shop.payment_stub().ListPayments(pay.ListPaymentsRequest(order_id=order_id), timeout=10).payments)


def put_product(shop, product_id, price_cents, available, currency="USD"):
    shop.inventory_stub().UpsertProduct(
        inv.UpsertProductRequest(
            product_id=product_id, name=product_id, price_cents=price_cents, currency=currency, available=available
        ),
        timeout=10,
    )


def card_method(shop, number):
    card = pay.Card(number=number, exp_month=12, exp_year=NEXT_YEAR, cvc="123")
    return shop.payment_stub().CreatePaymentMethod(pay.CreatePaymentMethodRequest(card=card), timeout=10).id


def test_multi_item_order_totals_the_inventorys_unit_prices_exactly(shop):
    put_product(shop, "ODD1", 333, 10)
    put_product(shop, "ODD2", 1, 10)
    before = stock(shop, "ODD1", "ODD2", "P002")

    order = place(shop.orders(), items=[("ODD1", 3), ("P002", 2), ("ODD2", 7), ("ODD1", 1)])

    assert order.status == pb.CONFIRMED
    assert [(i.product_id, i.quantity, i.unit_price_cents) for i in order.items] == [
        ("ODD1", 3, 333),
        ("P002", 2, 8999),
        ("ODD2", 7, 1),
        ("ODD1", 1, 333),
    ]
    assert order.total_cents == 3 * 333 + 2 * 8999 + 7 * 1 + 1 * 333 == 19337
    assert order.currency == "USD"
    (payment,) = payments_of(shop, order.id)
    assert (payment.id, payment.status, payment.amount_cents) == (order.payment_id, pay.CAPTURED, 19337)
    assert stock(shop, "ODD1", "ODD2", "P002") == {
        "ODD1": before["ODD1"] - 4,
        "ODD2": before["ODD2"] - 7,
        "P002": before["P002"] - 2,
    }


def test_total_beyond_32_bits_stays_exact_in_integer_cents(shop):
    products = [f"BIG{n:02d}" for n in range(50)]
    for product_id in products:
        put_product(shop, product_id, 100_000_000, 1000)

    order = place(shop.orders(), items=[(p, 1000) for p in products])

    assert order.status == pb.CONFIRMED
    assert order.total_cents == 50 * 1000 * 100_000_000 == 5_000_000_000_000
    assert payments_of(shop, order.id)[0].amount_cents == 5_000_000_000_000


@harness.sqlite_only
def test_order_has_an_id_timestamps_and_is_stored(shop):
    orders = shop.orders()
    order = place(orders, payment_method="tok_mastercard")

    assert re.fullmatch(r"ord_[0-9a-f]{24}", order.id)
    assert order.created_at.ToDatetime() <= order.updated_at.ToDatetime()
    assert orders.GetOrder(pb.GetOrderRequest(order_id=order.id), timeout=10) == order
    assert payments_of(shop, order.id)[0].card_brand == "mastercard"


@harness.sqlite_only
def test_flat_form_of_the_original_design_is_one_item(shop):
    request = pb.CreateOrderRequest(customer_id="C1", product_id="P003", quantity=2)
    order = shop.orders().CreateOrder(request, timeout=10)

    assert [(i.product_id, i.quantity, i.unit_price_cents) for i in order.items] == [("P003", 2, 3499)]
    assert order.total_cents == 6998


@harness.sqlite_only
def test_payment_method_defaults_to_tok_visa(shop):
    order = place(shop.orders())
    (payment,) = payments_of(shop, order.id)
    assert (payment.card_brand, payment.card_last4) == ("visa", "4242")


@harness.sqlite_only
@pytest.mark.parametrize(
    "method, decline_reason",
    [
        ("tok_chargeDeclined", "card_declined"),
        ("tok_insufficientFunds", "insufficient_funds"),
        ("card:4000000000000002", "card_declined"),
        ("card:4000000000009995", "insufficient_funds"),
    ],
)
def test_declined_payment_fails_the_order_and_returns_the_stock(shop, method, decline_reason):
    if method.startswith("card:"):
        method = card_method(shop, method.removeprefix("card:"))
    before = stock(shop, "P001", "P004")

    error = refused(place, shop.orders(), items=[("P001", 2), ("P004", 1)], payment_method=method)

    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_DECLINED")
    assert error.metadata["decline_reason"] == decline_reason
    order = shop.orders().GetOrder(pb.GetOrderRequest(order_id=error.metadata["order_id"]), timeout=10)
    assert order.status == pb.PAYMENT_FAILED
    (payment,) = payments_of(shop, order.id)
    assert (payment.id, payment.status, payment.decline_reason) == (
        error.metadata["payment_id"],
        pay.DECLINED,
        decline_reason,
    )
    assert order.payment_id == payment.id
    assert stock(shop, "P001", "P004") == before


def test_one_item_out_of_stock_leaves_every_item_untouched_and_charges_nothing(shop):
    put_product(shop, "SCARCE", 500, 1)
    before = stock(shop, "P001", "P002", "SCARCE")

    error = refused(place, shop.orders(), items=[("P001", 3), ("SCARCE", 2), ("P002", 1)])

    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK")
    assert error.metadata["product_id"] == "SCARCE"
    order_id = error.metadata["order_id"]
    assert shop.orders().GetOrder(pb.GetOrderRequest(order_id=order_id), timeout=10).status == pb.FAILED
    assert stock(shop, "P001", "P002", "SCARCE") == before
    assert payments_of(shop, order_id) == []
    assert shop.payment_faults.requests("Charge") == []


@harness.sqlite_only
def test_mixed_currencies_fail_the_order_and_return_the_stock(shop):
    put_product(shop, "EURO", 1500, 5, currency="EUR")
    before = stock(shop, "EURO", "P001")

    error = refused(place, shop.orders(), items=[("P001", 1), ("EURO", 1)])

    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MIXED_CURRENCIES")
    assert error.metadata["currencies"] == "EUR, USD"
    order = shop.orders().GetOrder(pb.GetOrderRequest(order_id=error.metadata["order_id"]), timeout=10)
    assert order.status == pb.FAILED
    assert stock(shop, "EURO", "P001") == before
    assert payments_of(shop, order.id) == []


@harness.sqlite_only
def test_unknown_product_fails_the_order_naming_it(shop):
    error = refused(place, shop.orders(), items=[("P001", 1), ("NOPE", 1)])

    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert error.metadata["id"] == "NOPE"
    order = shop.orders().GetOrder(pb.GetOrderRequest(order_id=error.metadata["order_id"]), timeout=10)
    assert order.status == pb.FAILED


@pytest.mark.parametrize("payment_method", ["tok_unheardOf", "pm_000000000000000000000000", "pm_doesnotexist"])
def test_unknown_payment_method_fails_the_order_and_returns_the_stock(shop, payment_method):
    before = stock(shop, "P001")

    error = refused(place, shop.orders(), payment_method=payment_method)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.violations] == ["payment_method"]
    order = shop.orders().GetOrder(pb.GetOrderRequest(order_id=error.metadata["order_id"]), timeout=10)
    assert order.status == pb.FAILED
    assert stock(shop, "P001") == before
    assert payments_of(shop, order.id) == []


@harness.sqlite_only
def test_unknown_order_is_not_found(shop):
    error = refused(shop.orders().GetOrder, pb.GetOrderRequest(order_id="ord_000000000000000000000000"), timeout=10)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert error.metadata["order_id"] == "ord_000000000000000000000000"
