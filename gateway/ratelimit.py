"""RATE_LIMIT: one budget per client IP across every public route, counted
in fixed windows with `limits` (the engine beneath Flask-Limiter), from one
request hook in app.py.

Where the counts live (RATE_LIMIT_STORAGE):

- memory:// keeps them on this host, in one small SQLite table that every
  worker process of this gateway shares (python -m gateway creates it before
  its workers start): one exact budget per client IP, whatever the number
  of workers. A gateway app built on its own (tests) gets a table of its own.
- redis:// (and the other schemes of `limits`) shares them with every worker
  and replica. If Redis goes away, each process counts on its own in memory
  ("falling back to in-memory storage", logged once) and returns to Redis
  when it answers again, so a Redis outage never fails a request.

The client IP is the peer address, or the X-Forwarded-For entry
TRUSTED_PROXIES hops back (werkzeug's ProxyFix, in app.py): a header a client
made up cannot buy it a new budget.
"""

import logging
import math
import os
import shutil
import sqlite3
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
    """Fixed-window counters in a SQLite table that several processes share:
    one statement per hit, atomic under SQLite's own locking. WAL without
    fsync: the counts need no durability, only one truth for every worker."""

    PURGE_EVERY_S = 10.0
    _HIT = (
        "INSERT INTO hits (key, expires_at, count) VALUES (:key, :now + :window, :amount) "
        "ON CONFLICT (key) DO UPDATE SET "
        "count = CASE WHEN expires_at > :now THEN count + :amount ELSE :amount END, "
        "expires_at = CASE WHEN expires_at > :now THEN expires_at ELSE :now + :window END "
        "RETURNING count, expires_at"
    )

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._pid = -1
        self._connection: sqlite3.Connection | None = None
        self._next_purge = 0.0

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross a fork: each process opens its own.
        if self._pid != os.getpid():
            connection = sqlite3.connect(self.path, timeout=1.0, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS hits "
                "(key TEXT PRIMARY KEY, expires_at REAL NOT NULL, count INTEGER NOT NULL) WITHOUT ROWID"
            )
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def hit(self, key: str, window_s: int, amount: int = 1) -> tuple[int, float]:
        """Count one hit; (hits in the current window, when it ends)."""
        now = time.time()
        with self._lock:
            connection = self._connect()
            if now >= self._next_purge:
                self._next_purge = now + self.PURGE_EVERY_S
                connection.execute("DELETE FROM hits WHERE expires_at <= ?", (now,))
            count, expires_at = connection.execute(
                self._HIT, {"key": key, "now": now, "window": window_s, "amount": amount}
            ).fetchone()
        return count, expires_at


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
            self.counters = HostCounters(os.path.join(shared_dir, "ratelimit.sqlite"))
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
