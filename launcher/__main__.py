"""`make run`: start every process of the shop on this machine and
supervise them as Kubernetes would (launcher/supervisor.py). `make
run-replicated` (--replicas 2) runs two of each on PostgreSQL and Redis;
--tls (make run TLS=1) makes a local CA and a certificate per process in
$DATA_DIR/tls and runs with mutual TLS. Ctrl-C or SIGTERM to make run
stops everything gracefully and restarts nothing.
"""

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

from launcher.plan import ProcessSpec, local_environ, plan, replicated_environ, tls_environ
from launcher.probes import ports_in_use, shop_ready
from launcher.supervisor import POLL_S, PROBE_EVERY_S, FirstStartFailed, Supervisor
from plumbing.config import exits_on_config_error
from plumbing.server import stop_on_signals

# Said once if the shop is up but /ready still answers 503 after this long.
NOT_READY_HINT_AFTER_S = 20.0


def run(specs: list[ProcessSpec], credentials: Sequence[str] = (), out=sys.stdout, logs=sys.stderr) -> int:
    """Supervise `specs` until SIGINT or SIGTERM; the exit status of make run."""
    supervisor = Supervisor(specs, out=out, logs=logs)
    say = supervisor.say
    taken = ports_in_use(specs)
    if taken:
        say(
            "cannot start, these ports are in use:\n"
            + "".join(f"    {port}\n" for port in taken)
            + "Another shop may be running (a second `make run`?): stop it, or set the settings named to free ports."
        )
        return 1

    stop_on_signals(supervisor.stopping)
    supervisor.start()
    gateway = next(s for s in specs if s.module == "gateway")
    say("starting " + ", ".join(f"{name} (pid {pid})" for name, pid in supervisor.pids().items()))
    for spec in specs:
        if spec.module == "gateway":
            say(f"  {spec.name:<11} http://localhost:{spec.port}")
        else:
            say(f"  {spec.name:<11} grpc localhost:{spec.port}, metrics http://localhost:{spec.metrics_port}/metrics")
    for line in credentials:
        say(line)
    if gateway.tls:
        files = " ".join(f"{flag} {gateway.env[name]}" for flag, name in (
            ("-cacert", "TLS_CA_FILE"), ("-cert", "TLS_CERT_FILE"), ("-key", "TLS_KEY_FILE")))
        say(f"mutual TLS between the processes; .venv/bin/grpcurl {files} localhost:{specs[0].port} list")
    say("Ctrl-C stops everything.")

    exit_code = 0
    ready = hinted = False
    all_up_at = next_ready_check = None
    try:
        while not supervisor.stopping.is_set():
            supervisor.watch_once()
            now = time.monotonic()
            if not ready and supervisor.all_answered() and now >= (next_ready_check or now):
                all_up_at = all_up_at or now
                next_ready_check = now + PROBE_EVERY_S
                if shop_ready(gateway.port):
                    ready = True
                    say(f"shop is ready at http://localhost:{gateway.port}; try: curl localhost:{gateway.port}/inventory")
                elif not hinted and now - all_up_at > NOT_READY_HINT_AFTER_S:
                    hinted = True
                    say(f"every process is up, but not every backend is SERVING yet: curl localhost:{gateway.port}/ready")
            supervisor.stopping.wait(POLL_S)
    except FirstStartFailed as failure:
        say(f"{failure}\nstopping the rest.")
        exit_code = 1
    signal.signal(signal.SIGINT, lambda *_: None)  # a second Ctrl-C does not cut the drain short
    say("stopping every process.")
    supervisor.stop()
    say("stopped.")
    return exit_code


@exits_on_config_error("make run: refusing to start")
def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launcher", description="make run: every process of the shop on this machine, supervised."
    )
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument(
        "--reset-databases",
        action="store_true",
        help="with --replicas: drop the shop_* PostgreSQL databases and start on empty ones",
    )
    parser.add_argument("--tls", action="store_true", help="mutual TLS between the processes, with local certificates")
    args = parser.parse_args()
    environ, credentials = local_environ(dict(os.environ), terminal=sys.stderr.isatty())
    if args.tls:
        environ = tls_environ(environ)
    if args.replicas > 1:
        environ = replicated_environ(environ, reset=args.reset_databases)
    elif args.reset_databases:
        parser.error("--reset-databases is for --replicas (make run-replicated); make run's SQLite lives in DATA_DIR")
    return run(plan(environ, args.replicas), credentials)


if __name__ == "__main__":
    sys.exit(main())
