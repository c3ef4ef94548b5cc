"""The errors the order service answers with, made in one place so that
each reason (API.md's table) and its message read the same wherever the saga
raises it. Every error about an order names it (metadata order_id).
"""

import grpc

from plumbing.errors import ShopError, failed_precondition, invalid_argument

# What the caller is told happens to an order whose Reserve or Charge had an
# unknown outcome: it fails, and the background or recovery compensates it,
# within 30 s of the upstream answering again (until then it is PENDING).
RESERVE_UNSETTLED = "failed: nothing was charged and any stock held for it will be returned"
CHARGE_UNSETTLED = "failed: any charge will be voided and its stock returned"
CANCEL_UNSETTLED = "is still CONFIRMED; its cancellation completes when it answers"
# ... and when this service's own database failed it.
ORDER_DATABASE = "order database"
NOT_PLACED = "was not placed: nothing was reserved or charged"
STORED = "is stored, and will be completed or compensated shortly"
OUTCOME_UNREAD = "was placed with this idempotency key; its outcome cannot be read now"
NOT_CANCELLED_YET = "is not cancelled yet; repeating the cancellation is harmless"


def _about(order_id: str, code: grpc.StatusCode, reason: str, message: str, **metadata: str) -> ShopError:
    """An error about one order: its metadata names the order."""
    return ShopError(code, message, reason, {"order_id": order_id, **metadata})


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
    return _about(
        order_id, code, code.name, f"{service} {what}; order {order_id} {consequence}", service=service
    )


def payment_declined(order_id: str, payment_id: str, decline_reason: str) -> ShopError:
    return failed_precondition(
        "PAYMENT_DECLINED",
        f"payment declined ({decline_reason}); order {order_id} is kept as PAYMENT_FAILED "
        "and its stock returned",
        order_id=order_id,
        payment_id=payment_id,
        decline_reason=decline_reason,
    )


def payment_not_captured(order_id: str, payment_id: str, status: str) -> ShopError:
    """The charge found its payment refunded already (a Void got there first)."""
    return failed_precondition(
        "PAYMENT_NOT_CAPTURED",
        f"payment {payment_id} of order {order_id} is {status}; the order failed and its stock was returned",
        order_id=order_id,
        payment_id=payment_id,
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
    message = f"order {order_id} was interrupted before it completed; nothing is reserved or charged"
    return _about(order_id, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", message, cause="interrupted")


def not_completed(order_id: str) -> ShopError:
    """A bug or the database stopped the saga midway; the order is stored
    and recovery takes it up once its lease lapses."""
    message = f"order {order_id} could not be completed now; it will be completed or compensated shortly"
    return _about(order_id, grpc.StatusCode.INTERNAL, "INTERNAL", message)


def lost_lease(order_id: str) -> ShopError:
    message = f"order {order_id} is being completed by recovery; GET /orders/{order_id} shows its outcome"
    return _about(order_id, grpc.StatusCode.ABORTED, "ORDER_UNRESOLVED", message)


def idempotency_key_reused(order_id: str) -> ShopError:
    # Names the order the key belongs to, as every error about an existing order does.
    return invalid_argument(
        [("idempotency-key", "was already used with a different request")], reason="IDEMPOTENCY_KEY_REUSED"
    ).with_metadata(order_id=order_id)


def idempotency_key_in_use(order_id: str) -> ShopError:
    message = f"order {order_id}, placed with this idempotency key, is still in progress; retry later"
    return _about(order_id, grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_IN_USE", message)


def order_in_progress(order_id: str) -> ShopError:
    return failed_precondition(
        "ORDER_IN_PROGRESS",
        f"order {order_id} is still being placed; it can be cancelled once it is confirmed",
        order_id=order_id,
    )


def not_cancellable(order_id: str, status: str) -> ShopError:
    return failed_precondition(
        "NOT_CANCELLABLE",
        f"order {order_id} is {status}: nothing was charged and its stock is back already",
        order_id=order_id,
        status=status,
    )
