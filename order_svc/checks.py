"""The order service's request checks: what a CreateOrder or ListOrders may
carry beyond the field rules declared in the proto (which the interceptor
has enforced already), and the page tokens of a list.
server.py calls them before anything is stored or read; each check adds what
is wrong to a Violations and returns the value in normal form.
"""

import datetime as dt
import json
from base64 import urlsafe_b64decode, urlsafe_b64encode

from order_svc.model import Cursor
from plumbing.validation import Violations

# An order with no payment method is charged to the test card.
DEFAULT_PAYMENT_METHOD = "tok_visa"
DEFAULT_PAGE_SIZE = 50  # at most 200: declared in the proto (ListOrdersRequest.page_size)
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# An order's seq is a signed 64-bit integer in every database we store it in.
MAX_SEQ = 2**63 - 1


def check_idempotency_key(violations: Violations, key: str | None) -> str:
    """An Idempotency-Key: 1-255 printable ASCII characters ("" for none)."""
    if key is None:
        return ""
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        violations.add(
            "idempotency-key", f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters"
        )
    return key


def check_page(
    violations: Violations, customer_id: str, page_size: int, page_token: str
) -> tuple[int, Cursor | None]:
    cursor = None
    if page_token:
        cursor = decode_page_token(page_token)
        if cursor is None:
            violations.add("page_token", "is not a page token this service issued")
        elif cursor.customer_id != customer_id:
            violations.add("page_token", "was issued for a list with a different customer_id")
    return page_size or DEFAULT_PAGE_SIZE, cursor


def encode_page_token(cursor: Cursor | None) -> str:
    """The next_page_token of a page that ends at `cursor` ("" on the last page)."""
    if cursor is None:
        return ""
    raw = json.dumps(
        {"t": cursor.created_at.isoformat(), "s": cursor.seq, "c": cursor.customer_id}, separators=(",", ":")
    )
    return urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> Cursor | None:
    """The cursor in a token, or None if it is not one of ours. Tokens are
    not signed: a forged one may say anything, so every value is checked to
    be one a list could have issued (a seq past 64 bits, or a time that
    leaves the calendar in UTC, would fail in the database instead)."""
    try:
        raw = json.loads(urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        created_at = dt.datetime.fromisoformat(raw["t"])
        seq, customer_id = raw["s"], raw["c"]
        if created_at.tzinfo is None:
            return None
        created_at = created_at.astimezone(dt.UTC)
    except (ValueError, TypeError, KeyError, OverflowError):
        return None
    if type(seq) is not int or not 0 < seq <= MAX_SEQ or not isinstance(customer_id, str):
        return None
    return Cursor(created_at, seq, customer_id)
