"""Configuration from the environment, read in one place, with local defaults.

A process reads the plain names (METRICS_PORT, DATABASE_URL); `make run`, which
starts several processes from one environment, maps the per-service forms
(INVENTORY_DATABASE_URL, ...) onto them.
"""

import functools
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from plumbing.targets import bare_host, list_host, port_number, resolve_target

DEFAULT_PORTS = {"inventory": 50051, "payment": 50052, "order": 50053}
DEFAULT_METRICS_PORTS = {"inventory": 9101, "payment": 9102, "order": 9103}
# Processes per service (PROCESSES): what measured fastest here (docs/performance.md).
DEFAULT_PROCESSES = 1
# Server threads (GRPC_WORKERS): with group commit, more threads queue more
# writes behind one COMMIT, and 16 led 4 on orders (docs/performance.md).
DEFAULT_GRPC_WORKERS = 16
# The largest a number of seconds or hours may be: past it grpc's
# millisecond options and the timers overflow (MAX_CONNECTION_AGE_S=3e6 did).
MAX_FLOAT_SETTING = 1_000_000


class ConfigError(ValueError):
    """A setting that cannot be used; the process says why and exits."""


def exits_on_config_error(says: str):
    """For a process's main(): a bad setting ends it with one clear line on
    stderr, `<says>: <why>`, and exit status 2, not a traceback."""

    def decorate(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except ConfigError as error:
                print(f"{says}: {error}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None

        return run

    return decorate


def env_str(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """A setting from `environ` (default: this process's environment), stripped."""
    value = (os.environ if environ is None else environ).get(name, "").strip()
    return value or default


def env_int(name: str, default: int, minimum: int = 0) -> int:
    return _env_number(name, default, minimum, int, "an integer")


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    """A finite number from `minimum` to MAX_FLOAT_SETTING: never nan or inf."""
    return _env_number(name, default, minimum, float, "a number", maximum=MAX_FLOAT_SETTING)


def env_port(name: str, default: int, any_free: bool = False, environ: Mapping[str, str] | None = None) -> int:
    """A port, 1-65535; with `any_free`, 0 too (the system picks one, which
    the process logs: what tests use to run a service on a free port)."""
    raw = env_str(name, str(default), environ)
    try:
        return port_number(raw, any_free)
    except ValueError as error:
        raise ConfigError(f"{name}={raw!r} {error}") from None


def _env_number(name: str, default, minimum, parse, kind: str, maximum=None):
    raw = env_str(name, str(default))
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {kind}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number")
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} must be at most {maximum}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = env_str(name, "1" if default else "0").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be 1 or 0")


def env_host(name: str, default: str) -> str:
    """A host to bind, as a bare name or address (an IPv6 one without brackets)."""
    return bare_host(env_str(name, default))


@dataclass(frozen=True)
class LogConfig:
    level: str
    format: str

    @classmethod
    def from_env(cls) -> "LogConfig":
        fmt = env_str("LOG_FORMAT", "json").lower()
        if fmt not in ("json", "text"):
            raise ConfigError(f"LOG_FORMAT={fmt!r} must be json or text")
        level = env_str("LOG_LEVEL", "INFO").upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ConfigError(f"LOG_LEVEL={level!r} must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return cls(level=level, format=fmt)


TLS_FILES = ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS between the processes (TLS_CERT_FILE, TLS_KEY_FILE,
    TLS_CA_FILE): the files' contents, read once at start (rotating them is
    a restart), and the process's own name from its certificate's
    spiffe://shop/<name> URI SAN."""

    certificate: bytes
    private_key: bytes
    ca_certificates: bytes
    identity: str

    @classmethod
    def from_env(cls, identity: str) -> "TlsConfig | None":
        """None with none of the three set (plaintext, the default); the
        certificate must name `identity`, the process reading it."""
        paths = {name: env_str(name, "") for name in TLS_FILES}
        if not any(paths.values()):
            return None
        missing = [name for name, path in paths.items() if not path]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} unset: TLS needs {', '.join(TLS_FILES)} together")
        return cls.load(*paths.values(), identity=identity)

    @classmethod
    def load(cls, cert_file: str, key_file: str, ca_file: str, identity: str | None = None) -> "TlsConfig":
        from plumbing.tls import certificate_identity

        contents = []
        for name, path in zip(TLS_FILES, (cert_file, key_file, ca_file), strict=True):
            try:
                with open(path, "rb") as file:
                    contents.append(file.read())
            except OSError as error:
                raise ConfigError(f"{name}={path!r} cannot be read: {error.strerror}") from None
        named = certificate_identity(*contents)
        if identity is not None and named != identity:
            raise ConfigError(f"TLS_CERT_FILE={cert_file!r} is the certificate of {named!r}, not of {identity!r}")
        return cls(*contents, identity=named)


@dataclass(frozen=True)
class ServerConfig:
    """What every gRPC service process needs."""

    name: str
    port: int
    metrics_port: int
    database_url: str
    workers: int
    max_concurrent_rpcs: int
    # SIGTERM: health turns NOT_SERVING, we wait drain_delay_s so load
    # balancers notice, then give in-flight calls shutdown_grace_s to finish.
    drain_delay_s: float
    shutdown_grace_s: float
    max_connection_age_s: float
    # Processes serving the one port (SO_REUSEPORT); 1 = this process alone.
    processes: int
    log: LogConfig
    # Interfaces the gRPC and metrics servers listen on (default: all).
    bind_host: str = "::"
    metrics_bind_host: str = "0.0.0.0"
    # Plaintext grpc.health.v1 alone, for kubelet's probes (which speak no
    # TLS); None: not served.
    health_port: int | None = None
    reflection: bool = True
    tls: TlsConfig | None = None

    @classmethod
    def from_env(cls, name: str) -> "ServerConfig":
        workers = env_int("GRPC_WORKERS", DEFAULT_GRPC_WORKERS, minimum=1)
        return cls(
            name=name,
            port=env_port(f"{name.upper()}_PORT", DEFAULT_PORTS[name], any_free=True),
            metrics_port=env_port("METRICS_PORT", DEFAULT_METRICS_PORTS[name], any_free=True),
            database_url=env_database_url(name),
            workers=workers,
            max_concurrent_rpcs=env_int("GRPC_MAX_CONCURRENT_RPCS", workers * 4, minimum=1),
            drain_delay_s=env_float("DRAIN_DELAY_S", 0.0),
            shutdown_grace_s=env_float("SHUTDOWN_GRACE_S", 10.0),
            max_connection_age_s=env_float("MAX_CONNECTION_AGE_S", 30.0, minimum=1.0),
            processes=env_int("PROCESSES", DEFAULT_PROCESSES, minimum=1),
            log=LogConfig.from_env(),
            bind_host=env_host("GRPC_BIND_HOST", "::"),
            metrics_bind_host=env_host("METRICS_BIND_HOST", "0.0.0.0"),
            health_port=env_port("HEALTH_PORT", 0, any_free=True) if env_str("HEALTH_PORT", "") else None,
            reflection=env_bool("GRPC_REFLECTION", True),
            tls=TlsConfig.from_env(name),
        )


def env_database_url(name: str) -> str:
    """DATABASE_URL, or SQLite in DATA_DIR, checked (plumbing/database_url.py)
    and its SQLite folder made: a URL that cannot be used refuses the start,
    naming the setting that made it and never quoting a password."""
    # Here, not at the top: the gateway reads this module and opens no database.
    from plumbing.database_url import usable_url

    data_dir = env_str("DATA_DIR", "data")
    given = env_str("DATABASE_URL", "")
    url = given or f"sqlite:///{data_dir}/{name}.db"
    try:
        usable_url(url)
    except ValueError as error:
        raise ConfigError(f"DATABASE_URL: {error}" if given else f"DATA_DIR={data_dir!r}: {error}") from None
    return url


@dataclass(frozen=True)
class UpstreamConfig:
    """Where a client finds the services it calls, and how long it waits."""

    inventory_addr: str
    payment_addr: str
    order_addr: str
    # The deadline given to a call when the caller itself has none.
    timeout_s: float
    # The client certificate this process presents (None: plaintext).
    tls: TlsConfig | None = None

    @classmethod
    def from_env(
        cls, timeout_env: str = "UPSTREAM_TIMEOUT_S", default_timeout_s: float = 10.0, identity: str = "gateway"
    ):
        tls = TlsConfig.from_env(identity)
        return cls(
            inventory_addr=env_target("INVENTORY_ADDR", f"localhost:{DEFAULT_PORTS['inventory']}", tls),
            payment_addr=env_target("PAYMENT_ADDR", f"localhost:{DEFAULT_PORTS['payment']}", tls),
            order_addr=env_target("ORDER_ADDR", f"localhost:{DEFAULT_PORTS['order']}", tls),
            timeout_s=env_float(timeout_env, default_timeout_s, minimum=0.001),
            tls=tls,
        )


def env_target(name: str, default: str, tls: TlsConfig | None) -> str:
    """An address to call (plumbing/targets.py), checked at start: a
    comma-separated list must resolve, in one address family (and name one
    host, with TLS), or the process refuses to start rather than fail calls."""
    address = env_str(name, default)
    try:
        resolve_target(address)
        if tls is not None:
            list_host(address)
    except ValueError as error:
        raise ConfigError(f"{name}={address!r}: {error}") from None
    return address


@dataclass(frozen=True)
class OrderConfig:
    """What the order service needs beyond ServerConfig: its upstreams, how
    long it waits for them, and how it recovers orders left PENDING."""

    inventory_addr: str
    payment_addr: str
    # The deadline of a call to inventory or payment when the incoming call
    # has none; with one, each call gets at most its remaining time.
    downstream_timeout_s: float = 5.0
    # How often the recovery loop looks for orders left PENDING.
    recovery_interval_s: float = 5.0
    # An order untouched this long, with no live lease, is recovered: by
    # default the longest a call upstream may take.
    recovery_after_s: float = 5.0
    # The client certificate the order service presents (None: plaintext).
    tls: TlsConfig | None = None
    # Idempotency keys are kept this long (the contract: at least 24 h),
    # then forgotten in the background, this often; the orders stay.
    idempotency_key_ttl_h: float = 24.0
    key_purge_interval_s: float = 600.0

    @classmethod
    def from_env(cls) -> "OrderConfig":
        upstream = UpstreamConfig.from_env("DOWNSTREAM_TIMEOUT_S", 5.0, identity="order")
        return cls(
            inventory_addr=upstream.inventory_addr,
            payment_addr=upstream.payment_addr,
            tls=upstream.tls,
            downstream_timeout_s=upstream.timeout_s,
            recovery_interval_s=env_float("RECOVERY_INTERVAL_S", 5.0, minimum=0.01),
            recovery_after_s=env_float("RECOVERY_AFTER_S", upstream.timeout_s),
            idempotency_key_ttl_h=env_float("IDEMPOTENCY_KEY_TTL_H", 24.0, minimum=24.0),
        )
