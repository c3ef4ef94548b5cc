"""The order service's shop metrics: how orders end, how long their saga
takes, what recovery does, and whether any order is stuck.

Counted where the saga's compare-and-set succeeds, so each order is counted
once however many replicas or retries touch it. Every label takes a value
from a fixed set; each series exists from the start, at zero.
"""

import datetime as dt

from prometheus_client import Counter, Gauge, Histogram

from order_svc.model import Order, OrderStatus
from plumbing.timestamps import utc_now

FINAL_STATUSES = tuple(s for s in OrderStatus if s != OrderStatus.PENDING)
# The statuses a placement ends in; CANCELLED comes later, by request.
PLACEMENT_OUTCOMES = tuple(s for s in FINAL_STATUSES if s != OrderStatus.CANCELLED)
# How a recovery attempt left a stuck order: the final status it reached
# (lower case), or why it did not reach one.
RECOVERY_OUTCOMES = (
    "confirmed",
    "payment_failed",
    "failed",
    "cancelled",
    "taken_over",  # another actor moved the order meanwhile
    "unsettled",  # an upstream still does not answer for sure; tried again later
    "refused",  # an upstream refused for good (the order keeps its status)
    "error",
)
# A saga takes milliseconds; recovery of an interrupted one takes seconds.
SAGA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

orders = Counter("shop_orders", "Orders that reached a final status, by that status.", ["status"])
saga_seconds = Histogram(
    "shop_order_saga_duration_seconds",
    "Time from an order stored to the final status of its placement (recovery included).",
    ["status"],
    buckets=SAGA_BUCKETS,
)
recoveries = Counter(
    "shop_order_recoveries", "Stuck orders the recovery loop took over, by how it left them.", ["outcome"]
)
# Measured by every recovery pass (each RECOVERY_INTERVAL_S), in each process
# of the service: a plain gauge works with PROCESSES > 1 too (the highest).
oldest_pending_age = Gauge(
    "shop_oldest_pending_order_age_seconds",
    "Age of the oldest order still PENDING (0 when there is none), as the last recovery pass found it.",
    multiprocess_mode="max",
)
for _status in FINAL_STATUSES:
    orders.labels(_status)
for _status in PLACEMENT_OUTCOMES:
    saga_seconds.labels(_status)
for _outcome in RECOVERY_OUTCOMES:
    recoveries.labels(_outcome)


def order_ended(order: Order) -> None:
    """`order` has just moved to its final status."""
    orders.labels(order.status).inc()
    if order.status in PLACEMENT_OUTCOMES and order.created_at is not None:
        saga_seconds.labels(order.status).observe(max(0.0, (utc_now() - order.created_at).total_seconds()))


def recovery_ended(outcome: str) -> None:
    recoveries.labels(outcome).inc()


def pending_orders_seen(oldest_created_at: dt.datetime | None, now: dt.datetime) -> None:
    """A recovery pass found the oldest PENDING order stored at `oldest_created_at` (None: none)."""
    age = 0.0 if oldest_created_at is None else max(0.0, (now - oldest_created_at).total_seconds())
    oldest_pending_age.set(age)
