"""RATE_LIMIT: one budget per client IP across every public route, counted
in fixed windows with `limits` (the engine beneath Flask-Limiter), from one
request hook in app.py.

Where the counts live (RATE_LIMIT_STORAGE):

- memory:// keeps them on this host, in one table in shared memory that every
  worker process of this gateway shares (in the folder python -m gateway
  makes before its workers start): one exact budget per client IP, whatever
  the number of workers. A gateway app built on its own (tests) gets a table of its own.
- redis:// (and the other schemes of `limits`) shares them with every worker
  and replica. If Redis goes away, each process counts on its own in memory
  ("falling back to in-memory storage", logged once) and returns to Redis
  when it answers again, so a Redis outage never fails a request.

The client IP is the peer address, or the X-Forwarded-For entry
TRUSTED_PROXIES hops back (werkzeug's ProxyFix, in app.py): a header a client
made up cannot buy it a new budget.
"""

import fcntl
import hashlib
import logging
import math
import mmap
import os
import shutil
import struct
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, Storage, storage_from_string

from gateway.config import GatewayConfig

log = logging.getLogger("gateway.ratelimit")

# A rate-limit check must not hang a request when Redis does.
REDIS_TIMEOUT_S = 0.5
# While Redis is unreachable, how often one request tries it again.
REDIS_RETRY_S = 2.0
# python -m gateway sets this for its workers: the folder of the shared table.
SHARED_DIR_ENV = "GATEWAY_RATE_LIMIT_DIR"


@dataclass(frozen=True)
class Verdict:
    """One request's standing against RATE_LIMIT, for the answer's headers."""

    allowed: bool
    limit: int
    remaining: int
    # When the current window ends (epoch seconds).
    reset_at: float

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.reset_at - time.time())))
        return headers


class HostCounters:
    """Fixed-window counters that every process of this gateway shares: a
    table of SLOTS slots in a file mapped into memory, one lock for threads
    and one (flock) for processes, nothing written to disk on the request's
    path. (A SQLite table did this first: a statement, a WAL append and
    SQLite's file locks per request made it an eighth of the gateway's CPU.)

    A slot holds a key's 16-byte digest, when its window ends and its count.
    A key lives in the first usable slot from the one its digest names,
    PROBE slots at most: its own, an unused one, or one whose window has
    ended. With all PROBE slots in use by other keys' live windows (more
    clients in one window than a table this size holds near one slot), the
    one that ends soonest is taken over and its client starts a new window."""

    SLOTS = 65536
    PROBE = 64
    _SLOT = struct.Struct("<16sdq")
    _UNUSED = bytes(16)

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._pid = -1
        self._fd = -1
        self._table: mmap.mmap | None = None

    def _open(self) -> mmap.mmap:
        # An open file (and so its flock) must not cross a fork: each process opens its own.
        if self._pid != os.getpid():
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            weakref.finalize(self, os.close, fd)
            size = self.SLOTS * self._SLOT.size
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._fd, self._table, self._pid = fd, mmap.mmap(fd, size), os.getpid()
        return self._table

    def hit(self, key: str, window_s: int, amount: int = 1) -> tuple[int, float]:
        """Count one hit; (hits in the current window, when it ends)."""
        now = time.time()
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        with self._lock:
            table = self._open()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                offset, count, ends = self._slot(table, digest, now)
                if ends <= now:
                    count, ends = 0, now + window_s
                count += amount
                self._SLOT.pack_into(table, offset, digest, ends, count)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return count, ends

    def _slot(self, table: mmap.mmap, digest: bytes, now: float) -> tuple[int, int, float]:
        """The slot of `digest` (its offset, count and window end), else the
        first unused or ended one, else the one whose window ends soonest
        (with no window: 0, 0.0)."""
        home = int.from_bytes(digest[:8], "little") % self.SLOTS
        free = soonest = None
        for n in range(self.PROBE):
            offset = (home + n) % self.SLOTS * self._SLOT.size
            held, ends, count = self._SLOT.unpack_from(table, offset)
            if held == digest:
                return offset, count, ends
            if held == self._UNUSED:
                # Never used: the key was not stored beyond it.
                return (offset if free is None else free), 0, 0.0
            if ends <= now:
                free = offset if free is None else free
            elif soonest is None or ends < soonest[0]:
                soonest = (ends, offset)
        return (soonest[1] if free is None else free), 0, 0.0


class StorageCounters:
    """Fixed-window counters in a `limits` storage (Redis, or memory for the
    fallback): incr, then the window's end."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def hit(self, key: str, window_s: int, amount: int = 1) -> tuple[int, float]:
        count = self.storage.incr(key, window_s, amount=amount)
        return count, self.storage.get_expiry(key)


class FallingBackCounters:
    """Redis' counters, or while Redis is unreachable this process's own."""

    def __init__(self, storage: Storage):
        self.shared = StorageCounters(storage)
        self.fallback = StorageCounters(MemoryStorage())
        self._errors = storage.base_exceptions
        self._retry_at: float | None = None

    def hit(self, key: str, window_s: int, amount: int = 1) -> tuple[int, float]:
        if self._retry_at is not None:
            if time.monotonic() < self._retry_at:
                return self.fallback.hit(key, window_s, amount)
            self._retry_at = None
            try:
                result = self.shared.hit(key, window_s, amount)
            except self._errors:
                self._retry_at = time.monotonic() + REDIS_RETRY_S
                return self.fallback.hit(key, window_s, amount)
            log.warning("rate limit storage answers again: back to the shared budget")
            return result
        try:
            return self.shared.hit(key, window_s, amount)
        except self._errors as error:
            log.warning(
                "rate limit storage unreachable (%s): falling back to in-memory storage, per process",
                type(error).__name__,
            )
            self._retry_at = time.monotonic() + REDIS_RETRY_S
            return self.fallback.hit(key, window_s, amount)


class RateLimit:
    """RATE_LIMIT for one gateway process: `check(client)` counts a request."""

    def __init__(self, config: GatewayConfig, shared_dir: str | None = None):
        self.items: list[RateLimitItem] = parse_many(config.rate_limit)
        self.prefix = config.rate_limit_key_prefix
        if config.memory_storage:
            if shared_dir is None:
                shared_dir = tempfile.mkdtemp(prefix="gateway-ratelimit-")
                weakref.finalize(self, shutil.rmtree, shared_dir, ignore_errors=True)
            self.counters = HostCounters(os.path.join(shared_dir, "ratelimit.counters"))
        else:
            storage = storage_from_string(
                config.rate_limit_storage,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                socket_timeout=REDIS_TIMEOUT_S,
            )
            self.counters = FallingBackCounters(storage)

    def check(self, client: str) -> Verdict:
        """Count one request of `client` against every limit; the verdict of
        the limit closest to refusing it."""
        verdict = None
        for item in self.items:
            count, reset_at = self.counters.hit(f"{self.prefix}/{item.key_for(client)}", item.get_expiry())
            candidate = Verdict(count <= item.amount, item.amount, max(0, item.amount - count), reset_at)
            if verdict is None or (candidate.allowed, candidate.remaining) < (verdict.allowed, verdict.remaining):
                verdict = candidate
        return verdict
