"""What services share about requests beyond their declared rules
(plumbing/field_rules.py): violations collected by the checks that look past
one request (a card's checksum, an unknown payment method), so one answer
names them all; the lines of an item list in either of its forms; and the id
pattern, taken from the protos, for the ids that come from elsewhere (a
JWT's subject)."""

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


def requested_items(request) -> list[tuple[str, int]]:
    """The (product_id, quantity) lines of a request with `items` or the flat
    form of the original design (`product_id` + `quantity` = one item). The
    request's rules (declared in its proto) have checked that it gives one
    form, and each value."""
    if request.items:
        return [(i.product_id, i.quantity) for i in request.items]
    return [(request.product_id, request.quantity)]
