"""`make run`: start every process of the shop on this machine and stop them
all on Ctrl-C. `make run-replicated` (--replicas 2) runs two of each on
PostgreSQL and Redis, as Kubernetes would.

Each process reads the plain names (METRICS_PORT, DATABASE_URL, PROCESSES);
this launcher maps the per-service forms (INVENTORY_METRICS_PORT,
INVENTORY_DATABASE_URL, INVENTORY_PROCESSES, ...) onto them, so one
environment configures all.
"""

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from plumbing.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS

SERVICES = ("inventory", "payment", "order")
# Replica n listens on the default port + n * REPLICA_PORT_STEP.
REPLICA_PORT_STEP = 100


@dataclass
class ProcessSpec:
    name: str  # "inventory-1"
    module: str  # "inventory_svc"
    env: dict[str, str]
    port: int
    metrics_port: int | None


def plan(environ: dict[str, str], replicas: int = 1) -> list[ProcessSpec]:
    """The processes to start and the environment of each."""
    specs = []
    addrs: dict[str, str] = {}
    for service in SERVICES:
        key = service.upper()
        port = int(environ.get(f"{key}_PORT", DEFAULT_PORTS[service]))
        metrics = int(environ.get(f"{key}_METRICS_PORT", DEFAULT_METRICS_PORTS[service]))
        ports = [port + n * REPLICA_PORT_STEP for n in range(replicas)]
        addrs[f"{key}_ADDR"] = environ.get(f"{key}_ADDR") or ",".join(f"localhost:{p}" for p in ports)
        for n, replica_port in enumerate(ports):
            env = {k: v for k, v in environ.items() if k not in ("METRICS_PORT", "DATABASE_URL", "PROCESSES")}
            env[f"{key}_PORT"] = str(replica_port)
            if environ.get(f"{key}_PROCESSES"):
                env["PROCESSES"] = environ[f"{key}_PROCESSES"]
            env["METRICS_PORT"] = str(metrics + n * REPLICA_PORT_STEP)
            if environ.get(f"{key}_DATABASE_URL"):
                env["DATABASE_URL"] = environ[f"{key}_DATABASE_URL"]
            specs.append(ProcessSpec(f"{service}-{n + 1}", f"{service}_svc", env, replica_port, metrics + n * REPLICA_PORT_STEP))
    gateway_port = int(environ.get("GATEWAY_PORT", 30080))
    for n in range(replicas):
        env = {k: v for k, v in environ.items() if k not in ("METRICS_PORT", "DATABASE_URL")}
        env.update(addrs)
        env["GATEWAY_PORT"] = str(gateway_port + n)
        specs.append(ProcessSpec(f"gateway-{n + 1}", "gateway", env, gateway_port + n, None))
    for spec in specs:
        for service in SERVICES:
            spec.env.setdefault(f"{service.upper()}_ADDR", addrs[f"{service.upper()}_ADDR"])
    return specs


def local_credentials(environ: dict[str, str]) -> list[str]:
    """What a shop on this machine needs to be usable, filled into environ,
    and the lines that tell how to use it: with AUTH=off and no ADMIN_TOKEN,
    a random admin token; with AUTH=jwt and no keys, a random
    AUTH_HS256_SECRET (`python -m gateway` alone keeps refusing both)."""
    python = os.path.relpath(sys.executable)
    if environ.get("AUTH", "off").strip().lower() != "jwt":
        if environ.get("ADMIN_TOKEN", "").strip():
            return ["admin routes take Authorization: Bearer $ADMIN_TOKEN (yours)"]
        environ["ADMIN_TOKEN"] = secrets.token_hex(32)
        return [f"admin routes take this local token: export ADMIN_TOKEN={environ['ADMIN_TOKEN']}"]
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
        "then:                curl -H \"Authorization: Bearer $TOKEN\" localhost:30080/orders",
    ]
    return lines


def start(specs: list[ProcessSpec], **popen_kwargs) -> list[tuple[ProcessSpec, subprocess.Popen]]:
    return [(s, subprocess.Popen([sys.executable, "-m", s.module], env=s.env, **popen_kwargs)) for s in specs]


def stop(procs, timeout_s: float = 20) -> None:
    """SIGTERM everything (each drains), then wait; kill what outlives it."""
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for _, proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_postgres_databases(admin_url: str, names: list[str]) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        for name in names:
            if name not in existing:
                conn.execute(f'CREATE DATABASE "{name}"')


def replicated_environ(environ: dict[str, str]) -> dict[str, str]:
    """Two replicas share state: PostgreSQL for the services, Redis for the
    gateway's rate limit. POSTGRES_URL names the server (its admin database)."""
    environ = dict(environ)
    admin_url = environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    base = admin_url.rsplit("/", 1)[0]
    create_postgres_databases(admin_url, [f"shop_{s}" for s in SERVICES])
    for service in SERVICES:
        environ.setdefault(f"{service.upper()}_DATABASE_URL", f"{base}/shop_{service}")
    environ.setdefault("RATE_LIMIT_STORAGE", "redis://127.0.0.1:6379")
    return environ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    environ = dict(os.environ)
    if args.replicas > 1:
        environ = replicated_environ(environ)
    credentials = local_credentials(environ)
    specs = plan(environ, args.replicas)
    procs = start(specs)

    print("\nshop is starting:")
    for spec in specs:
        if spec.module == "gateway":
            print(f"  {spec.name:<12} http://localhost:{spec.port}  (try: curl localhost:{spec.port}/inventory)")
        else:
            print(f"  {spec.name:<12} grpc localhost:{spec.port}  metrics http://localhost:{spec.metrics_port}/metrics")
    for line in credentials:
        print(f"  {line}")
    print("Ctrl-C stops everything.\n", flush=True)

    stopping = False

    def on_signal(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    exit_code = 0
    while not stopping:
        for spec, proc in procs:
            if proc.poll() is not None:
                print(f"{spec.name} exited with {proc.returncode}; stopping the rest", file=sys.stderr)
                exit_code, stopping = 1, True
        time.sleep(0.2)
    stop(procs)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
