"""`python -m bench run` (and `make bench`): the whole shop as real
processes (launcher.stack, make run's plan on free ports), a real HTTP load
tool (hey, else wrk) driving each scenario for a fixed duration and
concurrency, and the CPU time every process spent per request.

By default nothing is pinned: the stack runs as `make run` runs it, with its
default workers, threads and processes. Prints JSON lines on stdout: one
describing the run, one per scenario (each figure the median of --runs
runs), a summary of CPU per request, and with --compare the summary of
../shared/baseline/compare.sh (the seed REST chain side by side).
Progress goes to stderr. The stack is stopped whatever happens (Ctrl-C,
SIGTERM, an error).
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from bench.loadtools import LoadTool, find_load_tool
from bench.runner import PIN_CHOICES, PIN_HELP, Bench, pinned_cpus, say
from bench.scenarios import SCENARIOS, scenario_keys, stack_environ, summarise, summary_line
from launcher import databases
from launcher.plan import SERVICES, tls_environ
from launcher.stack import ROOT, Stack, plan_stack

# The seed REST chain, measured side by side by --compare (when the shared folder is there).
BASELINE_COMPARE = os.path.join(os.path.dirname(ROOT), "shared", "baseline", "compare.sh")


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _rounds_and_seconds(text: str) -> tuple[int, int]:
    try:
        parts = tuple(int(part) for part in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError("takes ROUNDS,SECONDS, e.g. 3,15")
    return parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=at_least_one, default=10, help="seconds per run (default 10)")
    parser.add_argument("--concurrency", type=at_least_one, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--runs", type=at_least_one, default=3, help="runs per scenario; figures are medians (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load per scenario first")
    parser.add_argument("--postgres", action="store_true", help="the services on PostgreSQL (POSTGRES_URL)")
    parser.add_argument("--tls", action="store_true", help="mutual TLS between the processes (as make run TLS=1)")
    parser.add_argument(
        "--scenarios",
        type=scenario_keys,
        default=list(SCENARIOS),
        help="comma-separated, from: " + ", ".join(SCENARIOS),
    )
    parser.add_argument("--tool", choices=("auto", "hey", "wrk"), default="auto", help="load tool (default: hey, else wrk)")
    parser.add_argument("--pin", choices=PIN_CHOICES, default="none", help=PIN_HELP)
    parser.add_argument(
        "--auth",
        choices=("off", "jwt"),
        default="off",
        help="the gateway's AUTH (default off, as make run); jwt: every request carries a customer's HS256 "
        "token, so the figures include its verification (compare a read scenario both ways)",
    )
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of every process (default INFO, as deployed)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs and data directory")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy every process during each scenario's first run; collapsed stacks (flamegraph input) in DIR",
    )
    parser.add_argument(
        "--compare",
        metavar="ROUNDS,SECONDS",
        type=_rounds_and_seconds,
        help="afterwards, run ../shared/baseline/compare.sh ROUNDS SECONDS (the seed REST chain side by side, "
        "make run defaults) and print its summary; e.g. 3,15",
    )


def find_py_spy() -> str:
    """py-spy beside this Python (the venv), else on PATH; never installed here."""
    found = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if not found:
        raise SystemExit("bench: --profile needs py-spy: .venv/bin/pip install py-spy (requirements-dev.txt has it)")
    return found


def run_compare(rounds: int, duration_s: int) -> dict | None:
    """../shared/baseline/compare.sh ROUNDS DURATION: the shop (as make run
    starts it) against the seed REST chain, alternated; its summary line."""
    if not os.path.exists(BASELINE_COMPARE):
        say(f"--compare: no {BASELINE_COMPARE}; skipped")
        return None
    say(f"side by side with the seed chain: {BASELINE_COMPARE} {rounds} {duration_s}")
    out = subprocess.run(
        ["bash", BASELINE_COMPARE, str(rounds), str(duration_s)], cwd=ROOT, capture_output=True, text=True
    )
    for line in out.stdout.splitlines():
        if line.startswith("{") and '"summary": true' in line:
            return {"compare": json.loads(line)}
        if line.startswith("compare:"):
            say(line)
    say(f"compare.sh gave no summary (exit {out.returncode}): {out.stderr[-500:]}")
    return None


def _git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return "unknown"


def _on_sigterm(_signum, _frame):
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    # Ctrl-C and SIGTERM both stop the stack (also when started in the
    # background, where a shell leaves SIGINT ignored).
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    scenarios = [SCENARIOS[key] for key in args.scenarios]
    py_spy = find_py_spy() if args.profile else None
    needs_http = any(s.target != "grpc" for s in scenarios)
    tool = find_load_tool(args.tool) if needs_http else LoadTool("grpc_load", "bench/grpc_load.py", "")
    say(f"load tool: {tool.name} {tool.version} ({tool.path}); gRPC scenario: bench/grpc_load.py (grpc.aio)")

    service_cpus, loadgen_cpus = pinned_cpus(args.pin)

    workdir = tempfile.mkdtemp(prefix="shop-bench-")
    failed = True
    stack = None
    bench = None
    with contextlib.ExitStack() as cleanup:
        try:
            environ = stack_environ(os.path.join(workdir, "data"), args.log_level, args.auth)
            if args.postgres:
                admin_url = os.environ.get("POSTGRES_URL", databases.DEFAULT_ADMIN_URL)
                environ.update(cleanup.enter_context(databases.fresh_databases(admin_url, "shop_bench", SERVICES)))
            if args.tls:
                environ = tls_environ(environ)
            specs = plan_stack(1, environ)
            for spec in specs:
                spec.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            # The services inherit this affinity; the load tool gets its own CPU.
            os.sched_setaffinity(0, service_cpus)
            stack = Stack(specs, log_dir=workdir)
            say(f"starting the stack (logs in {workdir})")
            stack.start()
            if loadgen_cpus:
                os.sched_setaffinity(0, loadgen_cpus)
            bench = Bench(
                tool, stack, workdir, args.concurrency, loadgen_cpus, args.auth, py_spy=py_spy, profile_dir=args.profile
            )
            bench.prepare()
            gateway_env = next(s.env for s in specs if s.module == "gateway")
            print(
                json.dumps(
                    {
                        "bench": {
                            "commit": _git_commit(),
                            "database": "postgresql" if args.postgres else "sqlite",
                            "tls": args.tls,
                            "load_tool": f"{tool.name} {tool.version}",
                            "duration_s": args.duration,
                            "concurrency": args.concurrency,
                            "runs": args.runs,
                            "services_cpus": ",".join(map(str, sorted(service_cpus))),
                            "loadgen_cpus": ",".join(map(str, sorted(loadgen_cpus))) if loadgen_cpus else "any",
                            "gateway_workers": gateway_env.get("GATEWAY_WORKERS", "default"),
                            "gateway_threads": gateway_env.get("GATEWAY_THREADS", "default"),
                            "log_level": args.log_level.upper(),
                            "auth": args.auth,
                            # Anything else busy on the machine skews every figure: look here first.
                            "loadavg_at_start": round(os.getloadavg()[0], 2),
                        }
                    }
                ),
                flush=True,
            )
            if args.warmup:
                for scenario in scenarios:
                    say(f"warm-up: {scenario.name}")
                    bench.run_once(scenario, args.warmup)
            # Runs interleave the scenarios, so a drift of the machine hits all alike.
            runs: dict[str, list[dict]] = {s.key: [] for s in scenarios}
            for number in range(1, args.runs + 1):
                for scenario in scenarios:
                    result = bench.run_once(scenario, args.duration, profile=bool(args.profile) and number == 1)
                    say(f"run {number}/{args.runs} {scenario.name}: {result['rps']:.1f} req/s")
                    runs[scenario.key].append(result)
            lines = {}
            for scenario in scenarios:
                lines[scenario.key] = summarise(scenario, runs[scenario.key])
                print(json.dumps(lines[scenario.key]), flush=True)
            print(json.dumps(summary_line(lines)), flush=True)
            failed = False
        except KeyboardInterrupt:
            say("interrupted: stopping the stack")
        finally:
            if bench is not None:
                bench.stop_load()
            if stack is not None:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                stack.stop()
                signal.signal(signal.SIGINT, signal.default_int_handler)
            if failed or args.keep_logs:
                say(f"logs and data kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    if not failed and args.compare:
        compared = run_compare(*args.compare)
        if compared is not None:
            print(json.dumps(compared), flush=True)
    return 1 if failed else 0
