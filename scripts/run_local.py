"""`make run`: start every process of the shop on this machine and stop them
all on Ctrl-C. `make run-replicated` (--replicas 2) runs two of each on
PostgreSQL and Redis, as Kubernetes would.

Each process reads the plain names (METRICS_PORT, DATABASE_URL, PROCESSES,
TLS_CERT_FILE, TLS_KEY_FILE);
this launcher maps the per-service forms (INVENTORY_METRICS_PORT,
INVENTORY_DATABASE_URL, INVENTORY_PROCESSES, GATEWAY_TLS_CERT_FILE, ...) onto
them, so one environment configures all. --tls (make run TLS=1) makes a local
CA and a certificate per process in $DATA_DIR/tls and runs with mutual TLS.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from plumbing.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS

SERVICES = ("inventory", "payment", "order")
# Each process's own certificate; TLS_CA_FILE is shared.
PER_PROCESS_TLS = ("TLS_CERT_FILE", "TLS_KEY_FILE")
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
            env.update(own_tls(environ, key))
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
        env.update(own_tls(environ, "GATEWAY"))
        env.update(addrs)
        env["GATEWAY_PORT"] = str(gateway_port + n)
        specs.append(ProcessSpec(f"gateway-{n + 1}", "gateway", env, gateway_port + n, None))
    for spec in specs:
        for service in SERVICES:
            spec.env.setdefault(f"{service.upper()}_ADDR", addrs[f"{service.upper()}_ADDR"])
    return specs


def own_tls(environ: dict[str, str], key: str) -> dict[str, str]:
    """TLS_CERT_FILE and TLS_KEY_FILE of one process, from its per-process
    forms ("" when it has none: one certificate never serves two identities)."""
    return {name: environ.get(f"{key}_{name}", "") for name in PER_PROCESS_TLS}


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
    parser.add_argument("--tls", action="store_true", help="mutual TLS between the processes, with local certificates")
    args = parser.parse_args()
    environ = dict(os.environ)
    if args.replicas > 1:
        environ = replicated_environ(environ)
    if args.tls:
        environ = tls_environ(environ)
    specs = plan(environ, args.replicas)
    procs = start(specs)

    print("\nshop is starting:")
    for spec in specs:
        if spec.module == "gateway":
            print(f"  {spec.name:<12} http://localhost:{spec.port}  (try: curl localhost:{spec.port}/inventory)")
        else:
            print(f"  {spec.name:<12} grpc localhost:{spec.port}  metrics http://localhost:{spec.metrics_port}/metrics")
    if environ.get("TLS_CA_FILE"):
        flags = f"-cacert {environ['TLS_CA_FILE']} -cert {environ.get('GATEWAY_TLS_CERT_FILE')} " + (
            f"-key {environ.get('GATEWAY_TLS_KEY_FILE')}"
        )
        print(f"  mutual TLS: grpcurl {flags} localhost:{specs[0].port} list")
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
