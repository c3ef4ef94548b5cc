"""Request checks the declared field rules (plumbing/field_rules.py) cannot
say, because they look at more than one field or at more than the request:
which form of an item list was given. Also the id pattern, taken from the
protos, for the ids that come from elsewhere (a JWT's subject). Every
violation is collected, so one answer names them all."""

import re

from plumbing.errors import invalid_argument
from plumbing.field_rules import format_rule
from shop.api.v1 import field_rules_pb2

# An id as the protos declare it (format ID): a customer id, so also a JWT subject.
ID_PATTERN = re.compile(format_rule(field_rules_pb2.ID).pattern)
# The ids the payment service issues for payment methods (pm_ + 12 random bytes in hex).
PAYMENT_METHOD_ID = re.compile(r"pm_[0-9a-f]{24}")


class Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field_path: str, description: str) -> None:
        self.items.append((field_path, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_argument(self.items)


def requested_items(request, violations: Violations) -> list[tuple[str, int]]:
    """The (product_id, quantity) lines of a request with `items` or the flat
    form of the original design (`product_id` + `quantity` = one item). The
    field rules have checked each value; this checks which form was given."""
    flat = bool(request.product_id or request.quantity)
    if request.items and flat:
        violations.add("items", "give either items or product_id and quantity, not both")
        return []
    if flat:
        if not request.product_id:
            violations.add("product_id", "is required with quantity")
        if not request.quantity:
            violations.add("quantity", "is required with product_id")
        return [(request.product_id, request.quantity)]
    if not request.items:
        violations.add("items", "at least one item is required")
    return [(i.product_id, i.quantity) for i in request.items]
