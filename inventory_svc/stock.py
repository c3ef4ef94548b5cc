"""Stock rules, with no gRPC and no SQL: what a valid product is, how an
order's items become per-product quantities, and the seed catalog."""

from collections import Counter
from dataclasses import dataclass

from plumbing.validation import Violations

MAX_PRICE_CENTS = 100_000_000  # $1,000,000: a typo guard, not a business rule
MAX_STOCK = 1_000_000_000
MAX_NAME_LENGTH = 200
MAX_REASON_LENGTH = 200


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    price_cents: int
    currency: str
    available: int


@dataclass(frozen=True)
class ReservedLine:
    product_id: str
    quantity: int
    unit_price_cents: int
    currency: str


@dataclass(frozen=True)
class Reservation:
    order_id: str
    status: str  # RESERVED or RELEASED
    lines: tuple[ReservedLine, ...]


RESERVED, RELEASED = "RESERVED", "RELEASED"

SEED_CATALOG = (
    Product("P001", "Wireless Mouse", 1999, "USD", 100),
    Product("P002", "Mechanical Keyboard", 8999, "USD", 50),
    Product("P003", "USB-C Hub", 3499, "USD", 75),
    Product("P004", "27-inch Monitor", 24999, "USD", 20),
    Product("P005", "Laptop Stand", 2999, "USD", 60),
    Product("P006", "Noise-Cancelling Headphones", 19999, "USD", 30),
    Product("P007", "HD Webcam", 5999, "USD", 40),
    Product("P008", "Desk Lamp", 2499, "USD", 80),
    Product("P009", "External SSD 1TB", 10999, "USD", 45),
    Product("P010", "Ergonomic Chair", 29999, "USD", 10),
)


def quantities_by_product(items: list[tuple[str, int]]) -> dict[str, int]:
    """One quantity per product (an order may list a product twice), in
    product order, so concurrent transactions lock rows in the same order."""
    totals = Counter()
    for product_id, quantity in items:
        totals[product_id] += quantity
    return dict(sorted(totals.items()))


def check_product_fields(
    violations: Violations,
    name: str | None,
    price_cents: int | None,
    currency: str | None,
    available: int | None,
) -> None:
    if name is not None and not 1 <= len(name.strip()) <= MAX_NAME_LENGTH:
        violations.add("name", f"must be 1 to {MAX_NAME_LENGTH} characters")
    if price_cents is not None:
        violations.check_range("price_cents", price_cents, 0, MAX_PRICE_CENTS)
    if currency is not None:
        violations.check_currency("currency", currency)
    if available is not None:
        violations.check_range("available", available, 0, MAX_STOCK)


def check_adjustment(violations: Violations, delta: int, reason: str) -> None:
    if delta == 0:
        violations.add("delta", "must not be 0")
    elif abs(delta) > MAX_STOCK:
        violations.add("delta", f"must be between -{MAX_STOCK} and {MAX_STOCK}")
    if len(reason) > MAX_REASON_LENGTH:
        violations.add("reason", f"must be at most {MAX_REASON_LENGTH} characters")
