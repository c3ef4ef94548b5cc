"""The order saga's engine driven with in-memory fakes (tests/saga_fakes.py):
no gRPC, no database. Each step - Reserve, Charge, Confirm, Void, Release,
Refund - answers, refuses, or leaves its outcome unknown; every compensation
returns the stock and leaves nothing charged; retries with an idempotency
key replay the first outcome; and recovery finishes an order left at any
step by a process now gone."""

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import REGISTRY

from order_svc.model import Failure, Order, OrderItem, OrderRequest, OrderStatus, PaymentStatus, Price, Step
from order_svc.saga import OrderSaga
from order_svc.upstream import Payment, Refused
from plumbing.config import OrderConfig
from plumbing.deadlines import MARGIN_S, deadline_var
from plumbing.errors import ShopError, database_unavailable, failed_precondition
from plumbing.identity import Caller
from tests.saga_fakes import Clock, FakeInventory, FakePayments, MemoryStore, unsettled

PENDING, CONFIRMED, FAILED = OrderStatus.PENDING, OrderStatus.CONFIRMED, OrderStatus.FAILED
PAYMENT_FAILED, CANCELLED = OrderStatus.PAYMENT_FAILED, OrderStatus.CANCELLED
PRICES = {
    "P001": Price(1999, "USD"),
    "P002": Price(500, "USD"),
    "E001": Price(700, "EUR"),
    "FREE": Price(0, "USD"),
}
STOCK = 10
# The lease owner of a request, or a process, that left an order behind.
GONE = "a-process-now-gone"
# Longer than any lease the saga takes (downstream_timeout_s below) and recovery_after_s.
LATER_S = 60


@dataclass
class Shop:
    clock: Clock
    store: MemoryStore
    inventory: FakeInventory
    payments: FakePayments
    saga: OrderSaga

    def order(self, order_id: str) -> Order:
        return self.store.orders[order_id]

    def only_order(self) -> Order:
        (order,) = self.store.orders.values()
        return order

    def recover(self) -> int:
        """One recovery pass, once every lease taken so far has lapsed."""
        self.clock.advance(LATER_S)
        return self.saga.recovery.recover_stuck_orders()

    def settled(self, order_id: str) -> Order:
        """The order once its background settling is over: at a final
        status, or left for recovery (its lease given up)."""
        wait_until(lambda: self.order(order_id).status != PENDING or self.store.lease_owner(order_id) is None)
        return self.order(order_id)


def recoveries(outcome: str) -> float:
    """How many recovery attempts ended so (shop_order_recoveries_total)."""
    return REGISTRY.get_sample_value("shop_order_recoveries_total", {"outcome": outcome}) or 0.0


def wait_until(condition, timeout_s: float = 10.0) -> None:
    """Background settling runs on the saga's pool; the timeout only bounds a hung test."""
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, "background settling never finished"
        time.sleep(0.002)


@pytest.fixture
def shop():
    clock = Clock()
    store = MemoryStore(clock)
    inventory = FakeInventory(PRICES, dict.fromkeys(PRICES, STOCK))
    payments = FakePayments()
    config = OrderConfig("unused:1", "unused:1", downstream_timeout_s=0.2, recovery_after_s=1.0)
    saga = OrderSaga(store, inventory, payments, config, clock=clock)
    yield Shop(clock, store, inventory, payments, saga)
    saga.close()


def request(
    *items: tuple[str, int], method: str = "tok_visa", key: str = "", customer: str = "C1"
) -> OrderRequest:
    return OrderRequest(customer, items or (("P001", 2),), method, key)


def refused_order(shop: Shop, order_request: OrderRequest, **kwargs) -> ShopError:
    with pytest.raises(ShopError) as raised:
        shop.saga.place_order(order_request, **kwargs)
    return raised.value


def assert_nothing_kept(shop: Shop, order: Order) -> None:
    """Compensated: all stock back, and no capture left."""
    assert all(shop.inventory.stock[p] == STOCK for p in PRICES)
    assert shop.payments.status(order.id) != PaymentStatus.CAPTURED
    assert order.step == Step.AT_REST and shop.store.lease_owner(order.id) is None


# Placing: every step answers


def test_an_order_is_reserved_at_the_inventorys_prices_charged_and_confirmed(shop):
    order = shop.saga.place_order(request(("P001", 2), ("P002", 1)))
    assert (order.status, order.step, order.total_cents, order.currency) == (
        CONFIRMED,
        Step.AT_REST,
        4498,
        "USD",
    )
    assert [(i.unit_price_cents, i.currency) for i in order.items] == [(1999, "USD"), (500, "USD")]
    assert shop.order(order.id) == order
    assert order.payment_id == shop.payments.by_order[order.id][0].id
    assert shop.payments.status(order.id) == PaymentStatus.CAPTURED
    assert shop.payments.amounts[order.id] == 4498
    assert (shop.inventory.stock["P001"], shop.inventory.stock["P002"]) == (STOCK - 2, STOCK - 1)
    assert shop.inventory.calls == [("reserve", order.id)]
    assert shop.payments.calls == [("charge", order.id)]
    assert shop.store.lease_owner(order.id) is None


def test_an_order_with_nothing_to_charge_is_confirmed_without_a_charge(shop):
    order = shop.saga.place_order(request(("FREE", 1)))
    assert (order.status, order.payment_id, order.total_cents) == (CONFIRMED, "", 0)
    assert shop.payments.calls == []


# Reserve


def test_a_refused_reserve_fails_the_order_with_the_inventorys_reason_and_charges_nothing(shop):
    error = refused_order(shop, request(("P001", STOCK + 1)))
    order = shop.only_order()
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK")
    assert error.metadata == {"product_id": "P001", "order_id": order.id}
    assert error.message == f"P001: {STOCK + 1} requested, {STOCK} available"
    assert (order.status, order.failure) == (FAILED, Failure.of(error))
    assert shop.payments.calls == []
    # All or nothing: nothing was held, so there is nothing to release.
    assert shop.inventory.calls == [("reserve", order.id)]
    assert_nothing_kept(shop, order)


@pytest.mark.parametrize("done", [False, True], ids=["lost-request", "lost-answer"])
@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_a_reserve_without_an_answer_fails_the_order_at_once_and_returns_any_stock_held(shop, code, done):
    shop.inventory.faults.add("reserve", unsettled("inventory", code), done=done)
    error = refused_order(shop, request())
    order_id = shop.only_order().id
    assert (error.code, error.reason) == (code, code.name)
    assert error.metadata == {"order_id": order_id, "service": "inventory"}
    assert error.message.endswith(
        f"order {order_id} failed: nothing was charged and any stock held for it will be returned"
    )
    order = shop.settled(order_id)
    assert (order.status, order.failure) == (FAILED, Failure.of(error))
    assert shop.inventory.calls == [("reserve", order_id), ("release", order_id)]
    assert shop.payments.calls == []
    assert_nothing_kept(shop, order)


def test_items_priced_in_two_currencies_fail_the_order_and_return_the_stock(shop):
    error = refused_order(shop, request(("P001", 1), ("E001", 1)))
    assert (error.reason, error.metadata["currencies"]) == ("MIXED_CURRENCIES", "EUR, USD")
    order = shop.only_order()
    assert order.status == FAILED
    assert [i.currency for i in order.items] == ["USD", "EUR"]
    assert shop.payments.calls == []
    assert_nothing_kept(shop, order)


# Charge


def test_a_declined_charge_keeps_the_order_as_payment_failed_and_returns_the_stock(shop):
    error = refused_order(shop, request(method="tok_chargeDeclined"))
    order = shop.only_order()
    payment_id = shop.payments.by_order[order.id][0].id
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_DECLINED")
    assert error.metadata == {
        "order_id": order.id,
        "payment_id": payment_id,
        "decline_reason": "card_declined",
    }
    assert (order.status, order.payment_id, order.failure) == (PAYMENT_FAILED, payment_id, Failure.of(error))
    assert shop.payments.status(order.id) == PaymentStatus.DECLINED
    assert_nothing_kept(shop, order)


def test_a_refused_charge_fails_the_order_with_payments_error_and_returns_the_stock(shop):
    error = refused_order(shop, request(method="pm_neverissued"))
    order = shop.only_order()
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert error.metadata == {"order_id": order.id}
    assert error.violations == [("payment_method", "is not a known test token")]
    assert (order.status, order.failure) == (FAILED, Failure.of(error))
    assert shop.payments.status(order.id) is None
    assert_nothing_kept(shop, order)


@pytest.mark.parametrize("done", [False, True], ids=["lost-request", "captured-answer-lost"])
def test_a_charge_without_an_answer_fails_the_order_then_voids_it_before_returning_the_stock(shop, done):
    shop.payments.faults.add("charge", unsettled("payment", grpc.StatusCode.DEADLINE_EXCEEDED), done=done)
    error = refused_order(shop, request())
    order_id = shop.only_order().id
    assert (error.code, error.metadata) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        {"order_id": order_id, "service": "payment"},
    )
    assert error.message == (
        f"payment did not answer in time; order {order_id} failed: any charge will be voided and its stock returned"
    )
    order = shop.settled(order_id)
    assert order.status == FAILED
    assert shop.payments.calls == [("charge", order_id), ("void", order_id)]
    assert shop.payments.status(order_id) == (PaymentStatus.REFUNDED if done else None)
    assert_nothing_kept(shop, order)
    # The Void is final: a Charge still on its way is refused.
    with pytest.raises(Refused):
        shop.payments.charge(order, False)


def test_a_charge_answered_with_a_refunded_payment_fails_the_order(shop, monkeypatch):
    # A Void (of a recovery that thought the request gone) got there first.
    monkeypatch.setattr(shop.payments, "_charge", lambda order: Payment("pay_voided", PaymentStatus.REFUNDED))
    error = refused_order(shop, request())
    order = shop.only_order()
    assert (error.reason, error.metadata["payment_id"]) == ("PAYMENT_NOT_CAPTURED", "pay_voided")
    assert f"payment pay_voided of order {order.id} is REFUNDED" in error.message
    assert (order.status, order.payment_id) == (FAILED, "pay_voided")
    assert_nothing_kept(shop, order)


# Confirm


def test_the_database_failing_at_confirm_answers_unavailable_and_recovery_confirms_the_charged_order(shop):
    # The confirmation is the order's first write after it was stored.
    shop.store.fail_next("advance", database_unavailable("the order database is restarting"))
    error = refused_order(shop, request())
    order = shop.only_order()
    assert (error.code, error.metadata) == (
        grpc.StatusCode.UNAVAILABLE,
        {"order_id": order.id, "service": "order database"},
    )
    assert error.message.endswith("is stored, and will be completed or compensated shortly")
    assert (order.status, order.step) == (PENDING, Step.RESERVING)

    assert shop.recover() == 1
    order = shop.order(order.id)
    assert (order.status, order.total_cents) == (CONFIRMED, 2 * 1999)
    assert order.payment_id == shop.payments.by_order[order.id][0].id
    # Reserve is idempotent: asked again for the prices, it holds nothing more.
    assert shop.inventory.stock["P001"] == STOCK - 2
    assert [c for c, _ in shop.payments.calls] == ["charge", "payments"]


def test_an_order_taken_over_mid_saga_answers_the_outcome_its_new_owner_reached(shop, monkeypatch):
    charge = shop.payments._charge

    def charge_then_lose_the_order(order):
        payment = charge(order)
        # Meanwhile another actor took the order over, and confirmed it.
        shop.store.take_over(order.id)
        shop.store.advance(
            order.id,
            (PENDING, Step.RESERVING),
            None,
            None,
            status=CONFIRMED,
            step=Step.AT_REST,
            payment_id=payment.id,
        )
        return payment

    monkeypatch.setattr(shop.payments, "_charge", charge_then_lose_the_order)
    order = shop.saga.place_order(request())
    assert order.status == CONFIRMED and order.payment_id == shop.payments.by_order[order.id][0].id


def test_an_order_taken_over_and_unresolved_when_its_request_ends_answers_order_unresolved(shop, monkeypatch):
    charge = shop.payments._charge

    def charge_then_lose_the_lease(order):
        shop.store.take_over(order.id)
        return charge(order)

    monkeypatch.setattr(shop.payments, "_charge", charge_then_lose_the_lease)
    error = refused_order(shop, request())
    order = shop.only_order()
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.ABORTED,
        "ORDER_UNRESOLVED",
        {"order_id": order.id},
    )
    # The request that lost its lease moved nothing.
    assert (order.status, order.step) == (PENDING, Step.RESERVING)


def test_the_database_failing_before_the_order_is_stored_places_nothing(shop):
    shop.store.fail_next("create", database_unavailable("the order database is restarting"))
    error = refused_order(shop, request())
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.message.endswith("was not placed: nothing was reserved or charged")
    assert shop.inventory.calls == [] and shop.payments.calls == []


# Void and Release, the compensations


def test_a_release_without_an_answer_still_answers_the_decline_and_is_retried_in_the_background(shop):
    shop.inventory.faults.add("release", unsettled("inventory"))
    error = refused_order(shop, request(method="tok_chargeDeclined"))
    assert error.reason == "PAYMENT_DECLINED"
    order = shop.settled(shop.only_order().id)
    assert order.status == PAYMENT_FAILED
    assert [c for c, _ in shop.inventory.calls] == ["reserve", "release", "release"]
    assert_nothing_kept(shop, order)


def test_a_release_that_stays_unanswered_leaves_the_decided_order_to_recovery(shop):
    shop.inventory.faults.add("release", unsettled("inventory"), times=2)
    error = refused_order(shop, request(method="tok_chargeDeclined"))
    order = shop.settled(shop.only_order().id)
    assert (order.status, order.step, order.outcome) == (PENDING, Step.RELEASING, PAYMENT_FAILED)
    assert order.failure == Failure.of(error)
    assert shop.inventory.stock["P001"] == STOCK - 2

    assert shop.recover() == 1
    order = shop.order(order.id)
    assert order.status == PAYMENT_FAILED and order.failure == Failure.of(error)
    assert_nothing_kept(shop, order)


def test_a_void_without_an_answer_leaves_the_order_to_recovery_which_voids_before_releasing(shop):
    shop.payments.faults.add("charge", unsettled("payment"), done=True)
    shop.payments.faults.add("void", unsettled("payment"))
    refused_order(shop, request())
    order = shop.settled(shop.only_order().id)
    assert (order.status, order.step) == (PENDING, Step.VOIDING)
    assert shop.inventory.stock["P001"] == STOCK - 2
    assert shop.payments.status(order.id) == PaymentStatus.CAPTURED

    assert shop.recover() == 1
    order = shop.order(order.id)
    assert order.status == FAILED
    assert [c for c, _ in shop.payments.calls] == ["charge", "void", "void"]
    assert shop.payments.status(order.id) == PaymentStatus.REFUNDED
    assert_nothing_kept(shop, order)


# Cancelling: Refund, then Release


def confirmed(shop: Shop, *items: tuple[str, int]) -> Order:
    order = shop.saga.place_order(request(*items))
    shop.inventory.calls.clear()
    shop.payments.calls.clear()
    return order


def test_cancelling_refunds_returns_the_stock_and_is_harmless_to_repeat(shop):
    order = confirmed(shop)
    cancelled = shop.saga.cancel_order(order.id)
    assert (cancelled.status, cancelled.step, cancelled.payment_id) == (
        CANCELLED,
        Step.AT_REST,
        order.payment_id,
    )
    assert shop.payments.status(order.id) == PaymentStatus.REFUNDED
    assert_nothing_kept(shop, cancelled)
    assert shop.payments.calls == [("refund", order.id)]
    assert shop.inventory.calls == [("release", order.id)]

    assert shop.saga.cancel_order(order.id) == cancelled
    assert len(shop.payments.calls) == 1 and len(shop.inventory.calls) == 1


def test_cancelling_an_order_with_nothing_charged_only_returns_the_stock(shop):
    order = confirmed(shop, ("FREE", 3))
    assert shop.saga.cancel_order(order.id).status == CANCELLED
    assert shop.payments.calls == []
    assert shop.inventory.stock["FREE"] == STOCK


def test_a_refused_refund_keeps_the_order_confirmed_and_names_it(shop):
    order = confirmed(shop)
    refusal = failed_precondition("NOT_REFUNDABLE", "the capture is too old to refund")
    shop.payments.faults.add("refund", Refused("payment", refusal))
    with pytest.raises(ShopError) as raised:
        shop.saga.cancel_order(order.id)
    assert (raised.value.reason, raised.value.metadata) == ("NOT_REFUNDABLE", {"order_id": order.id})
    kept = shop.order(order.id)
    assert (kept.status, kept.step) == (CONFIRMED, Step.AT_REST)
    assert shop.store.lease_owner(order.id) is None
    assert shop.inventory.calls == [] and shop.inventory.stock["P001"] == STOCK - 2
    # Refused for good: recovery does not try it again.
    assert shop.recover() == 0


@pytest.mark.parametrize("service, method", [("payment", "refund"), ("inventory", "release")])
@pytest.mark.parametrize("finisher", ["recovery", "a repeated cancel"])
def test_a_cancellation_without_an_answer_stays_confirmed_until_it_is_finished(
    shop, service, method, finisher
):
    order = confirmed(shop)
    upstream = shop.payments if service == "payment" else shop.inventory
    upstream.faults.add(method, unsettled(service))
    with pytest.raises(ShopError) as raised:
        shop.saga.cancel_order(order.id)
    assert (raised.value.code, raised.value.metadata) == (
        grpc.StatusCode.UNAVAILABLE,
        {"order_id": order.id, "service": service},
    )
    assert raised.value.message.endswith(
        f"order {order.id} is still CONFIRMED; its cancellation completes when it answers"
    )
    left = shop.order(order.id)
    assert (left.status, left.step) == (CONFIRMED, Step.CANCELLING)
    assert shop.store.lease_owner(order.id) is None

    if finisher == "recovery":
        assert shop.recover() == 1
    else:
        shop.saga.cancel_order(order.id)
    cancelled = shop.order(order.id)
    assert cancelled.status == CANCELLED
    assert shop.payments.status(order.id) == PaymentStatus.REFUNDED
    assert_nothing_kept(shop, cancelled)


def test_an_order_being_placed_or_failed_cannot_be_cancelled(shop):
    refused_order(shop, request(method="tok_chargeDeclined"))
    failed = shop.only_order()
    with pytest.raises(ShopError) as raised:
        shop.saga.cancel_order(failed.id)
    assert (raised.value.reason, raised.value.metadata) == (
        "NOT_CANCELLABLE",
        {"order_id": failed.id, "status": "PAYMENT_FAILED"},
    )
    pending = left_at(shop, Step.RESERVING)
    with pytest.raises(ShopError) as raised:
        shop.saga.cancel_order(pending.id)
    assert (raised.value.reason, raised.value.metadata) == ("ORDER_IN_PROGRESS", {"order_id": pending.id})


def test_another_customers_order_is_unknown_to_read_and_to_cancel(shop):
    order = confirmed(shop)
    for act in (shop.saga.get_order, shop.saga.cancel_order):
        with pytest.raises(ShopError) as raised:
            act(order.id, Caller("C2"))
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert shop.saga.get_order(order.id, Caller("C1")) == order
    assert shop.order(order.id).status == CONFIRMED


def test_orders_are_listed_newest_first_a_page_at_a_time(shop):
    placed = [confirmed(shop).id for _ in range(3)]
    first = shop.saga.list_orders("C1", 2, None)
    assert [o.id for o in first.orders] == placed[:0:-1]
    rest = shop.saga.list_orders("C1", 2, first.next_cursor)
    assert [o.id for o in rest.orders] == placed[:1] and rest.next_cursor is None


# Retries with an idempotency key


def test_a_retry_of_a_confirmed_order_answers_it_without_reserving_or_charging_again(shop):
    first = shop.saga.place_order(request(key="k1"))
    again = shop.saga.place_order(request(key="k1"))
    assert again == first
    assert len(shop.store.orders) == 1
    assert len(shop.inventory.calls) == 1 and len(shop.payments.calls) == 1


def test_a_retry_of_a_failed_order_answers_the_very_same_error(shop):
    first = refused_order(shop, request(method="tok_chargeDeclined", key="k1"))
    again = refused_order(shop, request(method="tok_chargeDeclined", key="k1"))
    assert (again.code, again.reason, again.message, again.metadata) == (
        first.code,
        first.reason,
        first.message,
        first.metadata,
    )
    assert len(shop.store.orders) == 1 and len(shop.payments.calls) == 1


def test_a_key_reused_with_another_request_is_refused_naming_its_order(shop):
    first = shop.saga.place_order(request(key="k1"))
    error = refused_order(shop, request(("P002", 1), key="k1"))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")
    assert error.metadata == {"order_id": first.id}
    assert error.violations == [("idempotency-key", "was already used with a different request")]
    assert len(shop.store.orders) == 1


def test_a_retry_while_the_first_attempt_is_in_flight_answers_key_in_use_once_its_caller_is_gone(shop):
    in_flight = left_at(shop, Step.RESERVING, key="k1", lease_s=LATER_S)
    error = refused_order(shop, request(key="k1"), caller_gone=lambda: True)
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.ABORTED,
        "IDEMPOTENCY_KEY_IN_USE",
        {"order_id": in_flight.id},
    )
    assert shop.inventory.calls == []


def settle_on_read(shop: Shop, monkeypatch, read: int) -> None:
    """The order's first attempt (a process now gone) ends as the store is
    read for the `read`-th time: recovery settles it just before that read."""
    get, reads = shop.store.get, []

    def get_and_settle(order_id):
        reads.append(order_id)
        if len(reads) == read:
            shop.saga.recovery.settle(get(order_id), GONE)
        return get(order_id)

    monkeypatch.setattr(shop.store, "get", get_and_settle)


def test_a_retry_waits_for_the_first_attempt_to_end_and_answers_its_outcome(shop, monkeypatch):
    in_flight = left_at(shop, Step.RESERVING, key="k1", lease_s=LATER_S)
    shop.inventory.reserve(in_flight.id, in_flight.items)
    shop.payments.charge(in_flight.priced(PRICES), False)
    # The retry has seen the order PENDING: its first attempt ends now.
    settle_on_read(shop, monkeypatch, 2)
    # The retry's caller gives it long enough to wait.
    token = deadline_var.set(time.monotonic() + LATER_S)
    try:
        retried = shop.saga.place_order(request(key="k1"))
    finally:
        deadline_var.reset(token)
    assert (retried.id, retried.status) == (in_flight.id, CONFIRMED)
    assert len(shop.store.orders) == 1


def decided_and_releasing(shop: Shop) -> tuple[Order, ShopError]:
    """An order whose payment was declined, its stock still held: its first
    attempt is still releasing it."""
    declined = failed_precondition("PAYMENT_DECLINED", "payment declined (card_declined)", order_id="ord_left")
    order = left_at(
        shop, Step.RELEASING, key="k1", outcome=PAYMENT_FAILED, failure=Failure.of(declined), lease_s=LATER_S
    )
    shop.inventory.reserve(order.id, order.items)
    return order, declined


def test_a_retry_of_an_order_whose_failure_is_decided_waits_for_its_stock_to_come_back(shop, monkeypatch):
    order, declined = decided_and_releasing(shop)
    # The retry has seen the order PENDING twice: its release ends now.
    settle_on_read(shop, monkeypatch, 3)
    error = refused_order(shop, request(key="k1"))
    assert (error.reason, error.message) == ("PAYMENT_DECLINED", declined.message)
    assert shop.order(order.id).status == PAYMENT_FAILED
    assert shop.inventory.stock["P001"] == STOCK


def test_a_retry_of_an_order_still_releasing_at_its_deadline_answers_key_in_use(shop):
    # API.md: a duplicate waits while the order is PENDING, and answers 409
    # if it still is at its deadline - a failure decided but not finished too.
    order, _ = decided_and_releasing(shop)
    token = deadline_var.set(time.monotonic() + MARGIN_S + 1.5)
    try:
        error = refused_order(shop, request(key="k1"))
    finally:
        deadline_var.reset(token)
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.ABORTED,
        "IDEMPOTENCY_KEY_IN_USE",
        {"order_id": order.id},
    )
    assert shop.order(order.id).status == PENDING


# Recovery of orders left at each step by a process now gone


def left_at(
    shop: Shop,
    step: Step,
    *,
    status: OrderStatus = PENDING,
    items: tuple[OrderItem, ...] = (OrderItem("P001", 2),),
    priced: bool = False,
    key: str = "",
    lease_s: float = 1.0,
    **fields,
) -> Order:
    """An order stored at `step`, its lease held by a process now gone (or,
    with a long `lease_s`, by a request still in flight)."""
    order_id = f"ord_left_{len(shop.store.orders)}"
    order = Order(order_id, "C1", status, items, "tok_visa", step=step, **fields)
    if priced:
        order = order.priced(PRICES)
    fingerprint = request(*((i.product_id, i.quantity) for i in items), key=key).fingerprint()
    lease_until = shop.clock() + dt.timedelta(seconds=lease_s)
    return shop.store.create(order, key, fingerprint, GONE, lease_until)


def test_an_order_left_after_its_reserve_with_no_charge_is_voided_and_released(shop):
    order = left_at(shop, Step.RESERVING)
    shop.inventory.reserve(order.id, order.items)
    assert shop.recover() == 1
    recovered = shop.order(order.id)
    assert recovered.status == FAILED
    error = recovered.failure.error()
    assert (error.code, error.metadata) == (
        grpc.StatusCode.UNAVAILABLE,
        {"order_id": order.id, "cause": "interrupted"},
    )
    assert [c for c, _ in shop.payments.calls] == ["payments", "void"]
    assert_nothing_kept(shop, recovered)
    # A Charge of the process now gone, arriving late, is refused.
    with pytest.raises(Refused):
        shop.payments.charge(order.priced(PRICES), False)


def test_an_order_left_with_its_charge_captured_is_confirmed_at_its_reservations_prices(shop):
    order = left_at(shop, Step.RESERVING)
    shop.inventory.reserve(order.id, order.items)
    payment = shop.payments.charge(order.priced(PRICES), False)
    assert shop.recover() == 1
    recovered = shop.order(order.id)
    assert (recovered.status, recovered.payment_id, recovered.total_cents) == (
        CONFIRMED,
        payment.id,
        2 * 1999,
    )
    assert shop.inventory.stock["P001"] == STOCK - 2
    assert shop.payments.status(order.id) == PaymentStatus.CAPTURED


def test_an_order_left_with_its_charge_declined_is_payment_failed_and_released(shop):
    order = left_at(shop, Step.RESERVING)
    shop.inventory.reserve(order.id, order.items)
    declined_method = dataclasses.replace(order.priced(PRICES), payment_method="tok_chargeDeclined")
    payment = shop.payments.charge(declined_method, False)
    assert shop.recover() == 1
    recovered = shop.order(order.id)
    assert (recovered.status, recovered.payment_id) == (PAYMENT_FAILED, payment.id)
    assert recovered.failure.reason == "PAYMENT_DECLINED"
    assert_nothing_kept(shop, recovered)


def test_an_order_left_charging_by_an_earlier_version_is_confirmed_without_reserving_again(shop):
    order = left_at(shop, Step.CHARGING, priced=True)
    shop.inventory.reserve(order.id, order.items)
    shop.payments.charge(order, False)
    shop.inventory.calls.clear()
    assert shop.recover() == 1
    assert shop.order(order.id).status == CONFIRMED
    assert shop.inventory.calls == []


def test_an_order_left_charging_with_nothing_to_charge_is_confirmed(shop):
    order = left_at(shop, Step.CHARGING, items=(OrderItem("FREE", 1),), priced=True)
    assert shop.recover() == 1
    assert (shop.order(order.id).status, shop.payments.calls) == (CONFIRMED, [])


def test_an_order_left_voiding_is_voided_then_released_and_takes_its_decided_outcome(shop):
    order = left_at(shop, Step.VOIDING, outcome=FAILED, failure=Failure.of(failed_precondition("X", "x")))
    shop.inventory.reserve(order.id, order.items)
    assert shop.recover() == 1
    recovered = shop.order(order.id)
    assert recovered.status == FAILED and recovered.failure.reason == "X"
    assert shop.payments.calls == [("void", order.id)]
    assert_nothing_kept(shop, recovered)


def test_an_order_left_releasing_is_released_and_takes_its_decided_outcome(shop):
    order = left_at(
        shop, Step.RELEASING, outcome=PAYMENT_FAILED, failure=Failure.of(failed_precondition("X", "x"))
    )
    shop.inventory.reserve(order.id, order.items)
    assert shop.recover() == 1
    recovered = shop.order(order.id)
    assert recovered.status == PAYMENT_FAILED
    assert shop.payments.calls == []
    assert_nothing_kept(shop, recovered)


def test_an_order_left_cancelling_is_refunded_released_and_cancelled(shop):
    order = left_at(shop, Step.RESERVING)
    shop.inventory.reserve(order.id, order.items)
    payment = shop.payments.charge(order.priced(PRICES), False)
    cancel_cut_off = dict(status=CONFIRMED, step=Step.CANCELLING, payment_id=payment.id)
    shop.store.advance(order.id, (PENDING, Step.RESERVING), None, None, **cancel_cut_off)
    assert shop.recover() == 1
    recovered = shop.order(order.id)
    assert recovered.status == CANCELLED
    assert shop.payments.status(order.id) == PaymentStatus.REFUNDED
    assert_nothing_kept(shop, recovered)


def test_an_upstream_still_without_an_answer_leaves_the_order_for_the_next_pass(shop):
    order = left_at(shop, Step.RESERVING)
    shop.payments.faults.add("payments", unsettled("payment"))
    before = recoveries("unsettled"), recoveries("failed")
    assert shop.recover() == 0
    assert (shop.order(order.id).status, shop.store.lease_owner(order.id)) == (PENDING, None)
    assert shop.recover() == 1
    assert shop.order(order.id).status == FAILED
    assert (recoveries("unsettled"), recoveries("failed")) == (before[0] + 1, before[1] + 1)


def test_a_charged_order_whose_reservation_is_refused_on_recovery_is_not_failed(shop):
    # Charged, so reserved: a refusal to answer its prices is not its outcome.
    order = left_at(shop, Step.RESERVING)
    shop.inventory.reserve(order.id, order.items)
    shop.payments.charge(order.priced(PRICES), False)
    shop.inventory.faults.add("reserve", Refused("inventory", failed_precondition("X", "x")))
    unsettled_before = recoveries("unsettled")
    assert shop.recover() == 0
    assert shop.order(order.id).status == PENDING
    assert recoveries("unsettled") == unsettled_before + 1
    assert shop.recover() == 1
    assert shop.order(order.id).status == CONFIRMED


def test_recovery_leaves_orders_whose_lease_is_live_or_that_moved_lately(shop):
    in_flight = left_at(shop, Step.RESERVING, lease_s=LATER_S * 2)
    shop.clock.advance(LATER_S)
    assert shop.saga.recovery.recover_stuck_orders() == 0
    just_left = left_at(shop, Step.RESERVING, lease_s=0)
    shop.clock.advance(0.5)
    assert shop.saga.recovery.recover_stuck_orders() == 0
    assert {shop.order(in_flight.id).status, shop.order(just_left.id).status} == {PENDING}
    assert shop.recover() == 2
