"""Which processes make run starts, and the environment of each.

Each process reads the plain names (METRICS_PORT, HEALTH_PORT, DATABASE_URL,
PROCESSES, TLS_CERT_FILE, TLS_KEY_FILE); the plan maps the per-service forms
(INVENTORY_METRICS_PORT, INVENTORY_HEALTH_PORT, INVENTORY_DATABASE_URL,
INVENTORY_PROCESSES, GATEWAY_TLS_CERT_FILE, ...) onto them, so one environment
configures all.
"""

import os
import secrets
import sys
from dataclasses import dataclass

import psycopg

from gateway.upstreams import SERVICES as BACKENDS
from launcher import databases
from plumbing.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ConfigError, TlsConfig, env_port, env_str
from plumbing.targets import MAX_PORT, bare_host, join_host_port

SERVICES = ("inventory", "payment", "order")
# Each process's own certificate; TLS_CA_FILE is shared.
PER_PROCESS_TLS = ("TLS_CERT_FILE", "TLS_KEY_FILE")
# Each service process's module, and the health name of its readiness.
SERVICE_NAMES = {f"{name}_svc": service.full_name for name, service in BACKENDS.items()}
# Replica n listens on the default port + n * REPLICA_PORT_STEP.
REPLICA_PORT_STEP = 100
# Settings of one process each, never handed on as they are: make run takes
# their per-service forms.
PER_SERVICE = ("METRICS_PORT", "HEALTH_PORT", "DATABASE_URL", "PROCESSES")


@dataclass
class ProcessSpec:
    name: str  # "inventory-1"
    module: str  # "inventory_svc"
    env: dict[str, str]
    port: int
    metrics_port: int | None

    def listens_on(self) -> list[tuple[int, str, str]]:
        """(port, the setting that chose it, what it serves) for each port it binds."""
        if self.module == "gateway":
            return [(self.port, "GATEWAY_PORT", "HTTP")]
        key = self.module.removesuffix("_svc").upper()
        ports = [(self.port, f"{key}_PORT", "gRPC")]
        if self.metrics_port:
            ports.append((self.metrics_port, f"{key}_METRICS_PORT", "metrics"))
        if self.env.get("HEALTH_PORT"):
            ports.append((int(self.env["HEALTH_PORT"]), f"{key}_HEALTH_PORT", "plaintext health"))
        return ports

    @property
    def grpc_address(self) -> str:
        """Where this machine reaches its gRPC port: the address GRPC_BIND_HOST
        names, or loopback when it binds every interface."""
        host = bare_host(self.env.get("GRPC_BIND_HOST", ""))
        return join_host_port("127.0.0.1" if host in ("", "0.0.0.0", "::") else host, self.port)

    @property
    def tls(self) -> TlsConfig | None:
        """The certificate it serves with, to call it as itself (None: plaintext)."""
        files = [self.env.get(name, "") for name in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")]
        return TlsConfig.load(*files) if all(files) else None


def plan(environ: dict[str, str], replicas: int = 1) -> list[ProcessSpec]:
    """The processes to start and the environment of each."""
    if environ.get("HEALTH_PORT", "").strip():
        raise ConfigError(
            "HEALTH_PORT is one process's port, and make run starts three services: "
            "set INVENTORY_HEALTH_PORT, PAYMENT_HEALTH_PORT or ORDER_HEALTH_PORT instead"
        )
    specs = []
    addrs: dict[str, str] = {}
    for service in SERVICES:
        key = service.upper()
        ports = replica_ports(environ, f"{key}_PORT", DEFAULT_PORTS[service], replicas)
        metrics_ports = replica_ports(environ, f"{key}_METRICS_PORT", DEFAULT_METRICS_PORTS[service], replicas)
        health_ports = None
        if env_str(f"{key}_HEALTH_PORT", "", environ):
            health_ports = replica_ports(environ, f"{key}_HEALTH_PORT", 0, replicas)
        addrs[f"{key}_ADDR"] = environ.get(f"{key}_ADDR") or ",".join(f"localhost:{p}" for p in ports)
        for n, replica_port in enumerate(ports):
            env = {k: v for k, v in environ.items() if k not in PER_SERVICE}
            env.update(own_tls(environ, key))
            env[f"{key}_PORT"] = str(replica_port)
            env["OTEL_SERVICE_NAME"] = service
            if environ.get(f"{key}_PROCESSES"):
                env["PROCESSES"] = environ[f"{key}_PROCESSES"]
            env["METRICS_PORT"] = str(metrics_ports[n])
            if health_ports:
                env["HEALTH_PORT"] = str(health_ports[n])
            if environ.get(f"{key}_DATABASE_URL"):
                env["DATABASE_URL"] = environ[f"{key}_DATABASE_URL"]
            specs.append(ProcessSpec(f"{service}-{n + 1}", f"{service}_svc", env, replica_port, metrics_ports[n]))
    for n, gateway_port in enumerate(replica_ports(environ, "GATEWAY_PORT", 30080, replicas, step=1)):
        env = {k: v for k, v in environ.items() if k not in ("METRICS_PORT", "DATABASE_URL")}
        env.update(own_tls(environ, "GATEWAY"))
        env.update(addrs)
        env["GATEWAY_PORT"] = str(gateway_port)
        env["OTEL_SERVICE_NAME"] = "gateway"
        specs.append(ProcessSpec(f"gateway-{n + 1}", "gateway", env, gateway_port, None))
    for spec in specs:
        for service in SERVICES:
            spec.env.setdefault(f"{service.upper()}_ADDR", addrs[f"{service.upper()}_ADDR"])
    return specs


def replica_ports(
    environ: dict[str, str], name: str, default: int, replicas: int, step: int = REPLICA_PORT_STEP
) -> list[int]:
    """The port setting `name` gives each replica: its own (1-65535, as a
    process reads it; never 0, which make run could not probe), then `step`
    higher for each next one, every one of them a port."""
    first = env_port(name, default, environ=environ)
    ports = [first + n * step for n in range(replicas)]
    if ports and ports[-1] > MAX_PORT:
        raise ConfigError(f"{name}={first}: {replicas} replicas need ports up to {ports[-1]}, past {MAX_PORT}")
    return ports


def own_tls(environ: dict[str, str], key: str) -> dict[str, str]:
    """TLS_CERT_FILE and TLS_KEY_FILE of one process, from its per-process
    forms ("" when it has none: one certificate never serves two identities)."""
    return {name: environ.get(f"{key}_{name}", "") for name in PER_PROCESS_TLS}


def local_credentials(environ: dict[str, str]) -> list[str]:
    """What a shop on this machine needs to be usable, filled into environ,
    and the lines that tell how to use it: with AUTH=off and no ADMIN_TOKEN,
    a random admin token; with AUTH=jwt and no keys, a random
    AUTH_HS256_SECRET (`python -m gateway` alone keeps refusing both)."""
    python = os.path.relpath(sys.executable)
    if environ.get("AUTH", "off").strip().lower() != "jwt":
        if environ.get("ADMIN_TOKEN", "").strip():
            return ["admin routes take Authorization: Bearer $ADMIN_TOKEN (yours)"]
        # 64 hex digits: 32 random bytes, and never the "change-me" of a placeholder.
        token = environ["ADMIN_TOKEN"] = secrets.token_hex(32)
        return [f"admin token for this run (ADMIN_TOKEN was unset): {token}  (export ADMIN_TOKEN={token})"]
    if environ.get("AUTH_JWKS_URL", "").strip():
        return ["AUTH=jwt: tokens come from your identity provider (AUTH_JWKS_URL)"]
    if environ.get("AUTH_HS256_SECRET", "").strip():
        lines = ["AUTH=jwt: tokens are signed with your AUTH_HS256_SECRET (export it where you mint them)"]
    else:
        environ["AUTH_HS256_SECRET"] = secrets.token_hex(32)
        lines = [f"AUTH=jwt with a local secret: export AUTH_HS256_SECRET={environ['AUTH_HS256_SECRET']}"]
    lines += [
        "a customer's token:  TOKEN=$(" + python + " -m gateway.token --sub C123)",
        "an admin's token:    TOKEN=$(" + python + " -m gateway.token --sub ops --scope shop:admin)",
        f"then:                curl -H \"Authorization: Bearer $TOKEN\" localhost:{environ.get('GATEWAY_PORT', 30080)}/orders",
    ]
    return lines


def local_environ(environ: dict[str, str], terminal: bool) -> tuple[dict[str, str], list[str]]:
    """make run's own defaults on top of `environ`: text logs for a terminal,
    and the credentials of local_credentials (with the lines to print)."""
    environ = dict(environ)
    if terminal and not environ.get("LOG_FORMAT", "").strip():
        environ["LOG_FORMAT"] = "text"
    return environ, local_credentials(environ)


def tls_environ(environ: dict[str, str]) -> dict[str, str]:
    """make run TLS=1: a local CA and a certificate per process in
    $DATA_DIR/tls (the CA kept across runs, the certificates fresh), and the
    settings that hand each process its own."""
    from scripts.certs import make_certificates

    directory = make_certificates(os.path.join(environ.get("DATA_DIR", "data"), "tls")).resolve()
    environ = dict(environ)
    environ.setdefault("TLS_CA_FILE", str(directory / "ca.crt"))
    for name in ("gateway", *SERVICES):
        environ.setdefault(f"{name.upper()}_TLS_CERT_FILE", str(directory / f"{name}.crt"))
        environ.setdefault(f"{name.upper()}_TLS_KEY_FILE", str(directory / f"{name}.key"))
    return environ


def replicated_environ(environ: dict[str, str], reset: bool = False) -> dict[str, str]:
    """Two replicas share state: PostgreSQL for the services, Redis for the
    gateway's rate limit. POSTGRES_URL names the server (its admin database)."""
    environ = dict(environ)
    admin_url = environ.get("POSTGRES_URL", databases.DEFAULT_ADMIN_URL)
    # Only the databases no *_DATABASE_URL names already: those are the user's.
    ours = [s for s in SERVICES if not environ.get(f"{s.upper()}_DATABASE_URL", "").strip()]
    if ours:
        try:
            databases.create_databases(admin_url, [f"shop_{s}" for s in ours], reset)
        except psycopg.OperationalError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"POSTGRES_URL: cannot create the shop_* databases there: {first_line}"
            ) from None
    for service in ours:
        environ[f"{service.upper()}_DATABASE_URL"] = databases.database_url(admin_url, f"shop_{service}")
    environ.setdefault("RATE_LIMIT_STORAGE", "redis://127.0.0.1:6379")
    return environ
