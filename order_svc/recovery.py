"""Recovery: driving an order from its persisted step to a final status when
the request that placed (or cancelled) it could not. At once, on a small
pool, for an order its request failed with an upstream's answer unknown
(settle_later); later, by the recovery loop of any replica, for an order whose
actor went away (its lease lapsed). Beside it runs the idempotency-key
retention loop, the order service's other background work.
"""

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol

from order_svc import metrics
from order_svc.model import Order, Step, Store
from order_svc.upstream import Unsettled
from plumbing import tracing
from plumbing.config import OrderConfig
from plumbing.errors import DatabaseUnavailable, ShopError
from plumbing.logs import request_id_var

# The saga's logger: recovery's lines read as they always have.
log = logging.getLogger("order_svc.saga")

# Orders a request failed at once and left to settle (Void, Release) in the
# background: a fixed pool, so an upstream outage does not start a thread per
# order, and a bounded backlog; past it, the recovery loop settles them.
SETTLING_WORKERS = 4
SETTLING_BACKLOG = 200
# Orders recovered in parallel, so one slow upstream does not hold up the rest.
RECOVERY_WORKERS = 4
RECOVERY_BATCH = 100
# Idempotency keys forgotten per statement, so no purge holds the orders long.
KEY_PURGE_BATCH = 1000


class Saga(Protocol):
    """What recovery drives (saga.OrderSaga): the saga's steps, each taking
    the order from its step to the next, and its leases."""

    store: Store
    config: OrderConfig
    clock: Callable[[], dt.datetime]

    def recover_placing_step(self, order: Order, owner: str) -> Order | None: ...

    def void_step(self, order: Order, owner: str) -> Order | None: ...

    def release_step(self, order: Order, owner: str) -> Order | None: ...

    def cancel_step(self, order: Order) -> Order: ...

    def new_owner(self) -> str: ...

    def lease_until(self, calls: int = 1) -> dt.datetime: ...

    def give_up_lease(self, order_id: str, owner: str) -> None: ...


class Recovery:
    """The saga's background work: settling, the recovery loop, key retention."""

    def __init__(self, saga: Saga):
        self.saga = saga
        self.store = saga.store
        self.config = saga.config
        self._settling: set[Future] = set()
        self._settling_lock = threading.Lock()
        self._settling_pool = ThreadPoolExecutor(SETTLING_WORKERS, thread_name_prefix="order-settle")
        self._recovery_pool = ThreadPoolExecutor(RECOVERY_WORKERS, thread_name_prefix="order-recovery")
        self._closed = threading.Event()

    def settle(self, order: Order | None, owner: str) -> Order | None:
        """Drive an order from its persisted step to a final status. Raises
        Unsettled if an upstream does not answer for sure; returns None if
        another actor took the order over."""
        while order is not None and order.step:
            if order.step in (Step.RESERVING, Step.CHARGING):
                order = self.saga.recover_placing_step(order, owner)
            elif order.step == Step.VOIDING:
                order = self.saga.void_step(order, owner)
            elif order.step == Step.RELEASING:
                order = self.saga.release_step(order, owner)
            elif order.step == Step.CANCELLING:
                order = self.saga.cancel_step(order)
            else:
                raise ValueError(f"order {order.id} is at an unknown step {order.step!r}")
        return order

    # The request's background settling

    def settle_later(self, order_id: str, owner: str) -> None:
        """Settle on the pool, or leave the order to the recovery loop (its
        lease released) when the backlog is full."""
        request_id = request_id_var.get()

        def settle():
            request_id_var.set(request_id)
            try:
                self.settle(self.store.get(order_id), owner)
            except Unsettled as unsettled:
                log.warning("order left for recovery", extra={"order_id": order_id, "cause": str(unsettled)})
                self.saga.give_up_lease(order_id, owner)
            except DatabaseUnavailable as error:
                log.warning("order left for recovery", extra={"order_id": order_id, "cause": str(error)})
            except ShopError as error:
                log.warning("settling order refused", extra={"order_id": order_id, "cause": str(error)})
            except Exception:
                log.exception("settling order failed", extra={"order_id": order_id})

        with self._settling_lock:
            queued = len(self._settling) < SETTLING_BACKLOG and not self._closed.is_set()
            if queued:
                future = self._settling_pool.submit(settle)
                self._settling.add(future)
        if not queued:
            log.warning(
                "order left for recovery", extra={"order_id": order_id, "cause": "settling backlog full"}
            )
            self.saga.give_up_lease(order_id, owner)
            return
        future.add_done_callback(self._settled)

    def _settled(self, future: Future) -> None:
        with self._settling_lock:
            self._settling.discard(future)

    # The recovery loop

    def recover_stuck_orders(self) -> int:
        """One pass of recovery: drive every order whose lease has lapsed
        and that has not moved for recovery_after_s to a final status.
        Returns how many this replica settled."""
        if self._closed.is_set():
            return 0
        now = self.saga.clock()
        # On every pass, stuck orders or not: what the alert on them reads.
        metrics.pending_orders_seen(self.store.oldest_pending_created_at(), now)
        untouched_since = now - dt.timedelta(seconds=self.config.recovery_after_s)
        stuck = self.store.stuck_orders(now, untouched_since, RECOVERY_BATCH)
        return sum(self._recovery_pool.map(self._recover, stuck))

    @tracing.saga_step("recovery.order")
    def _recover(self, order_id: str) -> bool:
        """Claim one stuck order and settle it; True if this did."""
        owner = self.saga.new_owner()
        now = self.saga.clock()
        untouched_since = now - dt.timedelta(seconds=self.config.recovery_after_s)
        # The claim is itself a CAS: of two replicas, one gets the order.
        order = self.store.claim(order_id, owner, now, self.saga.lease_until(calls=2), untouched_since)
        if order is None:
            return False
        token = request_id_var.set(f"recovery-{order_id}")
        log.info("recovering order", extra={"order_id": order_id, "status": order.status, "step": order.step})
        try:
            settled = self.settle(order, owner)
            metrics.recovery_ended(settled.status.lower() if settled is not None else "taken_over")
            return True
        except Unsettled as unsettled:
            metrics.recovery_ended("unsettled")
            log.warning("order still unsettled", extra={"order_id": order_id, "cause": str(unsettled)})
            self.saga.give_up_lease(order_id, owner)
        except DatabaseUnavailable as error:
            log.warning("order still unsettled", extra={"order_id": order_id, "cause": str(error)})
        except ShopError as error:
            metrics.recovery_ended("refused")
            log.warning("recovering order refused", extra={"order_id": order_id, "cause": str(error)})
        except Exception:
            metrics.recovery_ended("error")
            log.exception("recovering order failed", extra={"order_id": order_id})
            self.saga.give_up_lease(order_id, owner)
        finally:
            request_id_var.reset(token)
        return False

    def run_recovery(self, stopping: threading.Event) -> None:
        """The recovery loop: a pass at start-up, then one every interval,
        or at once while a backlog is being worked off."""
        while not stopping.is_set():
            backlog = False
            try:
                backlog = self.recover_stuck_orders() >= RECOVERY_BATCH
            except DatabaseUnavailable as error:
                # The next pass tries again.
                log.warning("recovery pass postponed", extra={"cause": str(error)})
            except Exception:
                if not self._closed.is_set():
                    log.exception("recovery pass failed")
            if not backlog:
                stopping.wait(self.config.recovery_interval_s)

    # Idempotency-key retention

    def forget_expired_idempotency_keys(
        self, now: dt.datetime | None = None, batch: int = KEY_PURGE_BATCH
    ) -> int:
        """One batch: forget the keys of orders placed longer ago than the
        retention (a retry with one then places a new order); the orders
        stay. Returns how many were forgotten."""
        retention = dt.timedelta(hours=self.config.idempotency_key_ttl_h)
        return self.store.forget_idempotency_keys((now or self.saga.clock()) - retention, batch)

    def run_key_retention(self, stopping: threading.Event) -> None:
        """The purge loop: batches back to back while there is a backlog,
        then a pass every key_purge_interval_s. Safe beside other replicas'."""
        while not stopping.is_set():
            forgotten = 0
            try:
                forgotten = self.forget_expired_idempotency_keys()
            except Exception:
                if not self._closed.is_set():
                    log.exception("forgetting expired idempotency keys failed")
            if forgotten:
                log.info("idempotency keys forgotten", extra={"count": forgotten})
            if forgotten < KEY_PURGE_BATCH:
                stopping.wait(self.config.key_purge_interval_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Let background settling finish (each of its calls has a deadline)."""
        self._closed.set()
        give_up = time.monotonic() + (
            timeout_s if timeout_s is not None else 3 * self.config.downstream_timeout_s
        )
        with self._settling_lock:
            pending = list(self._settling)
        wait(pending, timeout=max(0.0, give_up - time.monotonic()))
        # Any not started yet keep their lease until it lapses; recovery takes them then.
        self._settling_pool.shutdown(wait=False, cancel_futures=True)
        self._recovery_pool.shutdown(wait=True, cancel_futures=True)
