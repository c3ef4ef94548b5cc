"""RATE_LIMIT: one budget per client IP across every public route, kept by
Flask-Limiter in RATE_LIMIT_STORAGE.

With redis:// every worker and replica draws on the same budget; if Redis
goes away, each process falls back to its own in-memory count (Flask-Limiter
logs "falling back to in-memory storage") and returns to Redis when it
answers again. The client IP is the peer address, or the X-Forwarded-For
entry TRUSTED_PROXIES hops back (werkzeug's ProxyFix, in app.py): a header a
client made up cannot buy it a new budget.
"""

from collections.abc import Callable

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from gateway.config import GatewayConfig

# A rate-limit check must not hang a request when Redis does.
REDIS_TIMEOUT_S = 0.5


def install_rate_limit(app: Flask, config: GatewayConfig, exempt: Callable[[], bool]) -> Limiter:
    storage_options = (
        {}
        if config.memory_storage
        else {"socket_connect_timeout": REDIS_TIMEOUT_S, "socket_timeout": REDIS_TIMEOUT_S}
    )
    limiter = Limiter(
        key_func=get_remote_address,
        # Application limits: one shared budget for all routes, not one per route.
        application_limits=[config.rate_limit],
        application_limits_exempt_when=exempt,
        storage_uri=config.rate_limit_storage,
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
