"""The gateway's settings, read from the environment in one place."""

import re
import urllib.parse
from dataclasses import dataclass, field

from limits import parse_many

from plumbing.config import ConfigError, LogConfig, UpstreamConfig, env_int, env_port, env_str

DEFAULT_PORT = 30080
# Worker processes x threads: what measured fastest on a 2-core machine
# (docs/performance.md), whatever the cores here: one worker per core there,
# threads for calls in flight.
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 8

AUTH_MODES = ("off", "jwt")
# A shared secret (ADMIN_TOKEN, AUTH_HS256_SECRET) shorter than this, or a
# manifest's placeholder, is refused at start: a guessable secret must not run.
MIN_SECRET_BYTES = 32
PLACEHOLDER_PREFIX = "change-me"


def refuse_placeholder(name: str, value: str) -> None:
    """ConfigError for a secret that is a placeholder or too short (never quoting it)."""
    if len(value.encode()) < MIN_SECRET_BYTES or value.startswith(PLACEHOLDER_PREFIX):
        raise ConfigError(
            f"{name} is a placeholder or shorter than {MIN_SECRET_BYTES} bytes: "
            "set a random one (openssl rand -hex 32)"
        )


@dataclass(frozen=True)
class AuthConfig:
    """How the gateway knows who calls it (API.md, "Identity and access").
    off: customer_id is whatever the request says; jwt: a bearer JWT names
    the customer, verified with the provider's JWKS or a shared secret."""

    mode: str = "off"
    jwks_url: str = ""
    hs256_secret: str = ""
    issuer: str = ""
    audience: str = ""
    # The claim that carries the customer id.
    subject_claim: str = "sub"

    @classmethod
    def from_env(cls) -> "AuthConfig":
        return cls(
            mode=env_str("AUTH", "off").lower(),
            jwks_url=env_str("AUTH_JWKS_URL", ""),
            # Not stripped of inner spaces: compared byte for byte, as ADMIN_TOKEN.
            hs256_secret=env_str("AUTH_HS256_SECRET", ""),
            issuer=env_str("AUTH_ISSUER", ""),
            audience=env_str("AUTH_AUDIENCE", ""),
            subject_claim=env_str("AUTH_SUBJECT_CLAIM", "sub"),
        )

    @property
    def jwt(self) -> bool:
        return self.mode == "jwt"

    def validate(self) -> None:
        if self.mode not in AUTH_MODES:
            raise ConfigError(f"AUTH={self.mode!r} must be off or jwt")
        if not re.fullmatch(r"[A-Za-z0-9_.:/-]{1,64}", self.subject_claim):
            raise ConfigError(f"AUTH_SUBJECT_CLAIM={self.subject_claim!r} is not a claim name")
        if not self.jwt:
            return
        if bool(self.jwks_url) == bool(self.hs256_secret):
            raise ConfigError(
                "AUTH=jwt needs exactly one of AUTH_JWKS_URL (your identity provider's JWKS) "
                "and AUTH_HS256_SECRET (a shared secret, for local use)"
            )
        if self.hs256_secret:
            refuse_placeholder("AUTH_HS256_SECRET", self.hs256_secret)
        if self.jwks_url and urllib.parse.urlsplit(self.jwks_url).scheme not in ("https", "http"):
            raise ConfigError(f"AUTH_JWKS_URL={self.jwks_url!r} must be an https:// (or local http://) URL")


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
    # AUTH=off: the admin routes' bearer token; empty = they answer 403 to
    # everyone. Ignored with AUTH=jwt (the shop:admin scope instead).
    admin_token: str
    # How many proxy hops' X-Forwarded-For to believe.
    trusted_proxies: int
    log: LogConfig
    max_body_bytes: int = 64 * 1024
    auth: AuthConfig = field(default_factory=AuthConfig)

    @classmethod
    def from_env(cls) -> "GatewayConfig":
        config = cls(
            port=env_port("GATEWAY_PORT", DEFAULT_PORT),
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
            auth=AuthConfig.from_env(),
        )
        config.validate()
        return config

    def validate(self) -> None:
        self.auth.validate()
        if self.admin_token and not self.auth.jwt:
            refuse_placeholder("ADMIN_TOKEN", self.admin_token)
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

    def start_warnings(self) -> list[str]:
        """What the gateway warns about when it starts with these settings."""
        if not self.auth.jwt:
            return [
                "AUTH=off: customer_id is whatever the request says, and anyone may read or cancel "
                "any order; set AUTH=jwt (with AUTH_JWKS_URL or AUTH_HS256_SECRET) outside local use"
            ]
        if self.admin_token:
            return ["AUTH=jwt: ADMIN_TOKEN is ignored; admin routes take a token with the shop:admin scope"]
        return []

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
