"""`make run`: start every process of the shop on this machine, on the
embedded defaults, and stop them all on Ctrl-C.

Each process reads the plain names (METRICS_PORT, DATABASE_URL); this
launcher maps the per-service forms (INVENTORY_METRICS_PORT,
INVENTORY_DATABASE_URL, ...) onto them, so one environment configures all.
"""

import os
import signal
import subprocess
import sys
import time

from plumbing.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS

SERVICES = ("inventory", "payment", "order")


def process_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    for plain in ("METRICS_PORT", "DATABASE_URL"):
        env.pop(plain, None)
        value = os.environ.get(f"{name.upper()}_{plain}")
        if value:
            env[plain] = value
    if name in DEFAULT_METRICS_PORTS:
        env.setdefault("METRICS_PORT", str(DEFAULT_METRICS_PORTS[name]))
    return env


def main() -> int:
    procs: list[tuple[str, subprocess.Popen]] = []
    for name in SERVICES:
        procs.append((name, subprocess.Popen([sys.executable, "-m", f"{name}_svc"], env=process_env(name))))
    procs.append(("gateway", subprocess.Popen([sys.executable, "-m", "gateway"], env=process_env("gateway"))))

    gateway_port = os.environ.get("GATEWAY_PORT", "30080")
    print("\nshop is starting:")
    print(f"  gateway    http://localhost:{gateway_port}  (try: curl localhost:{gateway_port}/inventory)")
    for name in SERVICES:
        port = os.environ.get(f"{name.upper()}_PORT", DEFAULT_PORTS[name])
        metrics = process_env(name)["METRICS_PORT"]
        print(f"  {name:<10} grpc localhost:{port}  metrics http://localhost:{metrics}/metrics")
    print("Ctrl-C stops everything.\n", flush=True)

    stopping = False

    def stop(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, proc in procs:
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping the rest", file=sys.stderr)
                exit_code, stopping = 1, True
        time.sleep(0.2)
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for _, proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
