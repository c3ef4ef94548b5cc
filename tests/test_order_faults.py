"""Upstreams down or too slow, on SQLite and PostgreSQL: the order service
answers before its caller's deadline with an error naming the order, and the
order ends final - never charged-but-failed, never confirmed-but-uncharged -
once the upstream answers again."""

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from order_svc import recovery
from plumbing.errors import from_rpc_error
from shop.inventory.v1 import inventory_pb2 as inv
from shop.order.v1 import order_pb2 as pb
from shop.payment.v1 import payment_pb2 as pay
from tests import harness

FINAL = (pb.CONFIRMED, pb.PAYMENT_FAILED, pb.FAILED, pb.CANCELLED)

@pytest.fixture
def shop(database_url, sqlite_url):
    # Overrides conftest's: upstream calls give up after 1 s here.
    shop = harness.OrderShop.start(database_url, sqlite_url, downstream_timeout_s=1.0)
    yield shop
    shop.stop()


def refused_order(orders, timeout, items=(("P001", 2), ("P002", 1))):
    """The error CreateOrder answered with; the caller's own deadline
    passing would show as DEADLINE_EXCEEDED with no order id."""
    request = pb.CreateOrderRequest(customer_id="C1", items=[pb.Item(product_id=p, quantity=q) for p, q in items])
    with pytest.raises(grpc.RpcError) as info:
        orders.CreateOrder(request, timeout=timeout)
    return from_rpc_error(info.value)


def stock(shop, *product_ids):
    products = shop.inventory_stub().ListProducts(inv.ListProductsRequest(), timeout=10).products
    return {p.product_id: p.available for p in products if p.product_id in product_ids}


def payments_of(shop, order_id):
    return list(shop.payment_stub().ListPayments(pay.ListPaymentsRequest(order_id=order_id), timeout=10).payments)


def final_order(orders, order_id):
    def final():
        order = orders.GetOrder(pb.GetOrderRequest(order_id=order_id), timeout=10)
        return order if order.status in FINAL else None

    return harness.eventually(final, what=f"order {order_id} reaching a final status")


@harness.sqlite_only
def test_inventory_down_fails_the_order_quickly_with_nothing_reserved_or_charged(shop):
    before = stock(shop, "P001", "P002")
    port = shop.stop_upstream("inventory")

    error = refused_order(shop.orders(), timeout=10)

    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    order_id = error.metadata["order_id"]
    assert order_id in error.message
    shop.restart_upstream("inventory", port)
    order = final_order(shop.orders(), order_id)
    assert order.status == pb.FAILED
    assert stock(shop, "P001", "P002") == before
    assert payments_of(shop, order_id) == []
    assert shop.payment_faults.requests("Charge") == []


def test_payment_down_settles_the_order_failed_with_nothing_charged_and_stock_back(shop):
    before = stock(shop, "P001", "P002")
    port = shop.stop_upstream("payment")

    error = refused_order(shop.orders(), timeout=10)

    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    order_id = error.metadata["order_id"]
    # The Charge's outcome is unknown until payment answers: the stock stays
    # reserved until then, and the order with it.
    assert shop.orders().GetOrder(pb.GetOrderRequest(order_id=order_id), timeout=10).status == pb.PENDING

    shop.restart_upstream("payment", port)
    order = final_order(shop.orders(), order_id)
    assert order.status == pb.FAILED
    assert stock(shop, "P001", "P002") == before
    assert [p.status for p in payments_of(shop, order_id) if p.status == pay.CAPTURED] == []
    # Settled by Void, which makes payment refuse this order's Charge for good.
    assert [r.order_id for r in shop.payment.servicer.requests("Void")] == [order_id]


def test_payment_slower_than_the_deadline_never_leaves_a_charge_on_a_failed_order(shop, monkeypatch):
    harness.widen_answer_margin(monkeypatch, 1.0)
    before = stock(shop, "P001", "P002")
    gate = threading.Event()
    shop.payment_faults.rules["Charge"] = harness.held_until(gate)
    shop.payment_faults.rules["Void"] = harness.held_until(gate)

    error = refused_order(shop.orders(), timeout=2)

    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
    order_id = error.metadata["order_id"]
    gate.set()  # payment answers again: the late Charge and the Voids go through
    order = final_order(shop.orders(), order_id)
    assert order.status == pb.FAILED
    harness.eventually(lambda: shop.payment_faults.answered("Charge"), what="the late Charge being handled")
    assert stock(shop, "P001", "P002") == before
    statuses = [p.status for p in payments_of(shop, order_id)]
    assert pay.CAPTURED not in statuses, statuses


@harness.sqlite_only
def test_inventory_slower_than_the_deadline_fails_the_order_and_returns_any_stock(shop, monkeypatch):
    harness.widen_answer_margin(monkeypatch, 1.0)
    before = stock(shop, "P001", "P002")
    gate = threading.Event()
    shop.inventory_faults.rules["Reserve"] = harness.held_until(gate)

    error = refused_order(shop.orders(), timeout=2)

    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
    order_id = error.metadata["order_id"]
    order = final_order(shop.orders(), order_id)
    assert order.status == pb.FAILED
    gate.set()  # the late Reserve arrives after the Release: refused
    harness.eventually(lambda: shop.inventory_faults.answered("Reserve"), what="the late Reserve being handled")
    assert stock(shop, "P001", "P002") == before
    assert payments_of(shop, order_id) == []


def test_retry_after_a_timeout_learns_the_outcome_with_the_same_error(shop, monkeypatch):
    harness.widen_answer_margin(monkeypatch, 1.0)
    gate = threading.Event()
    shop.payment_faults.rules["Charge"] = harness.held_until(gate)
    request = pb.CreateOrderRequest(customer_id="C1", items=[pb.Item(product_id="P003", quantity=1)])
    key = [("idempotency-key", "retry-after-504")]
    with pytest.raises(grpc.RpcError) as info:
        shop.orders().CreateOrder(request, timeout=2, metadata=key)
    first = from_rpc_error(info.value)
    gate.set()
    final_order(shop.orders(), first.metadata["order_id"])

    with pytest.raises(grpc.RpcError) as info:
        shop.orders().CreateOrder(request, timeout=10, metadata=key)

    again = from_rpc_error(info.value)
    assert (again.code, again.reason, again.message, again.metadata) == (
        first.code,
        first.reason,
        first.message,
        first.metadata,
    )


def unknown_outcome(request, context, method):
    """A rule: the upstream drops the call, so whether it happened is unknown."""
    context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")


def settling_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("order-settle")}


@harness.sqlite_only
def test_background_settling_runs_on_a_fixed_pool_and_leaves_the_overflow_to_recovery(
    database_url, sqlite_url, monkeypatch, caplog
):
    monkeypatch.setattr(recovery, "SETTLING_BACKLOG", 2 * recovery.SETTLING_WORKERS)
    # Held Voids must not time out while the test counts them; no recovery yet.
    shop = harness.OrderShop.start(database_url, sqlite_url, downstream_timeout_s=30.0, recover=False)
    gate = threading.Event()
    earlier = settling_threads()
    try:
        before = stock(shop, "P001")["P001"]
        shop.payment_faults.rules["Charge"] = unknown_outcome
        shop.payment_faults.rules["Void"] = harness.held_until(gate)
        orders = shop.orders()
        count = 3 * recovery.SETTLING_WORKERS
        with ThreadPoolExecutor(count) as pool:
            errors = list(pool.map(lambda _: refused_order(orders, 30, items=(("P001", 1),)), range(count)))
        assert {error.code for error in errors} == {grpc.StatusCode.UNAVAILABLE}
        # Every order is answered and awaits its Void: the pool's threads hold
        # as many, the backlog as many again, and the rest wait for recovery.
        harness.eventually(
            lambda: len(shop.payment_faults.requests("Void")) == recovery.SETTLING_WORKERS, what="the first Voids"
        )
        assert len(settling_threads() - earlier) == recovery.SETTLING_WORKERS
        left = [r.order_id for r in caplog.records if r.getMessage() == "order left for recovery"]
        assert len(left) == count - recovery.SETTLING_BACKLOG
        gate.set()
        shop.start_order(recover=True)
        settled = [final_order(orders, error.metadata["order_id"]) for error in errors]
        assert {order.status for order in settled} == {pb.FAILED}
        assert stock(shop, "P001")["P001"] == before
        assert len(settling_threads() - earlier) <= recovery.SETTLING_WORKERS
    finally:
        gate.set()
        shop.stop()


# The order service's own database away


@pytest.fixture
def shop_on_private_postgres(private_postgres, sqlite_url):
    """Orders on a PostgreSQL cluster the test may stop; inventory and payment on SQLite."""
    shop = harness.OrderShop.start(private_postgres.new_database, sqlite_url)
    yield shop
    shop.stop()


def test_its_database_lost_after_the_charge_is_503_naming_the_order_that_recovery_then_confirms(
    shop_on_private_postgres, private_postgres
):
    shop = shop_on_private_postgres
    gate = threading.Event()
    shop.payment_faults.rules["Charge"] = harness.held_until(gate)
    orders = shop.orders()
    request = pb.CreateOrderRequest(customer_id="C1", items=[pb.Item(product_id="P003", quantity=1)])
    placing = orders.CreateOrder.future(request, timeout=10)
    harness.eventually(lambda: shop.payment_faults.requests("Charge"), what="the Charge being sent")
    private_postgres.stop("immediate")  # a crash while the charge is in flight
    gate.set()
    with pytest.raises(grpc.RpcError) as info:
        placing.result()
    error = from_rpc_error(info.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    order_id = error.metadata["order_id"]
    assert f"order {order_id} is stored" in error.message

    private_postgres.start()
    assert final_order(orders, order_id).status == pb.CONFIRMED
    assert [p.status for p in payments_of(shop, order_id)] == [pay.CAPTURED]


def test_its_database_down_before_the_order_is_stored_is_503_and_nothing_is_reserved_or_charged(
    shop_on_private_postgres, private_postgres
):
    shop = shop_on_private_postgres
    orders = shop.orders()
    private_postgres.stop("immediate")
    error = refused_order(orders, timeout=5)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    order_id = error.metadata["order_id"]
    assert "was not placed" in error.message
    with pytest.raises(grpc.RpcError) as read:
        orders.GetOrder(pb.GetOrderRequest(order_id=order_id), timeout=5)
    assert read.value.code() == grpc.StatusCode.UNAVAILABLE
    assert from_rpc_error(read.value).metadata["order_id"] == order_id

    private_postgres.start()
    with pytest.raises(grpc.RpcError) as read:
        orders.GetOrder(pb.GetOrderRequest(order_id=order_id), timeout=5)
    assert read.value.code() == grpc.StatusCode.NOT_FOUND
    assert shop.inventory_faults.requests("Reserve") == []
    assert shop.payment_faults.requests("Charge") == []
