"""The inventory service's shop metrics: stock adjustments (the admin's
restocks and write-offs), by direction. The free-text reason stays in the
audit table, not in a label: label values must come from a fixed set."""

from prometheus_client import Counter

INCREASE, DECREASE = "increase", "decrease"

adjustments = Counter("shop_stock_adjustments", "Stock adjustments applied, by direction.", ["direction"])
adjusted_units = Counter(
    "shop_stock_adjusted_units", "Units added or removed by stock adjustments, by direction.", ["direction"]
)
for _direction in (INCREASE, DECREASE):
    adjustments.labels(_direction)
    adjusted_units.labels(_direction)


def stock_adjusted(delta: int) -> None:
    """An adjustment by `delta` units has just been applied."""
    direction = INCREASE if delta > 0 else DECREASE
    adjustments.labels(direction).inc()
    adjusted_units.labels(direction).inc(abs(delta))
