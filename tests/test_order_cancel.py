"""CancelOrder, on SQLite and PostgreSQL: refund, stock back, CANCELLED;
harmless to repeat; refused for orders that never completed."""

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from plumbing.errors import from_rpc_error
from shop.inventory.v1 import inventory_pb2 as inv
from shop.order.v1 import order_pb2 as pb
from shop.payment.v1 import payment_pb2 as pay
from tests import harness


def place(orders, payment_method="", items=(("P001", 2), ("P005", 1))):
    request = pb.CreateOrderRequest(
        customer_id="C1", items=[pb.Item(product_id=p, quantity=q) for p, q in items], payment_method=payment_method
    )
    return orders.CreateOrder(request, timeout=10)


def cancel(orders, order_id, timeout=10):
    return orders.CancelOrder(pb.CancelOrderRequest(order_id=order_id), timeout=timeout)


def refused(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return from_rpc_error(info.value)


def stock(shop):
    products = shop.inventory_stub().ListProducts(inv.ListProductsRequest(), timeout=10).products
    return {p.product_id: p.available for p in products}


def payments_of(shop, order_id):
    return [
        (p.id, p.status)
        for p in shop.payment_stub().ListPayments(pay.ListPaymentsRequest(order_id=order_id), timeout=10).payments
    ]


def test_cancel_refunds_the_payment_and_returns_the_stock(shop):
    orders = shop.orders()
    before = stock(shop)
    order = place(orders)

    cancelled = cancel(orders, order.id)

    assert cancelled.status == pb.CANCELLED
    assert (cancelled.id, cancelled.payment_id, cancelled.total_cents) == (order.id, order.payment_id, order.total_cents)
    assert payments_of(shop, order.id) == [(order.payment_id, pay.REFUNDED)]
    assert stock(shop) == before
    assert orders.GetOrder(pb.GetOrderRequest(order_id=order.id), timeout=10) == cancelled


def test_second_cancel_changes_nothing(shop):
    orders = shop.orders()
    order = place(orders)
    first = cancel(orders, order.id)
    after_first = stock(shop)

    second = cancel(orders, order.id)

    assert second == first
    assert stock(shop) == after_first
    assert payments_of(shop, order.id) == [(order.payment_id, pay.REFUNDED)]
    assert len(shop.payment_faults.requests("Refund")) == 1


def test_concurrent_cancels_refund_once_and_all_answer_cancelled(shop):
    orders = shop.orders()
    before = stock(shop)
    order = place(orders)
    start = threading.Barrier(8)

    def cancel_at_once(_):
        start.wait()
        return cancel(orders, order.id)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(cancel_at_once, range(8)))

    assert {a.status for a in answers} == {pb.CANCELLED}
    assert payments_of(shop, order.id) == [(order.payment_id, pay.REFUNDED)]
    assert stock(shop) == before


@harness.sqlite_only
@pytest.mark.parametrize(
    "failing", [dict(payment_method="tok_chargeDeclined"), dict(items=[("P001", 999)])], ids=["declined", "failed"]
)
def test_cancel_of_an_order_that_never_completed_is_not_cancellable(shop, failing):
    orders = shop.orders()
    order_id = refused(place, orders, **failing).metadata["order_id"]
    before = stock(shop)

    error = refused(cancel, orders, order_id)

    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_CANCELLABLE")
    assert error.metadata["order_id"] == order_id
    assert stock(shop) == before
    assert shop.payment_faults.requests("Refund") == []


@harness.sqlite_only
def test_cancel_of_a_pending_order_says_it_is_in_progress(shop):
    gate = threading.Event()
    shop.payment_faults.rules["Charge"] = lambda request, context, charge: gate.wait(30) and charge(request, context)
    orders = shop.orders()
    with ThreadPoolExecutor(1) as pool:
        placing = pool.submit(place, orders)
        harness.eventually(lambda: shop.payment_faults.requests("Charge"), what="the Charge")
        order_id = shop.payment_faults.requests("Charge")[0].order_id

        error = refused(cancel, orders, order_id)
        gate.set()
        placed = placing.result()

    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_IN_PROGRESS")
    assert placed.status == pb.CONFIRMED


@harness.sqlite_only
def test_unknown_order_cannot_be_cancelled(shop):
    error = refused(cancel, shop.orders(), "ord_ffffffffffffffffffffffff")
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


def test_cancel_while_payment_is_down_completes_once_it_is_back(shop):
    orders = shop.orders()
    before = stock(shop)
    order = place(orders)
    port = shop.stop_upstream("payment")

    error = refused(cancel, orders, order.id, timeout=5)

    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    assert error.metadata["order_id"] == order.id
    assert orders.GetOrder(pb.GetOrderRequest(order_id=order.id), timeout=10).status == pb.CONFIRMED

    shop.restart_upstream("payment", port)
    harness.eventually(
        lambda: orders.GetOrder(pb.GetOrderRequest(order_id=order.id), timeout=10).status == pb.CANCELLED,
        what="recovery completing the cancellation",
    )
    assert payments_of(shop, order.id) == [(order.payment_id, pay.REFUNDED)]
    assert stock(shop) == before
