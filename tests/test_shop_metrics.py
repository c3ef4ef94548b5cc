"""The shop's own metrics, counted by the services that own the facts: orders
by final status and their saga's duration, recoveries by outcome, the oldest
PENDING order, payments by status and decline reason, stock adjustments, and
each service's health. Counted once per fact, however often a step is retried."""

import datetime as dt

import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from order_svc.model import Order, OrderItem, OrderStatus, Step
from order_svc.store import OrderStore, orders
from plumbing import db
from plumbing.server import Service, ShopServer
from shop.inventory.v1 import inventory_pb2 as inv
from shop.order.v1 import order_pb2 as pb
from shop.payment.v1 import payment_pb2 as pay
from tests import harness
from tests.test_order_placement import place, refused


class Counts:
    """Samples of REGISTRY, read before and after: what a test changed."""

    def __init__(self, *samples: tuple[str, dict]):
        self.samples = samples
        self.before = [self._value(s) for s in samples]

    @staticmethod
    def _value(sample) -> float:
        name, labels = sample
        value = REGISTRY.get_sample_value(name, labels)
        assert value is not None, f"{name}{labels} is not exposed"
        return value

    def changes(self) -> list[float]:
        return [self._value(s) - before for s, before in zip(self.samples, self.before, strict=True)]


def orders_ended(status: str) -> tuple[str, dict]:
    return "shop_orders_total", {"status": status}


def sagas_timed(status: str) -> tuple[str, dict]:
    return "shop_order_saga_duration_seconds_count", {"status": status}


@harness.sqlite_only
def test_each_order_is_counted_once_by_its_final_status_with_its_saga_duration(shop):
    counts = Counts(
        *(orders_ended(s) for s in ("CONFIRMED", "PAYMENT_FAILED", "FAILED", "CANCELLED")),
        *(sagas_timed(s) for s in ("CONFIRMED", "PAYMENT_FAILED", "FAILED")),
    )
    orders_stub = shop.orders()
    confirmed = place(orders_stub, metadata=[("idempotency-key", "k-confirmed")])
    # A retry answers the same order: nothing new ends.
    place(orders_stub, metadata=[("idempotency-key", "k-confirmed")])
    refused(place, orders_stub, payment_method="tok_chargeDeclined")
    refused(place, orders_stub, items=(("P001", 1000),))
    orders_stub.CancelOrder(pb.CancelOrderRequest(order_id=confirmed.id), timeout=10)
    orders_stub.CancelOrder(pb.CancelOrderRequest(order_id=confirmed.id), timeout=10)
    # The cancelled order was CONFIRMED first: counted under each. A
    # cancellation is no placement: it has no saga duration of its own.
    assert counts.changes() == [1, 1, 1, 1, 1, 1, 1]


@harness.sqlite_only
def test_payments_are_counted_by_status_and_decline_reason_once_each(shop):
    counts = Counts(
        ("shop_payments_total", {"status": "CAPTURED", "decline_reason": ""}),
        ("shop_payments_total", {"status": "DECLINED", "decline_reason": "card_declined"}),
        ("shop_payments_total", {"status": "DECLINED", "decline_reason": "insufficient_funds"}),
        ("shop_payments_total", {"status": "REFUNDED", "decline_reason": ""}),
    )
    payment = shop.payment_stub()
    for order_id, method in (("o-paid", "tok_visa"), ("o-declined", "tok_chargeDeclined")):
        charge = pay.ChargeRequest(order_id=order_id, amount_cents=1000, currency="USD", payment_method=method)
        payment.Charge(charge, timeout=10)
        payment.Charge(charge, timeout=10)  # a retry finds the first payment
    payment.Refund(pay.RefundRequest(order_id="o-paid"), timeout=10)
    payment.Refund(pay.RefundRequest(order_id="o-paid"), timeout=10)
    payment.Void(pay.VoidRequest(order_id="o-paid"), timeout=10)  # refunded already
    assert counts.changes() == [1, 1, 0, 1]


@harness.sqlite_only
def test_a_void_that_refunds_a_capture_counts_the_refund(shop):
    counts = Counts(("shop_payments_total", {"status": "REFUNDED", "decline_reason": ""}))
    payment = shop.payment_stub()
    charge = pay.ChargeRequest(order_id="o-voided", amount_cents=500, currency="USD", payment_method="tok_visa")
    payment.Charge(charge, timeout=10)
    payment.Void(pay.VoidRequest(order_id="o-voided"), timeout=10)
    payment.Void(pay.VoidRequest(order_id="o-voided"), timeout=10)
    assert counts.changes() == [1]


@harness.sqlite_only
def test_stock_adjustments_are_counted_by_direction_with_their_units(shop):
    counts = Counts(
        ("shop_stock_adjustments_total", {"direction": "increase"}),
        ("shop_stock_adjusted_units_total", {"direction": "increase"}),
        ("shop_stock_adjustments_total", {"direction": "decrease"}),
        ("shop_stock_adjusted_units_total", {"direction": "decrease"}),
    )
    inventory = shop.inventory_stub()
    inventory.AdjustStock(inv.AdjustStockRequest(product_id="P001", delta=25, reason="restock"), timeout=10)
    inventory.AdjustStock(inv.AdjustStockRequest(product_id="P001", delta=-3, reason="damaged"), timeout=10)
    # Refused (below zero): nothing applied, nothing counted.
    refused(inventory.AdjustStock, inv.AdjustStockRequest(product_id="P001", delta=-100000, reason="x"), timeout=10)
    assert counts.changes() == [1, 25, 1, 3]


@pytest.fixture
def shop_without_order(database_url, sqlite_url):
    shop = harness.OrderShop.start(database_url, sqlite_url, with_order=False)
    yield shop
    shop.stop()


@harness.sqlite_only
def test_a_recovery_pass_measures_the_oldest_pending_order_before_ending_it(shop_without_order):
    shop = shop_without_order
    oldest_pending = ("shop_oldest_pending_order_age_seconds", {})
    counts = Counts(("shop_order_recoveries_total", {"outcome": "failed"}), orders_ended("FAILED"))
    # Recovery by hand, one pass at a time.
    saga = shop.start_order(recover=False).servicer.saga
    saga.recovery.recover_stuck_orders()
    assert REGISTRY.get_sample_value(*oldest_pending) == 0

    # Left at its first step by a process now gone, two minutes ago.
    engine = db.open_engine(shop.urls["order"])
    try:
        stuck = Order(
            id="ord_stuck",
            customer_id="C1",
            status=OrderStatus.PENDING,
            step=Step.RESERVING,
            items=(OrderItem("P001", 1),),
            payment_method="tok_visa",
        )
        now = dt.datetime.now(dt.UTC)
        OrderStore(engine).create(stuck, "", "fingerprint", "a-process-now-gone", now - dt.timedelta(seconds=1))
        with engine.begin() as conn:
            conn.execute(
                orders.update()
                .where(orders.c.id == stuck.id)
                .values(created_at=now - dt.timedelta(seconds=120), updated_at=now - dt.timedelta(seconds=120))
            )
    finally:
        engine.dispose()

    # Nothing was charged, so recovery voids and fails the order.
    assert saga.recovery.recover_stuck_orders() == 1
    assert REGISTRY.get_sample_value(*oldest_pending) >= 120
    assert saga.get_order(stuck.id).status == "FAILED"
    assert counts.changes() == [1, 1]
    saga.recovery.recover_stuck_orders()
    assert REGISTRY.get_sample_value(*oldest_pending) == 0


def test_a_services_health_is_mirrored_in_a_gauge_until_it_drains(sqlite_url):
    from inventory_svc.server import SERVICE_NAME, InventoryServicer
    from inventory_svc.store import InventoryStore
    from shop.inventory.v1 import inventory_pb2_grpc

    engine = db.open_engine(sqlite_url("inventory"))
    service = Service(
        SERVICE_NAME, InventoryServicer(InventoryStore(engine)), inventory_pb2_grpc.add_InventoryServiceServicer_to_server
    )
    server = ShopServer([service], 0, host="127.0.0.1").start()
    serving = ("shop_grpc_serving", {"grpc_service": SERVICE_NAME})
    try:
        assert REGISTRY.get_sample_value(*serving) == 1
        server.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert REGISTRY.get_sample_value(*serving) == 0
        server.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        server.begin_shutdown()
        assert REGISTRY.get_sample_value(*serving) == 0
        server.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)  # ignored while draining
        assert REGISTRY.get_sample_value(*serving) == 0
    finally:
        server.stop(0)
        engine.dispose()
