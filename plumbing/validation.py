"""Request checks shared by the services: ids, quantities, item lists.
Every violation of a request is collected, so one answer names them all."""

import re
from collections.abc import Iterable

from plumbing.errors import invalid_argument

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# ISO 4217: three capital letters. Always fullmatch: re.match's $ also
# matches before a trailing newline ("USD\n").
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
# The ids the payment service issues for payment methods (pm_ + 12 random bytes in hex).
PAYMENT_METHOD_ID = re.compile(r"pm_[0-9a-f]{24}")
# What an order may name as its payment method: a test token or such an id.
# Nothing else, so no card number (or anything holding one) reaches an order row.
PAYMENT_METHOD_REFERENCE = re.compile(r"tok_[A-Za-z0-9]{1,60}|" + PAYMENT_METHOD_ID.pattern)
MIN_QUANTITY, MAX_QUANTITY = 1, 1000
MAX_ITEMS = 50


class Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field_path: str, description: str) -> None:
        self.items.append((field_path, description))

    def check_id(self, field_path: str, value: str, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field_path, "is required")
        elif not ID_PATTERN.fullmatch(value):
            self.add(field_path, "must match ^[A-Za-z0-9_-]{1,64}$")

    def check_currency(self, field_path: str, value: str) -> None:
        if not CURRENCY_PATTERN.fullmatch(value):
            self.add(field_path, "must be an ISO 4217 code such as USD")

    def check_range(self, field_path: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            self.add(field_path, f"must be between {low} and {high}, got {value}")

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_argument(self.items)


def valid_id(request, field_name: str) -> str:
    """A request's one id field (order_id, product_id, ...), checked: the
    whole validation of requests that name a single resource."""
    value = getattr(request, field_name)
    violations = Violations()
    violations.check_id(field_name, value)
    violations.raise_if_any()
    return value


def requested_items(request, violations: Violations) -> list[tuple[str, int]]:
    """The (product_id, quantity) lines of a request with `items` or the flat
    form of the original design (`product_id` + `quantity` = one item)."""
    flat = bool(request.product_id or request.quantity)
    if request.items and flat:
        violations.add("items", "give either items or product_id and quantity, not both")
        return []
    if flat:
        violations.check_id("product_id", request.product_id)
        violations.check_range("quantity", request.quantity, MIN_QUANTITY, MAX_QUANTITY)
        return [(request.product_id, request.quantity)]
    check_items(((i.product_id, i.quantity) for i in request.items), violations)
    return [(i.product_id, i.quantity) for i in request.items]


def check_items(items: Iterable[tuple[str, int]], violations: Violations) -> None:
    items = list(items)
    if not items:
        violations.add("items", "at least one item is required")
    elif len(items) > MAX_ITEMS:
        violations.add("items", f"at most {MAX_ITEMS} items, got {len(items)}")
    for index, (product_id, quantity) in enumerate(items[:MAX_ITEMS]):
        violations.check_id(f"items[{index}].product_id", product_id)
        violations.check_range(f"items[{index}].quantity", quantity, MIN_QUANTITY, MAX_QUANTITY)
