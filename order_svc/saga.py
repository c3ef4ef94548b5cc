"""The order saga, with no gRPC server code and no SQL: an order is stored
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
"""

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

import grpc

from order_svc import metrics
from plumbing import tracing
from plumbing.config import OrderConfig
from plumbing.deadlines import MARGIN_S, remaining_s, timeout_for_call
from plumbing.errors import (
    DatabaseUnavailable,
    ShopError,
    failed_precondition,
    from_rpc_error,
    invalid_argument,
    not_found,
)
from plumbing.identity import Caller, may_see
from plumbing.logs import request_id_var
from plumbing.timestamps import utc_now
from plumbing.validation import Violations
from shop.inventory.v1 import inventory_pb2
from shop.payment.v1 import payment_pb2

log = logging.getLogger("order_svc.saga")

# Statuses, named as in the proto enum.
PENDING, CONFIRMED, PAYMENT_FAILED, FAILED, CANCELLED = (
    "PENDING",
    "CONFIRMED",
    "PAYMENT_FAILED",
    "FAILED",
    "CANCELLED",
)
# Steps (see the module docstring); "" when the order is at rest.
RESERVING, CHARGING, VOIDING, RELEASING, CANCELLING = (
    "RESERVING",
    "CHARGING",
    "VOIDING",
    "RELEASING",
    "CANCELLING",
)
AT_REST = ""

DEFAULT_PAYMENT_METHOD = "tok_visa"
DEFAULT_PAGE_SIZE = 50  # at most 200: declared in the proto (ListOrdersRequest.page_size)
MAX_IDEMPOTENCY_KEY_LENGTH = 255

# A lease outlives the call it covers by this much, for recording the answer.
LEASE_MARGIN_S = 0.5
# How long a retry waits for an order whose failure is decided to finish
# compensating, before answering that failure.
DECIDED_GRACE_S = 1.0
# Orders recovered in parallel, so one slow upstream does not hold up the rest.
RECOVERY_WORKERS = 4
RECOVERY_BATCH = 100
# Orders a request failed at once and left to settle (Void, Release) in the
# background: a fixed pool, so an upstream outage does not start a thread per
# order, and a bounded backlog; past it, recovery settles them.
SETTLING_WORKERS = 4
SETTLING_BACKLOG = 200
# Idempotency keys forgotten per statement, so no purge holds the orders long.
KEY_PURGE_BATCH = 1000

# Codes with which an upstream said no for sure: nothing was done. Any other
# failure (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...) leaves the outcome
# unknown.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass(frozen=True)
class OrderItem:
    product_id: str
    quantity: int
    # Set from the inventory's reservation.
    unit_price_cents: int = 0
    currency: str = ""


@dataclass(frozen=True)
class Failure:
    """The error a failed order answers with, kept with the order so that a
    retry with its idempotency key gets the very same one."""

    code: str  # a grpc.StatusCode name
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    violations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, error: ShopError) -> "Failure":
        return cls(
            error.code.name, error.reason, error.message, dict(error.metadata), tuple(map(tuple, error.violations))
        )

    def error(self) -> ShopError:
        return ShopError(
            grpc.StatusCode[self.code], self.message, self.reason, dict(self.metadata), list(self.violations)
        )


@dataclass(frozen=True)
class Order:
    id: str
    customer_id: str
    status: str
    items: tuple[OrderItem, ...]
    payment_method: str
    total_cents: int = 0
    currency: str = ""
    payment_id: str = ""
    step: str = AT_REST
    # The final status decided for an order being compensated.
    outcome: str = ""
    failure: Failure | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    # Insertion order: the tie-break of created_at in lists.
    seq: int = 0


@dataclass(frozen=True)
class OrderRequest:
    """A validated CreateOrder, in normal form (the flat form is one item)."""

    customer_id: str
    items: tuple[tuple[str, int], ...]
    payment_method: str
    idempotency_key: str = ""
    # Placed by the customer themselves, signed in: only their own payment
    # methods may be charged (payment checks it).
    placed_by_customer: bool = False

    def fingerprint(self) -> str:
        """What makes two requests with one idempotency key the same request."""
        canonical = json.dumps(
            {
                "customer_id": self.customer_id,
                "items": sorted(self.items),
                "payment_method": self.payment_method,
            },
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Page:
    orders: list[Order]
    next_page_token: str


@dataclass(frozen=True)
class Cursor:
    """Where a page of a list ends: the last order's sort key, and the filter
    the list was asked with (a token is only good for the same filter)."""

    created_at: dt.datetime
    seq: int
    customer_id: str


class _Unsettled(Exception):
    """An upstream did not answer for sure: the order stays at its step, for
    a later attempt."""

    def __init__(self, service: str, error: ShopError):
        super().__init__(f"{service}: {error}")
        self.service = service
        self.error = error


# Request checks


def check_idempotency_key(violations: Violations, key: str | None) -> str:
    """An Idempotency-Key: 1-255 printable ASCII characters ("" for none)."""
    if key is None:
        return ""
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        violations.add(
            "idempotency-key", f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters"
        )
    return key


def check_page(violations: Violations, customer_id: str, page_size: int, page_token: str) -> tuple[int, Cursor | None]:
    cursor = None
    if page_token:
        cursor = decode_page_token(page_token)
        if cursor is None:
            violations.add("page_token", "is not a page token this service issued")
        elif cursor.customer_id != customer_id:
            violations.add("page_token", "was issued for a list with a different customer_id")
    return page_size or DEFAULT_PAGE_SIZE, cursor


def encode_page_token(cursor: Cursor) -> str:
    raw = json.dumps(
        {"t": cursor.created_at.isoformat(), "s": cursor.seq, "c": cursor.customer_id}, separators=(",", ":")
    )
    return urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> Cursor | None:
    """The cursor in a token, or None if it is not one of ours."""
    try:
        raw = json.loads(urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        created_at = dt.datetime.fromisoformat(raw["t"])
        seq, customer_id = raw["s"], raw["c"]
    except (ValueError, TypeError, KeyError):
        return None
    if created_at.tzinfo is None or type(seq) is not int or not isinstance(customer_id, str):
        return None
    return Cursor(created_at.astimezone(dt.UTC), seq, customer_id)


# Errors


def with_order_id(error: ShopError, order_id: str) -> ShopError:
    """An upstream's refusal as this order's error: its code, reason and
    details, naming the order."""
    return ShopError(
        error.code,
        error.message,
        error.reason or error.code.name,
        {**error.metadata, "order_id": order_id},
        list(error.violations),
    )


def upstream_unavailable(service: str, error: ShopError, order_id: str, consequence: str) -> ShopError:
    """An upstream that did not answer for sure: UNAVAILABLE or
    DEADLINE_EXCEEDED (the reasons of API.md's 503 and 504 rows), naming the
    upstream and the order."""
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        code, what = grpc.StatusCode.DEADLINE_EXCEEDED, "did not answer in time"
    else:
        code, what = grpc.StatusCode.UNAVAILABLE, "is unavailable"
    return ShopError(
        code, f"{service} {what}; order {order_id} {consequence}", code.name, {"order_id": order_id, "service": service}
    )


# What the caller is told happens to an order whose Reserve or Charge had an
# unknown outcome (it fails; the background or recovery makes that true).
RESERVE_UNSETTLED = "failed: nothing was charged and any stock held for it is returned"
CHARGE_UNSETTLED = "failed: any charge is voided and its stock returned"
# ... and when this service's own database failed it.
ORDER_DATABASE = "order database"
NOT_PLACED = "was not placed: nothing was reserved or charged"
STORED = "is stored, and will be completed or compensated shortly"
OUTCOME_UNREAD = "was placed with this idempotency key; its outcome cannot be read now"
NOT_CANCELLED_YET = "is not cancelled yet; repeating the cancellation is harmless"


def payment_declined(order_id: str, payment) -> ShopError:
    return failed_precondition(
        "PAYMENT_DECLINED",
        f"payment declined ({payment.decline_reason}); order {order_id} is kept as PAYMENT_FAILED "
        "and its stock returned",
        order_id=order_id,
        payment_id=payment.id,
        decline_reason=payment.decline_reason,
    )


def mixed_currencies(order_id: str, currencies: set[str]) -> ShopError:
    listed = ", ".join(sorted(currencies))
    return failed_precondition(
        "MIXED_CURRENCIES",
        f"the items are priced in different currencies ({listed}); order {order_id} failed and its "
        "stock was returned: place one order per currency",
        order_id=order_id,
        currencies=listed,
    )


def interrupted(order_id: str) -> ShopError:
    """What an order that recovery had to fail answers with: its request was
    cut off before it could say (a service went away: API.md's 503 row)."""
    return ShopError(
        grpc.StatusCode.UNAVAILABLE,
        f"order {order_id} was interrupted before it completed; nothing is reserved or charged",
        "UNAVAILABLE",
        {"order_id": order_id, "cause": "interrupted"},
    )


def new_order_id() -> str:
    return "ord_" + secrets.token_hex(12)


def _outcome_unknown(error: ShopError) -> bool:
    return error.code not in REFUSALS


class OrderSaga:
    """Places, reads, cancels and recovers orders. `inventory` and `payment`
    are stubs over channels that give every call a deadline; `store` is an
    OrderStore."""

    def __init__(self, store, inventory, payment, config: OrderConfig):
        self.store = store
        self.inventory = inventory
        self.payment = payment
        self.config = config
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._settling: set[Future] = set()
        self._settling_lock = threading.Lock()
        self._settling_pool = ThreadPoolExecutor(SETTLING_WORKERS, thread_name_prefix="order-settle")
        self._recovery_pool = ThreadPoolExecutor(RECOVERY_WORKERS, thread_name_prefix="order-recovery")
        self._closed = threading.Event()

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
            return Page(orders, "")
        last = orders[page_size - 1]
        return Page(orders[:page_size], encode_page_token(Cursor(last.created_at, last.seq, customer_id)))

    # Placing an order

    def place_order(self, request: OrderRequest, caller_gone: Callable[[], bool] = lambda: False) -> Order:
        """Run the saga for a new order, or answer a retry of one with its
        outcome. Raises the order's error (naming it) when it fails.
        `caller_gone` tells a retry waiting for its first attempt that no one
        awaits its answer any more (cancelled, or past its deadline)."""
        # No lookup of the idempotency key first: storing the order finds a
        # taken key by itself (its unique constraint), so a first attempt
        # costs one round trip to the database, not two.
        owner = self._new_owner()
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
                order, request.idempotency_key, request.fingerprint(), owner, self._lease_until(calls=2)
            )
        except DatabaseUnavailable as error:
            # Stored after all (only its commit's answer was lost), it is
            # failed by recovery, having reserved and charged nothing.
            raise upstream_unavailable(ORDER_DATABASE, error, order.id, NOT_PLACED) from None
        if stored is None:
            # A retry, or a concurrent duplicate, stored its order first.
            existing, fingerprint = self.store.find_by_idempotency_key(request.customer_id, request.idempotency_key)
            try:
                return self._replay(existing, fingerprint, request, caller_gone)
            except DatabaseUnavailable as error:
                raise upstream_unavailable(ORDER_DATABASE, error, existing.id, OUTCOME_UNREAD) from None
        # DEBUG: the RPC's own line and the outcome's line tell the story.
        log.debug("order stored", extra={"order_id": stored.id, "customer_id": stored.customer_id})
        try:
            return self._run(stored, owner, request.placed_by_customer)
        except DatabaseUnavailable as error:
            # Its lease will lapse, so recovery completes or compensates it,
            # as it does an order whose upstream went away.
            raise upstream_unavailable(ORDER_DATABASE, error, stored.id, STORED) from None
        except ShopError:
            raise
        except Exception as error:
            # A bug or the database: the order is stored and its lease will
            # lapse, so recovery completes or compensates it. Name it.
            log.exception("placing order failed", extra={"order_id": stored.id})
            raise ShopError(
                grpc.StatusCode.INTERNAL,
                f"order {stored.id} could not be completed now; it will be completed or compensated shortly",
                "INTERNAL",
                {"order_id": stored.id},
            ) from error

    def _run(self, order: Order, owner: str, placed_by_customer: bool) -> Order:
        """The saga as the request drives it. An upstream with an unknown
        outcome gets the order failed at once, settled in the background."""
        order_id = order.id
        try:
            order = self._reserve_step(order, owner)
        except _Unsettled as unsettled:
            error = upstream_unavailable("inventory", unsettled.error, order_id, RESERVE_UNSETTLED)
            return self._fail_later(order, owner, RELEASING, error)
        if order is not None and order.step == RESERVING:
            # Reserved, priced; nothing written since the order was stored.
            try:
                order = self._charge_step(order, owner, placed_by_customer)
            except _Unsettled as unsettled:
                error = upstream_unavailable("payment", unsettled.error, order_id, CHARGE_UNSETTLED)
                return self._fail_later(order, owner, VOIDING, error)
        if order is not None and order.step == RELEASING:
            try:
                order = self._release_step(order, owner)
            except _Unsettled:
                self._settle_in_background(order_id, owner)
                raise order.failure.error() from None
        if order is None or order.status == PENDING:
            # Our lease ran out and recovery drives the order now.
            return self._await_outcome(order_id, lost_lease(order_id))
        return _answer(order)

    def _fail_later(self, order: Order, owner: str, step: str, error: ShopError) -> Order:
        """Decide the failure, answer it now, and settle (Void, Release) in
        the background with fresh deadlines. Raises the error."""
        if self._decide(order, owner, step, FAILED, error) is None:
            return self._await_outcome(order.id, lost_lease(order.id))
        self._settle_in_background(order.id, owner)
        raise error

    # The steps. Each returns the order as it left it (None if another actor
    # took it over) and raises _Unsettled when an upstream's answer is not
    # final.

    @tracing.saga_step("saga.reserve")
    def _reserve_step(self, order: Order, owner: str) -> Order | None:
        """Reserve the stock. Reserved, the order comes back priced and still
        at RESERVING, as stored: the Charge goes next, with no write between."""
        try:
            reservation = self._reserve(order)
        except grpc.RpcError as rpc_error:
            error = from_rpc_error(rpc_error)
            if _outcome_unknown(error):
                raise _Unsettled("inventory", error) from None
            # Reserve is all or nothing and said no: nothing is reserved.
            failure = Failure.of(with_order_id(error, order.id))
            return _ended(self._move(order, owner, None, status=FAILED, step=AT_REST, failure=failure))
        priced = _with_prices(order, reservation)
        if not priced.currency:
            currencies = {i.currency for i in priced.items}
            return self._decide(
                order, owner, RELEASING, FAILED, mixed_currencies(order.id, currencies), items=priced.items
            )
        return priced

    def _reserve(self, order: Order):
        return self.inventory.Reserve(
            inventory_pb2.ReserveRequest(
                order_id=order.id,
                items=[inventory_pb2.Item(product_id=i.product_id, quantity=i.quantity) for i in order.items],
            )
        )

    @tracing.saga_step("saga.charge")
    def _charge_step(self, order: Order, owner: str, placed_by_customer: bool) -> Order | None:
        """Charge the total, for the order's owner; a decline or a refusal
        is final, and so is a capture."""
        if order.total_cents == 0:
            # Nothing to charge (payment refuses a zero amount).
            return self._confirm(order, owner, payment_id="")
        try:
            payment = self.payment.Charge(
                payment_pb2.ChargeRequest(
                    order_id=order.id,
                    amount_cents=order.total_cents,
                    currency=order.currency,
                    payment_method=order.payment_method,
                    customer_id=order.customer_id,
                    placed_by_customer=placed_by_customer,
                )
            )
        except grpc.RpcError as rpc_error:
            error = from_rpc_error(rpc_error)
            if _outcome_unknown(error):
                raise _Unsettled("payment", error) from None
            # Refused (an unknown payment method, a voided order): nothing charged.
            return self._decide(order, owner, RELEASING, FAILED, with_order_id(error, order.id))
        if payment.status == payment_pb2.CAPTURED:
            return self._confirm(order, owner, payment.id)
        if payment.status == payment_pb2.DECLINED:
            return self._decide(
                order, owner, RELEASING, PAYMENT_FAILED, payment_declined(order.id, payment), payment_id=payment.id
            )
        # Already refunded (a Void got there first): nothing is charged.
        error = failed_precondition(
            "PAYMENT_NOT_CAPTURED",
            f"payment {payment.id} of order {order.id} is {payment_pb2.PaymentStatus.Name(payment.status)}; "
            "the order failed and its stock was returned",
            order_id=order.id,
            payment_id=payment.id,
        )
        return self._decide(order, owner, RELEASING, FAILED, error, payment_id=payment.id)

    @tracing.saga_step("saga.recover_placing")
    def _recover_placing_step(self, order: Order, owner: str) -> Order | None:
        """A Reserve and a Charge may have been sent by an actor now gone. A
        charge in place completes the order (a charge follows only a
        reservation, and Reserve answers an existing one with its prices);
        otherwise Void settles it for good (a Charge still in flight is
        refused after it), the stock is released and the order fails. A new
        charge is never made for a request that was cut off."""
        if order.step == CHARGING and order.total_cents == 0:
            return self._confirm(order, owner, payment_id="")
        try:
            payments = self.payment.ListPayments(payment_pb2.ListPaymentsRequest(order_id=order.id)).payments
        except grpc.RpcError as rpc_error:
            raise _Unsettled("payment", from_rpc_error(rpc_error)) from None
        for payment in payments:
            if payment.status not in (payment_pb2.CAPTURED, payment_pb2.DECLINED):
                continue
            if order.step == RESERVING:
                # Charged, so reserved: record what the reservation priced.
                try:
                    order = _with_prices(order, self._reserve(order))
                except grpc.RpcError as rpc_error:
                    raise _Unsettled("inventory", from_rpc_error(rpc_error)) from None
            if payment.status == payment_pb2.CAPTURED:
                return self._confirm(order, owner, payment.id)
            return self._decide(
                order, owner, RELEASING, PAYMENT_FAILED, payment_declined(order.id, payment), payment_id=payment.id
            )
        return self._decide(order, owner, VOIDING, FAILED, interrupted(order.id))

    @tracing.saga_step("saga.void")
    def _void_step(self, order: Order, owner: str) -> Order | None:
        """The Charge's outcome is unknown: Void settles it for good (any
        capture refunded, any later Charge refused); then release."""
        try:
            self.payment.Void(payment_pb2.VoidRequest(order_id=order.id))
        except grpc.RpcError as rpc_error:
            raise _Unsettled("payment", from_rpc_error(rpc_error)) from None
        return self._move(order, owner, self._lease_until(), step=RELEASING)

    @tracing.saga_step("saga.release")
    def _release_step(self, order: Order, owner: str) -> Order | None:
        """Give the stock back, then take the decided outcome."""
        self._release_stock(order)
        released = _ended(self._move(order, owner, None, status=order.outcome, step=AT_REST))
        if released is not None:
            log.info("order failed", extra={"order_id": order.id, "outcome": order.outcome})
        return released

    @tracing.saga_step("saga.cancel")
    def _cancel_step(self, order: Order) -> Order:
        """Refund, release the stock, CANCELLED. Any actor may finish a
        cancellation: each call is idempotent and the last move a CAS."""
        if order.payment_id:
            try:
                self.payment.Refund(payment_pb2.RefundRequest(order_id=order.id))
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                if _outcome_unknown(error):
                    raise _Unsettled("payment", error) from None
                # Refused for good: the order stays CONFIRMED and is not retried.
                self.store.advance(order.id, (CONFIRMED, CANCELLING), None, None, step=AT_REST)
                raise with_order_id(error, order.id) from None
        self._release_stock(order)
        cancelled = _ended(
            self.store.advance(order.id, (CONFIRMED, CANCELLING), None, None, status=CANCELLED, step=AT_REST)
        )
        if cancelled is None:
            return self.get_order(order.id)
        log.info("order cancelled", extra={"order_id": order.id})
        return cancelled

    def _release_stock(self, order: Order) -> None:
        try:
            self.inventory.Release(inventory_pb2.ReleaseRequest(order_id=order.id))
        except grpc.RpcError as rpc_error:
            raise _Unsettled("inventory", from_rpc_error(rpc_error)) from None

    @tracing.saga_step("saga.confirm")
    def _confirm(self, order: Order, owner: str, payment_id: str) -> Order | None:
        confirmed = _ended(self._move(order, owner, None, status=CONFIRMED, step=AT_REST, payment_id=payment_id))
        if confirmed is not None:
            log.info("order confirmed", extra={"order_id": order.id, "payment_id": payment_id})
        return confirmed

    def _decide(self, order: Order, owner: str, step: str, outcome: str, error: ShopError, **changes) -> Order | None:
        """Record how the order will end, and the compensation step that
        gets it there, before compensating."""
        decided = self._move(
            order, owner, self._lease_until(), step=step, outcome=outcome, failure=Failure.of(error), **changes
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
        return self.store.advance(
            order.id, (order.status, order.step), owner, lease_until, known=order, **changes
        )

    # Retries with an idempotency key

    def _replay(self, existing: Order, fingerprint: str, request: OrderRequest, caller_gone) -> Order:
        if fingerprint != request.fingerprint():
            # Names the order the key belongs to, as every error about an existing order does.
            raise invalid_argument(
                [("idempotency-key", "was already used with a different request")], reason="IDEMPOTENCY_KEY_REUSED"
            ).with_metadata(order_id=existing.id)
        return self._await_outcome(
            existing.id,
            ShopError(
                grpc.StatusCode.ABORTED,
                f"order {existing.id}, placed with this idempotency key, is still in progress; retry later",
                "IDEMPOTENCY_KEY_IN_USE",
                {"order_id": existing.id},
            ),
            caller_gone,
        )

    def _await_outcome(self, order_id: str, unresolved: ShopError, caller_gone=lambda: False) -> Order:
        """The order's outcome, waiting for it up to the incoming deadline
        (less a margin to answer), or as long as the saga may take when the
        caller set none, and never once the caller is gone: the order if it
        was confirmed, its error if it failed. Raises `unresolved` if it has
        none by then."""
        left = remaining_s()
        wait_s = left - MARGIN_S if left is not None else 2 * self.config.downstream_timeout_s
        started = time.monotonic()
        give_up = started + wait_s
        pause = 0.02
        while True:
            order = self.store.get(order_id)
            if order.status != PENDING:
                return _answer(order)
            now = time.monotonic()
            # A failure decided while the stock is still on its way back is
            # the outcome already: no need to wait out an upstream outage.
            if order.failure and (now > started + DECIDED_GRACE_S or now + pause > give_up):
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
            raise upstream_unavailable(ORDER_DATABASE, error, order_id, NOT_CANCELLED_YET) from None

    def _cancel(self, order_id: str, caller: Caller | None) -> Order:
        order = self.get_order(order_id, caller)
        if order.status == CANCELLED:
            return order
        if order.status == PENDING:
            raise failed_precondition(
                "ORDER_IN_PROGRESS",
                f"order {order_id} is still being placed; it can be cancelled once it is confirmed",
                order_id=order_id,
            )
        if order.status in (PAYMENT_FAILED, FAILED):
            raise failed_precondition(
                "NOT_CANCELLABLE",
                f"order {order_id} is {order.status}: nothing was charged and its stock is back already",
                order_id=order_id,
                status=order.status,
            )
        owner = self._new_owner()
        cancelling = self.store.begin_cancel(order_id, owner, self._lease_until(calls=2))
        if cancelling is None:
            # Cancelled meanwhile by a concurrent cancel: look again.
            return self._cancel(order_id, caller)
        try:
            return self._cancel_step(cancelling)
        except _Unsettled as unsettled:
            self._give_up_lease(order_id, owner)
            raise upstream_unavailable(
                unsettled.service, unsettled.error, order_id, "is still CONFIRMED; its cancellation completes when it answers"
            ) from None

    # Settling: the request's background thread, and recovery

    def _settle(self, order: Order | None, owner: str) -> Order | None:
        """Drive an order from its persisted step to a final status. Raises
        _Unsettled if an upstream does not answer for sure; returns None if
        another actor took the order over."""
        while order is not None and order.step:
            if order.step in (RESERVING, CHARGING):
                order = self._recover_placing_step(order, owner)
            elif order.step == VOIDING:
                order = self._void_step(order, owner)
            elif order.step == RELEASING:
                order = self._release_step(order, owner)
            elif order.step == CANCELLING:
                order = self._cancel_step(order)
            else:
                raise ValueError(f"order {order.id} is at an unknown step {order.step!r}")
        return order

    def _settle_in_background(self, order_id: str, owner: str) -> None:
        """Settle on the pool, or leave the order to recovery (its lease
        released) when the backlog is full."""
        request_id = request_id_var.get()

        def settle():
            request_id_var.set(request_id)
            try:
                self._settle(self.store.get(order_id), owner)
            except _Unsettled as unsettled:
                log.warning("order left for recovery", extra={"order_id": order_id, "cause": str(unsettled)})
                self._give_up_lease(order_id, owner)
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
            log.warning("order left for recovery", extra={"order_id": order_id, "cause": "settling backlog full"})
            self._give_up_lease(order_id, owner)
            return
        future.add_done_callback(self._settled)

    def _settled(self, future: Future) -> None:
        with self._settling_lock:
            self._settling.discard(future)

    def recover_stuck_orders(self) -> int:
        """One pass of recovery: drive every order whose lease has lapsed
        and that has not moved for recovery_after_s to a final status.
        Returns how many this replica settled."""
        if self._closed.is_set():
            return 0
        now = utc_now()
        # On every pass, stuck orders or not: what the alert on them reads.
        metrics.pending_orders_seen(self.store.oldest_pending_created_at(), now)
        untouched_since = now - dt.timedelta(seconds=self.config.recovery_after_s)
        stuck = self.store.stuck_orders(now, untouched_since, RECOVERY_BATCH)
        return sum(self._recovery_pool.map(self._recover, stuck))

    @tracing.saga_step("recovery.order")
    def _recover(self, order_id: str) -> bool:
        """Claim one stuck order and settle it; True if this did."""
        owner = self._new_owner()
        now = utc_now()
        untouched_since = now - dt.timedelta(seconds=self.config.recovery_after_s)
        # The claim is itself a CAS: of two replicas, one gets the order.
        order = self.store.claim(order_id, owner, now, self._lease_until(calls=2), untouched_since)
        if order is None:
            return False
        token = request_id_var.set(f"recovery-{order_id}")
        log.info("recovering order", extra={"order_id": order_id, "status": order.status, "step": order.step})
        try:
            settled = self._settle(order, owner)
            metrics.recovery_ended(settled.status.lower() if settled is not None else "taken_over")
            return True
        except _Unsettled as unsettled:
            metrics.recovery_ended("unsettled")
            log.warning("order still unsettled", extra={"order_id": order_id, "cause": str(unsettled)})
            self._give_up_lease(order_id, owner)
        except DatabaseUnavailable as error:
            log.warning("order still unsettled", extra={"order_id": order_id, "cause": str(error)})
        except ShopError as error:
            metrics.recovery_ended("refused")
            log.warning("recovering order refused", extra={"order_id": order_id, "cause": str(error)})
        except Exception:
            metrics.recovery_ended("error")
            log.exception("recovering order failed", extra={"order_id": order_id})
            self._give_up_lease(order_id, owner)
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

    def forget_expired_idempotency_keys(self, now: dt.datetime | None = None, batch: int = KEY_PURGE_BATCH) -> int:
        """One batch: forget the keys of orders placed longer ago than the
        retention (a retry with one then places a new order); the orders
        stay. Returns how many were forgotten."""
        retention = dt.timedelta(hours=self.config.idempotency_key_ttl_h)
        return self.store.forget_idempotency_keys((now or utc_now()) - retention, batch)

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
        give_up = time.monotonic() + (timeout_s if timeout_s is not None else 3 * self.config.downstream_timeout_s)
        with self._settling_lock:
            pending = list(self._settling)
        wait(pending, timeout=max(0.0, give_up - time.monotonic()))
        # Any not started yet keep their lease until it lapses; recovery takes them then.
        self._settling_pool.shutdown(wait=False, cancel_futures=True)
        self._recovery_pool.shutdown(wait=True, cancel_futures=True)

    # Leases

    def _give_up_lease(self, order_id: str, owner: str) -> None:
        """Let recovery take the order up at once (with the database away,
        it waits for the lease to lapse instead)."""
        try:
            self.store.release_lease(order_id, owner)
        except DatabaseUnavailable:
            pass

    def _new_owner(self) -> str:
        """A lease owner token: one per actor (a request, a recovery claim),
        never shared, so an actor that lost its lease cannot move the order."""
        return f"{self.instance}:{secrets.token_hex(4)}"

    def _lease_until(self, calls: int = 1) -> dt.datetime:
        """How long the next step's calls may take (within the incoming
        deadline, if any), plus a margin to record their answer."""
        call_s = max(0.0, timeout_for_call(None, self.config.downstream_timeout_s))
        return utc_now() + dt.timedelta(seconds=calls * call_s + LEASE_MARGIN_S)


def _with_prices(order: Order, reservation) -> Order:
    """The order priced by its reservation: unit prices, total and currency
    ("" when the items are priced in more than one)."""
    prices = {line.product_id: line for line in reservation.items}
    items = tuple(
        replace(i, unit_price_cents=prices[i.product_id].unit_price_cents, currency=prices[i.product_id].currency)
        for i in order.items
    )
    currencies = {i.currency for i in items}
    total = sum(i.unit_price_cents * i.quantity for i in items)
    return replace(order, items=items, total_cents=total, currency=currencies.pop() if len(currencies) == 1 else "")


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


def lost_lease(order_id: str) -> ShopError:
    return ShopError(
        grpc.StatusCode.ABORTED,
        f"order {order_id} is being completed by recovery; GET /orders/{order_id} shows its outcome",
        "ORDER_UNRESOLVED",
        {"order_id": order_id},
    )
