"""Idempotency-Key on CreateOrder, on SQLite and PostgreSQL: a retry never
makes a second order or charge, and answers with the first one's outcome."""

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from plumbing.errors import from_rpc_error
from shop.inventory.v1 import inventory_pb2 as inv
from shop.order.v1 import order_pb2 as pb
from shop.payment.v1 import payment_pb2 as pay
from tests import harness


def request(customer_id="C1", items=(("P001", 1),), payment_method=""):
    return pb.CreateOrderRequest(
        customer_id=customer_id,
        items=[pb.Item(product_id=p, quantity=q) for p, q in items],
        payment_method=payment_method,
    )


def with_key(key):
    return [("idempotency-key", key)]


def outcome(orders, create_request, key, timeout=10):
    """("order", Order) or ("error", the ShopError it answered)."""
    try:
        return "order", orders.CreateOrder(create_request, timeout=timeout, metadata=with_key(key))
    except grpc.RpcError as error:
        return "error", from_rpc_error(error)


def available(shop, product_id):
    return shop.inventory_stub().GetProduct(inv.GetProductRequest(product_id=product_id), timeout=10).available


def payments_of(shop, order_id):
    return list(shop.payment_stub().ListPayments(pay.ListPaymentsRequest(order_id=order_id), timeout=10).payments)


def all_orders(orders):
    return list(orders.ListOrders(pb.ListOrdersRequest(page_size=200), timeout=10).orders)


def test_same_key_sent_twenty_times_at_once_makes_one_order_and_one_charge(shop):
    orders = shop.orders()
    before = available(shop, "P002")
    start = threading.Barrier(20)

    def place(_):
        start.wait()
        return outcome(orders, request(items=[("P002", 2)]), "key-twenty")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(place, range(20)))

    assert {kind for kind, _ in results} == {"order"}, results
    assert {order.id for _, order in results} == {results[0][1].id}
    assert {order.status for _, order in results} == {pb.CONFIRMED}
    order_id = results[0][1].id
    assert [o.id for o in all_orders(orders)] == [order_id]
    assert len(shop.payment_faults.requests("Charge")) == 1
    assert len(shop.inventory_faults.requests("Reserve")) == 1
    assert [p.status for p in payments_of(shop, order_id)] == [pay.CAPTURED]
    assert available(shop, "P002") == before - 2


def test_same_key_with_a_different_body_is_refused(shop):
    orders = shop.orders()
    first = orders.CreateOrder(request(items=[("P001", 1)]), timeout=10, metadata=with_key("key-1"))

    kind, error = outcome(orders, request(items=[("P001", 2)]), "key-1")

    assert kind == "error"
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")
    assert [o.id for o in all_orders(orders)] == [first.id]


def test_a_key_reused_with_a_different_body_names_the_order_it_belongs_to(shop):
    orders = shop.orders()
    first = orders.CreateOrder(request(items=[("P001", 1)]), timeout=10, metadata=with_key("key-named"))

    _, error = outcome(orders, request(items=[("P003", 1)]), "key-named")

    assert error.reason == "IDEMPOTENCY_KEY_REUSED"
    assert error.metadata == {"order_id": first.id}


@harness.sqlite_only
def test_flat_and_items_forms_of_one_request_are_the_same_request(shop):
    orders = shop.orders()
    first = orders.CreateOrder(request(items=[("P001", 3)]), timeout=10, metadata=with_key("key-forms"))
    flat = pb.CreateOrderRequest(customer_id="C1", product_id="P001", quantity=3, payment_method="tok_visa")

    again = orders.CreateOrder(flat, timeout=10, metadata=with_key("key-forms"))

    assert again == first


def test_retry_after_a_confirmed_order_returns_the_order(shop):
    orders = shop.orders()
    first = orders.CreateOrder(request(), timeout=10, metadata=with_key("key-ok"))
    before = available(shop, "P001")

    again = orders.CreateOrder(request(), timeout=10, metadata=with_key("key-ok"))

    assert again == first
    assert available(shop, "P001") == before
    assert len(shop.payment_faults.requests("Charge")) == 1


@pytest.mark.parametrize(
    "create_request",
    [request(payment_method="tok_chargeDeclined"), request(items=[("P001", 500)])],
    ids=["declined", "out-of-stock"],
)
def test_retry_after_a_failure_returns_the_very_same_error(shop, create_request):
    orders = shop.orders()
    kind, first = outcome(orders, create_request, "key-failed")
    assert kind == "error" and first.metadata["order_id"]

    kind, again = outcome(orders, create_request, "key-failed")

    assert kind == "error"
    assert (again.code, again.reason, again.message, again.metadata) == (
        first.code,
        first.reason,
        first.message,
        first.metadata,
    )
    assert len(all_orders(orders)) == 1
    assert len(shop.payment_faults.requests("Charge")) <= 1


@harness.sqlite_only
def test_keys_are_scoped_to_the_customer(shop):
    orders = shop.orders()
    first = orders.CreateOrder(request(customer_id="C1"), timeout=10, metadata=with_key("shared"))
    second = orders.CreateOrder(request(customer_id="C2"), timeout=10, metadata=with_key("shared"))

    assert first.id != second.id
    assert second.status == pb.CONFIRMED


def test_duplicate_of_a_pending_order_waits_for_its_outcome_or_says_in_use(shop, monkeypatch):
    harness.widen_answer_margin(monkeypatch, 1.0)
    gate = threading.Event()

    def slow_charge(charge_request, context, charge):
        gate.wait(30)
        return charge(charge_request, context)

    shop.payment_faults.rules["Charge"] = slow_charge
    orders = shop.orders()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(outcome, orders, request(), "key-pending", 30)
        harness.eventually(lambda: shop.payment_faults.requests("Charge"), what="the first Charge")
        patient = pool.submit(outcome, orders, request(), "key-pending", 30)

        # While the first is held, a duplicate with a short deadline gives up.
        kind, in_use = outcome(orders, request(), "key-pending", timeout=2)
        gate.set()
        first_kind, placed = first.result()
        patient_kind, waited = patient.result()

    assert kind == "error"
    assert (in_use.code, in_use.reason) == (grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_IN_USE")
    assert (first_kind, patient_kind) == ("order", "order")
    assert in_use.metadata["order_id"] == placed.id
    assert waited == placed and placed.status == pb.CONFIRMED
    assert len(shop.payment_faults.requests("Charge")) == 1


def create_order_calls(metric) -> float:
    """How many CreateOrder calls this process's servers have started or
    finished (every code), from the go-grpc-prometheus counters."""
    return sum(
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("grpc_method") == "CreateOrder"
    )


@harness.sqlite_only
def test_a_waiting_duplicate_frees_its_server_thread_once_its_caller_is_gone(database_url, sqlite_url):
    from plumbing import metrics

    # With no deadline of its own, a duplicate could wait as long as the
    # saga may take (two upstream calls of 30 s): its caller leaving ends it.
    shop = harness.OrderShop.start(database_url, sqlite_url, downstream_timeout_s=30.0)
    gate = threading.Event()
    shop.payment_faults.rules["Charge"] = harness.held_until(gate, 60)
    orders = shop.orders()
    started, handled = create_order_calls(metrics.server_started), create_order_calls(metrics.server_handled)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(outcome, orders, request(), "key-gone", 60)
            harness.eventually(lambda: shop.payment_faults.requests("Charge"), what="the first Charge")
            duplicate = orders.CreateOrder.future(request(), metadata=with_key("key-gone"))
            harness.eventually(
                lambda: create_order_calls(metrics.server_started) == started + 2, what="the duplicate arriving"
            )
            duplicate.cancel()
            # The first is still held at its Charge, and the duplicate is done.
            harness.eventually(
                lambda: create_order_calls(metrics.server_handled) == handled + 1, what="the duplicate ending"
            )
            assert not first.done()
            gate.set()
            assert first.result()[0] == "order"
    finally:
        gate.set()
        shop.stop()
