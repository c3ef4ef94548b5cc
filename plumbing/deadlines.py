"""The deadline of the call being served, so outgoing calls never outlive it.

gRPC Python does not propagate deadlines: the server interceptor records the
incoming deadline here and the channel wrapper (plumbing/channels.py, not a
client interceptor: see why there) clamps every outgoing call to it, less a
margin so this process still answers in time.
"""

import contextvars
import time

# An absolute time.monotonic() deadline, or None when the caller set none.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

# time_remaining() is ~9e18 s when the caller set no deadline.
_NO_DEADLINE_S = 10 * 365 * 24 * 3600
# Left for this process to record the outcome and answer its own caller.
# Read as deadlines.MARGIN_S where it is used, so a test can widen it.
MARGIN_S = 0.2


def deadline_from_remaining(remaining: float | None) -> float | None:
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return time.monotonic() + remaining


def remaining_s() -> float | None:
    """Seconds left for the call being served, or None if unbounded."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()


def timeout_for_call(requested: float | None, default: float) -> float:
    """The timeout an outgoing call gets: its own or the default, never past
    the incoming deadline less the margin. Zero or less means there is no
    time left to make the call at all."""
    timeout = requested if requested is not None else default
    left = remaining_s()
    if left is not None:
        timeout = min(timeout, left - MARGIN_S)
    return timeout
