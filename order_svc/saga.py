"""The order saga's engine, with no gRPC and no SQL: an order is stored
PENDING, its stock reserved (the inventory's unit prices are the order's), its
total charged, and it is CONFIRMED; a failure on the way is compensated, so
an order ends with stock taken and one capture, or with its stock returned and
nothing charged.

Each step is persisted (Order.step) before the calls it names, so whoever
finds the order later - the request's background thread, the recovery loop of
any replica - knows what may have been sent:

  RESERVING   stored; a Reserve, and after it a Charge, may have been sent
              (recovery completes the order if its charge is in place, and
              otherwise voids it and releases the stock). The Charge follows
              the Reserve with no write between them: the order's prices are
              recorded with its next move, and what recovery needs to know
              it asks payment (which has the charge or not) and inventory
              (whose Reserve is idempotent and answers the prices again).
  CHARGING    as RESERVING, with the prices recorded (written by earlier
              versions, which persisted this step before the Charge)
  VOIDING     the Charge's outcome is unknown and the order is to fail: Void
              (which refuses any later Charge), then release the stock
  RELEASING   the outcome is decided (Order.outcome, Order.failure): release
              the stock, then finish
  CANCELLING  (a CONFIRMED order) Refund, release the stock, then CANCELLED

Whoever drives an order holds its lease (an owner token and an expiry,
renewed with every step), and every change of status or step is a
compare-and-set on the status and the step - and, while the order is being
placed, on the lease owner: two actors never both move one order, and one
that lost its lease stops. (Any actor may finish a cancellation: its calls
are idempotent and its last move a CAS on the status.)

The engine's collaborators are the Protocols `Store` (below), `Inventory`
and `Payments` (upstream.py, whose calls answer, or raise Refused or
Unsettled); recovery.py takes up the orders whose actor went away.
"""

import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from order_svc import failures, metrics
from order_svc.failures import upstream_unavailable, with_order_id
from order_svc.model import (
    Cursor,
    Failure,
    Order,
    OrderItem,
    OrderRequest,
    OrderStatus,
    Page,
    PaymentStatus,
    Step,
    Store,
    new_order_id,
)
from order_svc.recovery import Recovery
from order_svc.upstream import Inventory, Payments, Refused, Unsettled
from plumbing import deadlines, tracing
from plumbing.config import OrderConfig
from plumbing.deadlines import remaining_s, timeout_for_call
from plumbing.errors import DatabaseUnavailable, ShopError, not_found
from plumbing.identity import Caller, may_see
from plumbing.timestamps import utc_now

log = logging.getLogger("order_svc.saga")

PENDING, CONFIRMED, CANCELLED = OrderStatus.PENDING, OrderStatus.CONFIRMED, OrderStatus.CANCELLED
PAYMENT_FAILED, FAILED = OrderStatus.PAYMENT_FAILED, OrderStatus.FAILED
AT_REST, RESERVING, CHARGING = Step.AT_REST, Step.RESERVING, Step.CHARGING
VOIDING, RELEASING, CANCELLING = Step.VOIDING, Step.RELEASING, Step.CANCELLING

# A lease outlives the call it covers by this much, for recording the answer.
LEASE_MARGIN_S = 0.5
# How long a request whose order recovery took over waits for a decided
# failure to finish compensating before answering it (a retry waits for the end).
DECIDED_GRACE_S = 1.0


class OrderSaga:
    """Places, reads and cancels orders; its `recovery` settles the orders
    left mid-saga. `clock` tells the time of leases and of stuck orders."""

    def __init__(
        self,
        store: Store,
        inventory: Inventory,
        payment: Payments,
        config: OrderConfig,
        clock: Callable[[], dt.datetime] = utc_now,
    ):
        self.store = store
        self.inventory = inventory
        self.payment = payment
        self.config = config
        self.clock = clock
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.recovery = Recovery(self)

    # Reads

    def get_order(self, order_id: str, caller: Caller | None = None) -> Order:
        """The order, if the caller may see it: another customer's order is
        answered exactly as an unknown one (its existence is not revealed)."""
        try:
            order = self.store.get(order_id)
        except DatabaseUnavailable as error:
            error.with_metadata(order_id=order_id)
            raise
        if order is None or not may_see(caller, order.customer_id):
            raise not_found("order", order_id)
        return order

    def list_orders(self, customer_id: str, page_size: int, cursor: Cursor | None) -> Page:
        """Newest first (created_at, then insertion order), by keyset."""
        orders = self.store.list_orders(customer_id, page_size + 1, cursor)
        if len(orders) <= page_size:
            return Page(orders, None)
        last = orders[page_size - 1]
        return Page(orders[:page_size], Cursor(last.created_at, last.seq, customer_id))

    # Placing an order

    def place_order(self, request: OrderRequest, caller_gone: Callable[[], bool] = lambda: False) -> Order:
        """Run the saga for a new order, or answer a retry of one with its
        outcome. Raises the order's error (naming it) when it fails.
        `caller_gone` tells a retry waiting for its first attempt that no one
        awaits its answer any more (cancelled, or past its deadline)."""
        # No lookup of the idempotency key first: storing the order finds a
        # taken key by itself (its unique constraint), so a first attempt
        # costs one round trip to the database, not two.
        owner = self.new_owner()
        order = Order(
            id=new_order_id(),
            customer_id=request.customer_id,
            status=PENDING,
            step=RESERVING,
            items=tuple(OrderItem(p, q) for p, q in request.items),
            payment_method=request.payment_method,
        )
        try:
            # The lease covers the Reserve and the Charge.
            stored = self.store.create(
                order, request.idempotency_key, request.fingerprint(), owner, self.lease_until(calls=2)
            )
        except DatabaseUnavailable as error:
            # Stored after all (only its commit's answer was lost), it is
            # failed by recovery, having reserved and charged nothing.
            raise upstream_unavailable(failures.ORDER_DATABASE, error, order.id, failures.NOT_PLACED) from None
        if stored is None:
            # A retry, or a concurrent duplicate, stored its order first.
            existing, fingerprint = self.store.find_by_idempotency_key(request.customer_id, request.idempotency_key)
            try:
                return self._replay(existing, fingerprint, request, caller_gone)
            except DatabaseUnavailable as error:
                raise upstream_unavailable(
                    failures.ORDER_DATABASE, error, existing.id, failures.OUTCOME_UNREAD
                ) from None
        # DEBUG: the RPC's own line and the outcome's line tell the story.
        log.debug("order stored", extra={"order_id": stored.id, "customer_id": stored.customer_id})
        try:
            return self._run(stored, owner, request.owner_only)
        except DatabaseUnavailable as error:
            # Its lease will lapse, so recovery completes or compensates it,
            # as it does an order whose upstream went away.
            raise upstream_unavailable(failures.ORDER_DATABASE, error, stored.id, failures.STORED) from None
        except ShopError:
            raise
        except Exception as error:
            # A bug or the database: the order is stored and its lease will
            # lapse, so recovery completes or compensates it. Name it.
            log.exception("placing order failed", extra={"order_id": stored.id})
            raise failures.not_completed(stored.id) from error

    def _run(self, order: Order, owner: str, owner_only: bool) -> Order:
        """The saga as the request drives it. An upstream with an unknown
        outcome gets the order failed at once, settled in the background."""
        order_id = order.id
        try:
            order = self._reserve_step(order, owner)
        except Unsettled as unsettled:
            error = upstream_unavailable(unsettled.service, unsettled.error, order_id, failures.RESERVE_UNSETTLED)
            return self._fail_later(order, owner, RELEASING, error)
        if order is not None and order.step == RESERVING:
            # Reserved, priced; nothing written since the order was stored.
            try:
                order = self._charge_step(order, owner, owner_only)
            except Unsettled as unsettled:
                error = upstream_unavailable(unsettled.service, unsettled.error, order_id, failures.CHARGE_UNSETTLED)
                return self._fail_later(order, owner, VOIDING, error)
        if order is not None and order.step == RELEASING:
            try:
                order = self.release_step(order, owner)
            except Unsettled:
                self.recovery.settle_later(order_id, owner)
                raise order.failure.error() from None
        if order is None or order.status == PENDING:
            # Our lease ran out and recovery drives the order now.
            return self._await_outcome(order_id, failures.lost_lease(order_id), decided_grace_s=DECIDED_GRACE_S)
        return _answer(order)

    def _fail_later(self, order: Order, owner: str, step: Step, error: ShopError) -> Order:
        """Decide the failure, answer it now, and settle (Void, Release) in
        the background with fresh deadlines. Raises the error."""
        if self._decide(order, owner, step, FAILED, error) is None:
            return self._await_outcome(order.id, failures.lost_lease(order.id), decided_grace_s=DECIDED_GRACE_S)
        self.recovery.settle_later(order.id, owner)
        raise error

    # The steps (recovery.py drives an order from any of them). Each returns
    # the order as it left it (None if another actor took it over) and raises
    # Unsettled when an upstream's answer is not final.

    @tracing.saga_step("saga.reserve")
    def _reserve_step(self, order: Order, owner: str) -> Order | None:
        """Reserve the stock. Reserved, the order comes back priced and still
        at RESERVING, as stored: the Charge goes next, with no write between."""
        try:
            prices = self.inventory.reserve(order.id, order.items)
        except Refused as refused:
            # Reserve is all or nothing and said no: nothing is reserved.
            failure = Failure.of(with_order_id(refused.error, order.id))
            return _ended(self._move(order, owner, None, status=FAILED, step=AT_REST, failure=failure))
        priced = order.priced(prices)
        if not priced.currency:
            currencies = {i.currency for i in priced.items}
            return self._decide(
                order, owner, RELEASING, FAILED, failures.mixed_currencies(order.id, currencies), items=priced.items
            )
        return priced

    @tracing.saga_step("saga.charge")
    def _charge_step(self, order: Order, owner: str, owner_only: bool) -> Order | None:
        """Charge the total, for the order's owner; a decline or a refusal
        is final, and so is a capture."""
        if order.total_cents == 0:
            # Nothing to charge (payment refuses a zero amount).
            return self._confirm(order, owner, payment_id="")
        try:
            payment = self.payment.charge(order, owner_only)
        except Refused as refused:
            # Refused (an unknown payment method, a voided order): nothing charged.
            return self._decide(order, owner, RELEASING, FAILED, with_order_id(refused.error, order.id))
        if payment.status == PaymentStatus.CAPTURED:
            return self._confirm(order, owner, payment.id)
        if payment.status == PaymentStatus.DECLINED:
            declined = failures.payment_declined(order.id, payment.id, payment.decline_reason)
            return self._decide(order, owner, RELEASING, PAYMENT_FAILED, declined, payment_id=payment.id)
        # Already refunded (a Void got there first): nothing is charged.
        error = failures.payment_not_captured(order.id, payment.id, payment.status)
        return self._decide(order, owner, RELEASING, FAILED, error, payment_id=payment.id)

    @tracing.saga_step("saga.recover_placing")
    def recover_placing_step(self, order: Order, owner: str) -> Order | None:
        """A Reserve and a Charge may have been sent by an actor now gone. A
        charge in place completes the order (a charge follows only a
        reservation, and Reserve answers an existing one with its prices);
        otherwise Void settles it for good (a Charge still in flight is
        refused after it), the stock is released and the order fails. A new
        charge is never made for a request that was cut off."""
        if order.step == CHARGING and order.total_cents == 0:
            return self._confirm(order, owner, payment_id="")
        for payment in self.payment.payments(order.id):
            if payment.status not in (PaymentStatus.CAPTURED, PaymentStatus.DECLINED):
                continue
            if order.step == RESERVING:
                # Charged, so reserved: record what the reservation priced.
                try:
                    order = order.priced(self.inventory.reserve(order.id, order.items))
                except Refused as refused:
                    # Not this order's answer (it holds stock): try again later.
                    raise Unsettled(refused.service, refused.error) from None
            if payment.status == PaymentStatus.CAPTURED:
                return self._confirm(order, owner, payment.id)
            declined = failures.payment_declined(order.id, payment.id, payment.decline_reason)
            return self._decide(order, owner, RELEASING, PAYMENT_FAILED, declined, payment_id=payment.id)
        return self._decide(order, owner, VOIDING, FAILED, failures.interrupted(order.id))

    @tracing.saga_step("saga.void")
    def void_step(self, order: Order, owner: str) -> Order | None:
        """The Charge's outcome is unknown: Void settles it for good (any
        capture refunded, any later Charge refused); then release."""
        self.payment.void(order.id)
        return self._move(order, owner, self.lease_until(), step=RELEASING)

    @tracing.saga_step("saga.release")
    def release_step(self, order: Order, owner: str) -> Order | None:
        """Give the stock back, then take the decided outcome."""
        self.inventory.release(order.id)
        released = _ended(self._move(order, owner, None, status=order.outcome, step=AT_REST))
        if released is not None:
            log.info("order failed", extra={"order_id": order.id, "outcome": order.outcome})
        return released

    @tracing.saga_step("saga.cancel")
    def cancel_step(self, order: Order) -> Order:
        """Refund, release the stock, CANCELLED. Any actor may finish a
        cancellation: each call is idempotent and the last move a CAS."""
        if order.payment_id:
            try:
                self.payment.refund(order.id)
            except Refused as refused:
                # Refused for good: the order stays CONFIRMED and is not retried.
                self.store.advance(order.id, (CONFIRMED, CANCELLING), None, None, step=AT_REST)
                raise with_order_id(refused.error, order.id) from None
        self.inventory.release(order.id)
        cancelled = _ended(
            self.store.advance(order.id, (CONFIRMED, CANCELLING), None, None, status=CANCELLED, step=AT_REST)
        )
        if cancelled is None:
            return self.get_order(order.id)
        log.info("order cancelled", extra={"order_id": order.id})
        return cancelled

    @tracing.saga_step("saga.confirm")
    def _confirm(self, order: Order, owner: str, payment_id: str) -> Order | None:
        confirmed = _ended(self._move(order, owner, None, status=CONFIRMED, step=AT_REST, payment_id=payment_id))
        if confirmed is not None:
            log.info("order confirmed", extra={"order_id": order.id, "payment_id": payment_id})
        return confirmed

    def _decide(
        self, order: Order, owner: str, step: Step, outcome: OrderStatus, error: ShopError, **changes
    ) -> Order | None:
        """Record how the order will end, and the compensation step that
        gets it there, before compensating."""
        decided = self._move(
            order, owner, self.lease_until(), step=step, outcome=outcome, failure=Failure.of(error), **changes
        )
        if decided is not None:
            log.info("order failing", extra={"order_id": order.id, "outcome": outcome, "reason": error.reason})
        return decided

    def _move(self, order: Order, owner: str, lease_until: dt.datetime | None, **changes) -> Order | None:
        """Compare-and-set from the order's status and step, as long as
        `owner` holds its lease; lease_until None ends the lease."""
        if order.step == RESERVING and order.currency:
            # Reserved and priced since it was stored: record the prices too.
            changes = dict(items=order.items, total_cents=order.total_cents, currency=order.currency) | changes
        return self.store.advance(order.id, (order.status, order.step), owner, lease_until, known=order, **changes)

    # Retries with an idempotency key

    def _replay(self, existing: Order, fingerprint: str, request: OrderRequest, caller_gone) -> Order:
        if fingerprint != request.fingerprint():
            raise failures.idempotency_key_reused(existing.id)
        return self._await_outcome(existing.id, failures.idempotency_key_in_use(existing.id), caller_gone)

    def _await_outcome(
        self, order_id: str, unresolved: ShopError, caller_gone=lambda: False, decided_grace_s: float | None = None
    ) -> Order:
        """The order's outcome, waiting for it up to the incoming deadline
        (less a margin to answer), or as long as the saga may take when the
        caller set none, and never once the caller is gone: the order if it
        was confirmed, its error if it failed; `unresolved` if it is still
        PENDING then. A failure decided but still compensating is answered
        after `decided_grace_s`; a retry (None) waits for the order's end."""
        left = remaining_s()
        wait_s = left - deadlines.MARGIN_S if left is not None else 2 * self.config.downstream_timeout_s
        started = time.monotonic()
        give_up = started + wait_s
        pause = 0.02
        while True:
            order = self.store.get(order_id)
            if order.status != PENDING:
                return _answer(order)
            now = time.monotonic()
            # The first request's failure, decided: no need to wait out an outage to answer it.
            decided = order.failure and decided_grace_s is not None
            if decided and (now > started + decided_grace_s or now + pause > give_up):
                raise order.failure.error()
            if now + pause > give_up or caller_gone():
                raise unresolved
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    # Cancelling

    def cancel_order(self, order_id: str, caller: Caller | None = None) -> Order:
        """Refund, release the stock, CANCELLED. Repeating it is harmless.
        Another customer's order is unknown, as in get_order."""
        try:
            return self._cancel(order_id, caller)
        except DatabaseUnavailable as error:
            # A cancellation cut off midway is finished by recovery.
            raise upstream_unavailable(failures.ORDER_DATABASE, error, order_id, failures.NOT_CANCELLED_YET) from None

    def _cancel(self, order_id: str, caller: Caller | None) -> Order:
        order = self.get_order(order_id, caller)
        if order.status == CANCELLED:
            return order
        if order.status == PENDING:
            raise failures.order_in_progress(order_id)
        if order.status in (PAYMENT_FAILED, FAILED):
            raise failures.not_cancellable(order_id, order.status)
        owner = self.new_owner()
        cancelling = self.store.begin_cancel(order_id, owner, self.lease_until(calls=2))
        if cancelling is None:
            # Cancelled meanwhile by a concurrent cancel: look again.
            return self._cancel(order_id, caller)
        try:
            return self.cancel_step(cancelling)
        except Unsettled as unsettled:
            self.give_up_lease(order_id, owner)
            raise upstream_unavailable(
                unsettled.service, unsettled.error, order_id, failures.CANCEL_UNSETTLED
            ) from None

    def close(self, timeout_s: float | None = None) -> None:
        """Let background settling finish (each of its calls has a deadline)
        and stop recovery."""
        self.recovery.close(timeout_s)

    # Leases

    def give_up_lease(self, order_id: str, owner: str) -> None:
        """Let recovery take the order up at once (with the database away,
        it waits for the lease to lapse instead)."""
        try:
            self.store.release_lease(order_id, owner)
        except DatabaseUnavailable:
            pass

    def new_owner(self) -> str:
        """A lease owner token: one per actor (a request, a recovery claim),
        never shared, so an actor that lost its lease cannot move the order."""
        return f"{self.instance}:{secrets.token_hex(4)}"

    def lease_until(self, calls: int = 1) -> dt.datetime:
        """How long the next step's calls may take (within the incoming
        deadline, if any), plus a margin to record their answer."""
        call_s = max(0.0, timeout_for_call(None, self.config.downstream_timeout_s))
        return self.clock() + dt.timedelta(seconds=calls * call_s + LEASE_MARGIN_S)


def _ended(order: Order | None) -> Order | None:
    """Count an order that a move just took to its final status (None: the
    move lost its compare-and-set, and whoever won counts it)."""
    if order is not None:
        metrics.order_ended(order)
    return order


def _answer(order: Order) -> Order:
    """A final order as CreateOrder's answer: the order, or its error."""
    if order.status in (PAYMENT_FAILED, FAILED):
        raise order.failure.error()
    return order
