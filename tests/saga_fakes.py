"""In-memory stand-ins for the order saga's collaborators (order_svc.model's
Store, order_svc.upstream's Inventory and Payments) and a clock a test moves
by hand: the saga's unit tests drive OrderSaga with them, with no gRPC and no
database.

The fakes keep the rules the real ones keep - every move of an order a
compare-and-set, Reserve all or nothing and idempotent by order id, Release
and Void tombstones that refuse a late Reserve or Charge, Charge idempotent
by order id - and each upstream call can be made to fail once with Refused or
Unsettled, before or after it did its work (an answer lost on the way back).
"""

import dataclasses
import datetime as dt
import itertools
import threading
from collections.abc import Callable, Iterable

import grpc

from order_svc.model import Cursor, Failure, Order, OrderItem, OrderStatus, PaymentStatus, Price, Step
from order_svc.upstream import Payment, Refused, Unsettled
from plumbing.errors import ShopError, failed_precondition, invalid_argument, not_found

_ORDER_COLUMNS = {"status", "step", "outcome", "total_cents", "currency", "payment_id"}


class Clock:
    """The saga's clock (leases, stuck orders), moved only by the test."""

    def __init__(self, now: dt.datetime = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def unsettled(service: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> Unsettled:
    """An upstream that did not answer for sure."""
    return Unsettled(service, ShopError(code, f"{service} {code.name.lower()}"))


class Faults:
    """Failures to raise from an upstream's next calls, per method: `error`,
    raised before the call does anything, or after it did (done=True: the
    answer was lost)."""

    def __init__(self):
        self._next: dict[str, list[tuple[Exception, bool]]] = {}
        self._lock = threading.Lock()

    def add(self, method: str, error: Exception, done: bool = False, times: int = 1) -> None:
        with self._lock:
            self._next.setdefault(method, []).extend([(error, done)] * times)

    def run(self, method: str, call: Callable):
        with self._lock:
            queued = self._next.get(method)
            fault = queued.pop(0) if queued else None
        if fault is None:
            return call()
        error, done = fault
        if done:
            call()
        raise error


class MemoryStore:
    """The Store protocol in memory (store.OrderStore's rules, its clock the test's)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.orders: dict[str, Order] = {}
        # order id -> (lease owner, lease expiry); absent: no lease.
        self.leases: dict[str, tuple[str, dt.datetime]] = {}
        # (customer id, key) -> (order id, fingerprint)
        self.keys: dict[tuple[str, str], tuple[str, str]] = {}
        self.failing: dict[str, list[Exception]] = {}
        self._seq = itertools.count(1)
        self._lock = threading.RLock()

    def fail_next(self, method: str, error: Exception) -> None:
        """Make the next call of `method` raise `error` (a DatabaseUnavailable, say)."""
        self.failing.setdefault(method, []).append(error)

    def _maybe_fail(self, method: str) -> None:
        if self.failing.get(method):
            raise self.failing[method].pop(0)

    # Placing

    def create(self, order, idempotency_key, fingerprint, owner, lease_until):
        with self._lock:
            self._maybe_fail("create")
            if idempotency_key and (order.customer_id, idempotency_key) in self.keys:
                return None
            now = self.clock()
            stored = dataclasses.replace(order, created_at=now, updated_at=now, seq=next(self._seq))
            self.orders[order.id] = stored
            self.leases[order.id] = (owner, lease_until)
            if idempotency_key:
                self.keys[(order.customer_id, idempotency_key)] = (order.id, fingerprint)
            return stored

    def find_by_idempotency_key(self, customer_id, key):
        with self._lock:
            found = self.keys.get((customer_id, key))
            return None if found is None else (self.orders[found[0]], found[1])

    def forget_idempotency_keys(self, placed_before, limit):
        with self._lock:
            old = [
                k
                for k, (order_id, _) in self.keys.items()
                if self.orders[order_id].created_at < placed_before
            ]
            for key in old[:limit]:
                del self.keys[key]
            return len(old[:limit])

    # Reads

    def get(self, order_id):
        with self._lock:
            self._maybe_fail("get")
            return self.orders.get(order_id)

    def list_orders(self, customer_id, limit, cursor: Cursor | None):
        with self._lock:
            found = [o for o in self.orders.values() if not customer_id or o.customer_id == customer_id]
        found.sort(key=lambda o: (o.created_at, o.seq), reverse=True)
        if cursor is not None:
            found = [o for o in found if (o.created_at, o.seq) < (cursor.created_at, cursor.seq)]
        return found[:limit]

    # Moving an order on

    def advance(
        self,
        order_id,
        expected,
        owner,
        lease_until,
        failure: Failure | None = None,
        items: tuple[OrderItem, ...] | None = None,
        known=None,
        **changes,
    ):
        unknown = set(changes) - _ORDER_COLUMNS
        if unknown:
            raise ValueError(f"not order columns: {sorted(unknown)}")
        with self._lock:
            self._maybe_fail("advance")
            order = self.orders.get(order_id)
            if order is None or (order.status, order.step) != expected:
                return None
            if owner is not None and self.leases.get(order_id, (None,))[0] != owner:
                return None
            moved = dataclasses.replace(order, **changes, updated_at=self.clock())
            if failure is not None:
                moved = dataclasses.replace(moved, failure=failure)
            if items is not None:
                moved = dataclasses.replace(moved, items=items)
            self.orders[order_id] = moved
            if lease_until is None:
                self.leases.pop(order_id, None)
            else:
                self.leases[order_id] = (self.leases.get(order_id, (None,))[0], lease_until)
            return moved

    def begin_cancel(self, order_id, owner, lease_until):
        with self._lock:
            order = self.orders.get(order_id)
            if order is None or order.status != OrderStatus.CONFIRMED:
                return None
            if order.step not in (Step.AT_REST, Step.CANCELLING):
                return None
            self.orders[order_id] = dataclasses.replace(order, step=Step.CANCELLING, updated_at=self.clock())
            self.leases[order_id] = (owner, lease_until)
            return self.orders[order_id]

    def release_lease(self, order_id, owner):
        with self._lock:
            if self.leases.get(order_id, (None,))[0] == owner:
                del self.leases[order_id]

    # Recovery

    def _stuck(self, order: Order, now, untouched_since) -> bool:
        mid_saga = order.status == OrderStatus.PENDING or (
            order.status == OrderStatus.CONFIRMED and order.step == Step.CANCELLING
        )
        lease = self.leases.get(order.id)
        return mid_saga and (lease is None or lease[1] < now) and order.updated_at < untouched_since

    def stuck_orders(self, now, untouched_since, limit):
        with self._lock:
            stuck = [o for o in self.orders.values() if self._stuck(o, now, untouched_since)]
        return [o.id for o in sorted(stuck, key=lambda o: o.updated_at)][:limit]

    def claim(self, order_id, owner, now, lease_until, untouched_since):
        with self._lock:
            order = self.orders.get(order_id)
            if order is None or not self._stuck(order, now, untouched_since):
                return None
            self.leases[order_id] = (owner, lease_until)
            return order

    def oldest_pending_created_at(self):
        with self._lock:
            pending = [o.created_at for o in self.orders.values() if o.status == OrderStatus.PENDING]
        return min(pending, default=None)

    # For the tests

    def lease_owner(self, order_id: str) -> str | None:
        with self._lock:
            return self.leases.get(order_id, (None,))[0]

    def take_over(self, order_id: str, owner: str = "another-actor") -> None:
        """Another actor (recovery of another replica) takes the order's lease."""
        with self._lock:
            self.leases[order_id] = (owner, self.clock() + dt.timedelta(seconds=60))


class FakeInventory:
    """The Inventory protocol in memory: stock per product, held per order."""

    def __init__(self, prices: dict[str, Price], stock: dict[str, int]):
        self.prices = prices
        self.stock = dict(stock)
        self.held: dict[str, tuple[OrderItem, ...]] = {}
        self.released: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.faults = Faults()
        self._lock = threading.Lock()

    def reserve(self, order_id: str, items: Iterable[OrderItem]) -> dict[str, Price]:
        items = tuple(items)
        self.calls.append(("reserve", order_id))
        return self.faults.run("reserve", lambda: self._reserve(order_id, items))

    def _reserve(self, order_id: str, items: tuple[OrderItem, ...]) -> dict[str, Price]:
        with self._lock:
            if order_id in self.released:
                raise Refused(
                    "inventory", failed_precondition("ORDER_RELEASED", f"order {order_id} was released")
                )
            if order_id not in self.held:
                for item in items:
                    if item.product_id not in self.prices:
                        raise Refused("inventory", not_found("product", item.product_id))
                    available = self.stock[item.product_id]
                    if available < item.quantity:
                        raise Refused(
                            "inventory",
                            failed_precondition(
                                "OUT_OF_STOCK",
                                f"{item.product_id}: {item.quantity} requested, {available} available",
                                product_id=item.product_id,
                            ),
                        )
                for item in items:
                    self.stock[item.product_id] -= item.quantity
                self.held[order_id] = items
            return {i.product_id: self.prices[i.product_id] for i in self.held[order_id]}

    def release(self, order_id: str) -> None:
        self.calls.append(("release", order_id))
        self.faults.run("release", lambda: self._release(order_id))

    def _release(self, order_id: str) -> None:
        with self._lock:
            self.released.add(order_id)
            for item in self.held.pop(order_id, ()):
                self.stock[item.product_id] += item.quantity


# What the simulated processor does with each test token: approve ("") or decline (the reason).
TOKENS = {"tok_visa": "", "tok_chargeDeclined": "card_declined"}


class FakePayments:
    """The Payments protocol in memory: one payment per order at most."""

    def __init__(self):
        self.by_order: dict[str, list[Payment]] = {}
        self.amounts: dict[str, int] = {}
        self.voided: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.faults = Faults()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def charge(self, order: Order, owner_only: bool) -> Payment:
        self.calls.append(("charge", order.id))
        return self.faults.run("charge", lambda: self._charge(order))

    def _charge(self, order: Order) -> Payment:
        with self._lock:
            if order.id in self.voided:
                raise Refused(
                    "payment", failed_precondition("ORDER_VOIDED", f"order {order.id} has been voided")
                )
            if self.by_order.get(order.id):
                return self.by_order[order.id][0]
            if order.payment_method not in TOKENS:
                raise Refused("payment", invalid_argument([("payment_method", "is not a known test token")]))
            reason = TOKENS[order.payment_method]
            status = PaymentStatus.DECLINED if reason else PaymentStatus.CAPTURED
            payment = Payment(f"pay_{next(self._ids)}", status, reason)
            self.by_order[order.id] = [payment]
            self.amounts[order.id] = order.total_cents
            return payment

    def payments(self, order_id: str) -> list[Payment]:
        self.calls.append(("payments", order_id))
        return self.faults.run("payments", lambda: list(self.by_order.get(order_id, [])))

    def void(self, order_id: str) -> None:
        self.calls.append(("void", order_id))
        self.faults.run("void", lambda: self._void(order_id))

    def _void(self, order_id: str) -> None:
        with self._lock:
            self.voided.add(order_id)
            self._refund_capture(order_id)

    def refund(self, order_id: str) -> None:
        self.calls.append(("refund", order_id))
        self.faults.run("refund", lambda: self._refund(order_id))

    def _refund(self, order_id: str) -> None:
        with self._lock:
            payments = self.by_order.get(order_id)
            if not payments:
                raise Refused("payment", not_found("payment", order_id))
            if not self._refund_capture(order_id) and payments[0].status != PaymentStatus.REFUNDED:
                raise Refused(
                    "payment", failed_precondition("NOT_REFUNDABLE", f"order {order_id} was not captured")
                )

    def _refund_capture(self, order_id: str) -> bool:
        payments = self.by_order.get(order_id, [])
        for line, payment in enumerate(payments):
            if payment.status == PaymentStatus.CAPTURED:
                payments[line] = dataclasses.replace(payment, status=PaymentStatus.REFUNDED)
                return True
        return False

    def status(self, order_id: str) -> str | None:
        """The status of the order's payment (None: it has none)."""
        payments = self.by_order.get(order_id)
        return payments[0].status if payments else None
