"""The gateway's settings, read from the environment in one place."""

import re
import urllib.parse
from dataclasses import dataclass

from limits import parse_many

from plumbing.config import ConfigError, LogConfig, UpstreamConfig, env_int, env_str

DEFAULT_PORT = 30080
# Worker processes x threads: what measured fastest on a 2-core machine
# (docs/performance.md); one worker per core, threads for calls in flight.
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 8


@dataclass(frozen=True)
class GatewayConfig:
    port: int
    upstreams: UpstreamConfig
    # One budget per client IP across every public route, e.g. "100/minute".
    rate_limit: str
    rate_limit_storage: str
    # Separates this deployment's counters from others sharing one Redis.
    rate_limit_key_prefix: str
    workers: int
    threads: int
    # Empty: the admin routes answer 403 to everyone.
    admin_token: str
    # How many proxy hops' X-Forwarded-For to believe.
    trusted_proxies: int
    log: LogConfig
    max_body_bytes: int = 64 * 1024

    @classmethod
    def from_env(cls) -> "GatewayConfig":
        config = cls(
            port=env_int("GATEWAY_PORT", DEFAULT_PORT),
            upstreams=UpstreamConfig.from_env(),
            rate_limit=env_str("RATE_LIMIT", "100/minute"),
            rate_limit_storage=env_str("RATE_LIMIT_STORAGE", "memory://"),
            rate_limit_key_prefix=env_str("RATE_LIMIT_KEY_PREFIX", "gateway"),
            workers=env_int("GATEWAY_WORKERS", DEFAULT_WORKERS, minimum=1),
            threads=env_int("GATEWAY_THREADS", DEFAULT_THREADS, minimum=1),
            # Not stripped of inner spaces: a token is compared byte for byte.
            admin_token=env_str("ADMIN_TOKEN", ""),
            trusted_proxies=env_int("TRUSTED_PROXIES", 0),
            log=LogConfig.from_env(),
        )
        config.validate()
        return config

    def validate(self) -> None:
        try:
            if not parse_many(self.rate_limit):
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"RATE_LIMIT={self.rate_limit!r} is not a rate limit such as '100/minute'"
            ) from None
        if not re.match(
            r"^(memory|redis|rediss|redis\+unix|redis\+sentinel|redis\+cluster)://", self.rate_limit_storage
        ):
            raise ConfigError(
                f"RATE_LIMIT_STORAGE={self.rate_limit_storage!r} must be memory:// or redis://host:port "
                "(rediss://, redis+unix://, redis+sentinel:// and redis+cluster:// work too)"
            )

    @property
    def memory_storage(self) -> bool:
        return self.rate_limit_storage.startswith("memory://")

    @property
    def rate_limit_storage_for_logs(self) -> str:
        """RATE_LIMIT_STORAGE without its password."""
        parts = urllib.parse.urlsplit(self.rate_limit_storage)
        if parts.password is None:
            return self.rate_limit_storage
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
