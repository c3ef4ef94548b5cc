"""The payment service's shop metrics: payments by the status they reach and,
for declines, why.

Counted when the store has recorded the change, once per payment and status:
a repeated Charge, Void or Refund finds the first one and counts nothing.
Labels take values from fixed sets (the simulated processor's decline
reasons); each series exists from the start, at zero.
"""

from prometheus_client import Counter

from payment_svc import charges

DECLINE_REASONS = (charges.CARD_DECLINED, charges.INSUFFICIENT_FUNDS, charges.EXPIRED_CARD)

payments = Counter(
    "shop_payments",
    "Payments by the status they reached (CAPTURED, DECLINED, REFUNDED) and the decline reason.",
    ["status", "decline_reason"],
)
payments.labels(charges.PaymentStatus.CAPTURED, "")
payments.labels(charges.PaymentStatus.REFUNDED, "")
for _reason in DECLINE_REASONS:
    payments.labels(charges.PaymentStatus.DECLINED, _reason)


def payment_recorded(payment: charges.Payment) -> None:
    """`payment` has just been recorded with its status."""
    payments.labels(payment.status, payment.decline_reason).inc()
