"""RATE_LIMIT: one budget per client IP across every public route, kept by
Flask-Limiter in RATE_LIMIT_STORAGE.

With redis:// every worker and replica draws on the same budget; if Redis
goes away, each process falls back to its own in-memory count (Flask-Limiter
logs "falling back to in-memory storage") and returns to Redis when it
answers again. The client IP is the peer address, or the X-Forwarded-For
entry TRUSTED_PROXIES hops back (werkzeug's ProxyFix, in app.py): a header a
client made up cannot buy it a new budget.
"""

import threading
import time
from collections.abc import Callable

from flask import Flask
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.util import get_remote_address
from limits.storage import MemoryStorage

from gateway.config import GatewayConfig

# A rate-limit check must not hang a request when Redis does.
REDIS_TIMEOUT_S = 0.5


class _AlwaysRunning:
    """Stands in for MemoryStorage's expiry timer, which it restarts whenever
    the last one has stopped."""

    def is_alive(self) -> bool:
        return True

    def cancel(self) -> None:
        pass


class SweptMemoryStorage(MemoryStorage):
    """limits' in-memory storage (what RATE_LIMIT_STORAGE=memory:// means),
    with expired counters swept at most once a second, by the request that
    finds a sweep due. The stock storage starts a new threading.Timer 10 ms
    after any request that finds none running: under load, a thread started
    every few requests, about a fifth of the CPU of a gateway read. Counts
    and windows are the stock ones (a counter past its window reads as 0
    whether or not it has been swept)."""

    STORAGE_SCHEME = ["gateway-memory"]
    SWEEP_INTERVAL_S = 1.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.timer.cancel()
        self.timer = _AlwaysRunning()
        self._sweep_lock = threading.Lock()
        self._next_sweep = time.monotonic() + self.SWEEP_INTERVAL_S

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.monotonic()
        if now >= self._next_sweep and self._sweep_lock.acquire(blocking=False):
            try:
                self._next_sweep = now + self.SWEEP_INTERVAL_S
                self._MemoryStorage__expire_events()
            finally:
                self._sweep_lock.release()
        return super().incr(key, expiry, amount)


class ParsedOnceLimit(ApplicationLimit):
    """RATE_LIMIT as Flask-Limiter's application limit, parsed once. The
    stock one parses the limit string and builds new limit objects on every
    request; ours is a fixed string, so the first answer serves them all."""

    def __iter__(self):
        parsed = self.__dict__.get("_parsed")
        if parsed is None:
            # Flask-Limiter has finalized the limit (cost, exempt_when...) by the first request.
            parsed = self.__dict__["_parsed"] = tuple(super().__iter__())
        return iter(parsed)


def storage_uri(config: GatewayConfig) -> str:
    if config.memory_storage:
        return "gateway-memory://" + config.rate_limit_storage.removeprefix("memory://")
    return config.rate_limit_storage


def install_rate_limit(app: Flask, config: GatewayConfig, exempt: Callable[[], bool]) -> Limiter:
    storage_options = (
        {}
        if config.memory_storage
        else {"socket_connect_timeout": REDIS_TIMEOUT_S, "socket_timeout": REDIS_TIMEOUT_S}
    )
    limiter = Limiter(
        key_func=get_remote_address,
        # Application limits: one shared budget for all routes, not one per route.
        application_limits=[ParsedOnceLimit(limit_provider=config.rate_limit, finalized=False)],
        application_limits_exempt_when=exempt,
        storage_uri=storage_uri(config),
        storage_options=storage_options,
        strategy="fixed-window",
        headers_enabled=True,
        retry_after="delta-seconds",
        key_prefix=config.rate_limit_key_prefix,
        # Without explicit fallback limits the in-memory fallback keeps RATE_LIMIT.
        in_memory_fallback_enabled=not config.memory_storage,
    )
    limiter.init_app(app)
    return limiter
