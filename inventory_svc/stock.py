"""Stock rules, with no gRPC and no SQL: a product and a reservation, how an
order's items become per-product quantities, and the seed catalog. What a
valid product field is, is declared in the proto (UpsertProductRequest)."""

from collections import Counter
from dataclasses import dataclass

from plumbing.messages import names_of
from shop.inventory.v1 import inventory_pb2


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


# The proto's reservation statuses, by name.
ReservationStatus = names_of(inventory_pb2.ReservationStatus, "ReservationStatus")
RESERVED, RELEASED = ReservationStatus.RESERVED, ReservationStatus.RELEASED

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
