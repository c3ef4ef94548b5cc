"""The benchmark behind `scripts/bench` and `make bench`: the whole shop as
real processes (scripts/stack.py), a real HTTP load tool (hey, else wrk)
driving each scenario for a fixed duration and concurrency, and the CPU time
every process spent per request, read from /proc.

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
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field

from scripts import run_local
from scripts.stack import Stack, http, plan_stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_TOKEN = "bench-" + uuid.uuid4().hex
# --auth jwt: the gateway's HS256 secret, and the customer every scenario acts as.
JWT_SECRET = uuid.uuid4().hex + uuid.uuid4().hex
BENCH_CUSTOMER = "C-bench"
# Lifted: the limiter still runs on every request, as in production, but
# never refuses one.
LIFTED_RATE_LIMIT = "1000000000/minute"
# Added to each product an order scenario buys before each of its runs.
STOCK_TOP_UP = 10_000_000
FIVE_PRODUCTS = ("P001", "P002", "P003", "P004", "P005")

# The seed REST chain, measured side by side by --compare (when the shared folder is there).
BASELINE_COMPARE = os.path.join(os.path.dirname(ROOT), "shared", "baseline", "compare.sh")


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    # "gateway" (HTTP) or "grpc" (GetProduct on inventory, no gateway)
    target: str
    method: str = "GET"
    path: str = ""
    body: dict | None = None
    expected: str = "200"
    # Products whose stock is topped up before each run.
    buys: tuple[str, ...] = ()


SCENARIOS = {
    s.key: s
    for s in (
        Scenario(
            "post-order",
            "POST /orders (1 item)",
            "gateway",
            "POST",
            "/orders",
            {"customer_id": "C-bench", "items": [{"product_id": "P001", "quantity": 1}], "payment_method": "tok_visa"},
            "201",
            ("P001",),
        ),
        Scenario(
            "post-order-5",
            "POST /orders (5 items)",
            "gateway",
            "POST",
            "/orders",
            {
                "customer_id": "C-bench",
                "items": [{"product_id": p, "quantity": 1} for p in FIVE_PRODUCTS],
                "payment_method": "tok_visa",
            },
            "201",
            FIVE_PRODUCTS,
        ),
        Scenario("get-inventory", "GET /inventory/{id}", "gateway", path="/inventory/P001"),
        Scenario("get-order", "GET /orders/{id}", "gateway", path="/orders/{order_id}"),
        Scenario("grpc-get-product", "gRPC GetProduct (direct, no gateway)", "grpc", expected="OK"),
    )
}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the load tool -----------------------------------------------------------


@dataclass(frozen=True)
class LoadTool:
    name: str  # "hey" or "wrk"
    path: str
    version: str


def find_load_tool(preferred: str) -> LoadTool:
    """hey or wrk from PATH."""
    order = [preferred] if preferred != "auto" else ["hey", "wrk"]
    for name in order:
        path = shutil.which(name)
        if path:
            return LoadTool(name, path, _package_version(name))
    raise SystemExit(
        f"bench: no {' or '.join(order)} on PATH. Install one and run again, e.g. "
        "`apt-get install hey` (Debian, Ubuntu) or `brew install hey`."
    )


def _package_version(name: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout:
            return out.stdout
    return "unknown"


def hey_command(
    tool: LoadTool, url: str, scenario: Scenario, duration_s: int, concurrency: int, cpus: int, headers: dict
):
    command = [tool.path, "-z", f"{duration_s}s", "-c", str(concurrency), "-cpus", str(cpus), "-m", scenario.method]
    if scenario.body is not None:
        command += ["-T", "application/json", "-d", json.dumps(scenario.body)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return [*command, url]


def parse_hey(text: str) -> dict:
    """hey's summary: Requests/sec, the latency distribution, status codes,
    and the errors it met (connection refused, timeouts...)."""
    result: dict = {"statuses": {}, "errors": {}}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.endswith(":") and not line[0].isdigit() and not line.startswith("["):
            section = line[:-1]
            continue
        if line.startswith("Requests/sec:"):
            result["rps"] = float(line.split()[-1])
        elif line.startswith("Total:") and section == "Summary":
            result["elapsed_s"] = float(line.split()[1])
        elif section == "Latency distribution" and "% in " in line:
            percent, _, rest = line.partition("% in ")
            result[f"p{int(percent)}_s"] = float(rest.split()[0])
        elif section == "Status code distribution" and line.startswith("["):
            status, _, rest = line[1:].partition("]")
            result["statuses"][status] = int(rest.split()[0])
        elif section == "Error distribution" and line.startswith("["):
            count, _, message = line[1:].partition("]")
            result["errors"][message.strip()[:80]] = int(count)
    result["requests"] = sum(result["statuses"].values()) + sum(result["errors"].values())
    if "rps" not in result:
        raise RuntimeError(f"hey printed no summary:\n{text[-2000:]}")
    return result


_WRK_SCRIPT = """
wrk.method = "%(method)s"
%(body)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end
function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do counts[status] = (counts[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(counts) do table.insert(parts, string.format('"%%s": %%d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %%d, "elapsed_s": %%f, "p50_s": %%f, "p95_s": %%f, "p99_s": %%f, '
    .. '"statuses": {%%s}, "errors": {"connect": %%d, "read": %%d, "write": %%d, "timeout": %%d}}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e6, latency:percentile(95) / 1e6,
    latency:percentile(99) / 1e6, table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout))
end
"""


def wrk_command(
    tool: LoadTool, url: str, scenario: Scenario, duration_s: int, concurrency: int, workdir: str, headers: dict
):
    body = ""
    if scenario.body is not None:
        body = f'wrk.body = [[{json.dumps(scenario.body)}]]\nwrk.headers["Content-Type"] = "application/json"'
    for name, value in headers.items():
        body += f'\nwrk.headers["{name}"] = "{value}"'
    script = os.path.join(workdir, f"wrk-{scenario.key}.lua")
    with open(script, "w") as file:
        file.write(_WRK_SCRIPT % {"method": scenario.method, "body": body})
    return [tool.path, "-t", "1", "-c", str(concurrency), "-d", f"{duration_s}s", "--timeout", "20s", "-s", script, url]


def parse_wrk(text: str) -> dict:
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON ") :])
            result["errors"] = {k: v for k, v in result["errors"].items() if v}
            result["rps"] = result["requests"] / result["elapsed_s"]
            return result
    raise RuntimeError(f"wrk printed no result:\n{text[-2000:]}")


# --- CPU time from /proc -----------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """root and every descendant (the gateway's workers, a service's PROCESSES), found by parent pid."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU of a process and its live descendants."""
    total = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


# --- the stack ---------------------------------------------------------------


def short_name(spec) -> str:
    return spec.name.rsplit("-", 1)[0]


@contextlib.contextmanager
def postgres_databases(admin_url: str):
    """Fresh databases for one bench run, dropped afterwards."""
    import psycopg

    suffix = uuid.uuid4().hex[:8]
    names = {service: f"shop_bench_{service}_{suffix}" for service in run_local.SERVICES}
    run_local.create_postgres_databases(admin_url, list(names.values()))
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield {f"{service.upper()}_DATABASE_URL": f"{base}/{name}" for service, name in names.items()}
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- running scenarios -------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    tool: LoadTool
    stack: Stack
    workdir: str
    loadgen_cpus: set[int] | None
    order_id: str = ""
    current: subprocess.Popen | None = None
    results: dict = field(default_factory=dict)
    profilers: list = field(default_factory=list)

    @property
    def customer_headers(self) -> dict:
        """What every scenario request carries: with --auth jwt, the bench customer's token."""
        if self.args.auth != "jwt":
            return {}
        return {"Authorization": f"Bearer {_token(BENCH_CUSTOMER)}"}

    @property
    def admin_headers(self) -> dict:
        token = _token("bench-ops", ("shop:admin",)) if self.args.auth == "jwt" else ADMIN_TOKEN
        return {"Authorization": f"Bearer {token}"}

    def url(self, scenario: Scenario) -> str:
        spec = next(s for s, _ in self.stack.procs if s.module == "gateway")
        return f"http://127.0.0.1:{spec.port}" + scenario.path.replace("{order_id}", self.order_id)

    @property
    def gateway(self) -> str:
        return self.stack.gateway_urls()[0]

    def prepare(self) -> None:
        """An order to read back in GET /orders/{id}."""
        self.top_up(("P001",))
        status, _, body = http(
            "POST", self.gateway + "/orders", SCENARIOS["post-order"].body, headers=self.customer_headers
        )
        if status != 201:
            raise RuntimeError(f"could not place the order GET /orders/{{id}} reads: {status} {body}")
        self.order_id = body["id"]

    def top_up(self, products) -> None:
        for product in products:
            status, _, body = http(
                "POST",
                f"{self.gateway}/inventory/{product}/adjustments",
                {"delta": STOCK_TOP_UP, "reason": "benchmark top-up"},
                headers=self.admin_headers,
            )
            if status != 200:
                raise RuntimeError(f"stock top-up of {product} failed: {status} {body}")

    def command(self, scenario: Scenario, duration_s: int) -> tuple[list[str], callable]:
        concurrency = self.args.concurrency
        if scenario.target == "grpc":
            inventory = next(s for s, _ in self.stack.procs if s.module == "inventory_svc")
            gateway = next(s for s, _ in self.stack.procs if s.module == "gateway")
            command = [
                sys.executable, "-m", "scripts.grpc_load", f"127.0.0.1:{inventory.port}", "P001",
                str(duration_s), str(concurrency),
            ]
            if gateway.env.get("TLS_CERT_FILE"):
                # Over mTLS (--tls), as the gateway: the caller GetProduct admits.
                command += [gateway.env[n] for n in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")]
            return command, json.loads
        if self.tool.name == "hey":
            cpus = len(self.loadgen_cpus) if self.loadgen_cpus else os.cpu_count()
            command = hey_command(
                self.tool, self.url(scenario), scenario, duration_s, concurrency, cpus, self.customer_headers
            )
            return command, parse_hey
        command = wrk_command(
            self.tool, self.url(scenario), scenario, duration_s, concurrency, self.workdir, self.customer_headers
        )
        return command, parse_wrk

    def run_once(self, scenario: Scenario, duration_s: int, profile: bool = False) -> dict:
        if scenario.buys:
            self.top_up(scenario.buys)
        command, parse = self.command(scenario, duration_s)
        if self.loadgen_cpus:
            command = ["taskset", "-c", ",".join(map(str, sorted(self.loadgen_cpus))), *command]
        if profile:
            self.start_profilers(scenario, duration_s)
        before = {short_name(spec): cpu_seconds(proc.pid) for spec, proc in self.stack.procs}
        loadgen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.current = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = self.current.communicate(timeout=duration_s + 120)
        returncode, self.current = self.current.returncode, None
        after = {short_name(spec): cpu_seconds(proc.pid) for spec, proc in self.stack.procs}
        loadgen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.finish_profilers()
        if returncode != 0:
            raise RuntimeError(f"{command[0]} exited with {returncode}:\n{output[-2000:]}")
        result = parse(output)
        served = max(1, result["requests"])
        result["cpu_ms_per_request"] = {name: (after[name] - before[name]) * 1000 / served for name in before}
        result["cpu_ms_per_request"]["total"] = sum(result["cpu_ms_per_request"].values())
        loadgen_s = (loadgen_after.ru_utime + loadgen_after.ru_stime) - (loadgen_before.ru_utime + loadgen_before.ru_stime)
        result["loadgen_cpu_ms_per_request"] = loadgen_s * 1000 / served
        return result

    def start_profilers(self, scenario: Scenario, duration_s: int) -> None:
        """py-spy on every process (the gateway's workers included) for this
        run; it slows what it samples, so a profiled run's figures are not
        comparable with the others."""
        os.makedirs(self.args.profile, exist_ok=True)
        for spec, proc in self.stack.procs:
            output = os.path.join(self.args.profile, f"{scenario.key}.{short_name(spec)}.txt")
            command = [
                self.args.py_spy, "record", "--pid", str(proc.pid), "--subprocesses", "--gil", "--rate", "200",
                "--duration", str(duration_s), "--format", "raw", "--output", output,
            ]
            with open(output + ".log", "wb") as log:
                self.profilers.append((output, subprocess.Popen(command, stdout=log, stderr=log)))

    def finish_profilers(self) -> None:
        for output, profiler in self.profilers:
            if profiler.wait() != 0:
                say(f"py-spy exited with {profiler.returncode}: no profile in {output} (see {output}.log)")
        self.profilers.clear()

    def stop_load(self) -> None:
        for process in [self.current, *(profiler for _, profiler in self.profilers)]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def summarise(scenario: Scenario, runs: list[dict]) -> dict:
    """Each figure the median of the runs."""

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def ms(value):
        return None if value is None else round(value * 1000, 2)

    statuses = sorted({status for run in runs for status in run["statuses"]})
    errors = sorted({message for run in runs for message in run["errors"]})
    processes = list(runs[0]["cpu_ms_per_request"])
    unexpected = [
        sum(n for status, n in run["statuses"].items() if status != scenario.expected) + sum(run["errors"].values())
        for run in runs
    ]
    return {
        "scenario": scenario.name,
        "key": scenario.key,
        "rps": round(median(r["rps"] for r in runs), 1),
        "p50_ms": ms(median(r.get("p50_s") for r in runs)),
        "p95_ms": ms(median(r.get("p95_s") for r in runs)),
        "p99_ms": ms(median(r.get("p99_s") for r in runs)),
        "requests": int(median(r["requests"] for r in runs)),
        "statuses": {s: int(median(r["statuses"].get(s, 0) for r in runs)) for s in statuses},
        "errors": int(median(unexpected)),
        "transport_errors": {m: int(median(r["errors"].get(m, 0) for r in runs)) for m in errors},
        "cpu_ms_per_request": {p: round(median(r["cpu_ms_per_request"][p] for r in runs), 3) for p in processes},
        "loadgen_cpu_ms_per_request": round(median(r["loadgen_cpu_ms_per_request"] for r in runs), 3),
        "rps_runs": [round(r["rps"], 1) for r in runs],
    }


def summary_line(lines: dict[str, dict]) -> dict:
    """CPU per order and per read, whole stack and by process."""
    summary: dict = {"summary": True}
    for key in ("post-order", "post-order-5", "get-inventory"):
        if key in lines:
            summary[f"cpu_ms_per_request_{key}"] = lines[key]["cpu_ms_per_request"]
    return summary


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


def _token(subject: str, scopes: tuple[str, ...] = ()) -> str:
    """A token the --auth jwt gateway takes (signed with JWT_SECRET), good for the whole run."""
    from gateway.config import AuthConfig
    from gateway.token import mint

    return mint(AuthConfig("jwt", hs256_secret=JWT_SECRET), subject, list(scopes), ttl_s=24 * 3600)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark the shop end to end: one JSON line per scenario, then a summary line.",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario; figures are medians (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load per scenario first")
    parser.add_argument("--postgres", action="store_true", help="the services on PostgreSQL (POSTGRES_URL)")
    parser.add_argument("--tls", action="store_true", help="mutual TLS between the processes (as make run TLS=1)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, from: " + ", ".join(SCENARIOS),
    )
    parser.add_argument("--tool", choices=("auto", "hey", "wrk"), default="auto", help="load tool (default: hey, else wrk)")
    parser.add_argument(
        "--pin",
        choices=("none", "split", "loadgen"),
        default="none",
        help="none (default, as users run it): no pinning; split: the load tool on the last CPU, the services "
        "on the others; loadgen: the load tool on the last CPU, the services on every CPU (taskset)",
    )
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
        help="afterwards, run ../shared/baseline/compare.sh ROUNDS SECONDS (the seed REST chain side by side, "
        "make run defaults) and print its summary; e.g. 3,15",
    )
    args = parser.parse_args(argv)
    if args.compare:
        try:
            args.compare = tuple(int(part) for part in args.compare.split(","))
            if len(args.compare) != 2 or min(args.compare) < 1:
                raise ValueError
        except ValueError:
            parser.error("--compare takes ROUNDS,SECONDS, e.g. 3,15")
    unknown = [key for key in args.scenarios.split(",") if key not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    if args.duration < 1 or args.concurrency < 1 or args.runs < 1:
        parser.error("--duration, --concurrency and --runs must be at least 1")
    args.py_spy = None
    if args.profile:
        args.py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
        if not args.py_spy:
            parser.error("--profile needs py-spy: pip install py-spy (requirements-dev.txt has it)")
    return args


def _on_sigterm(_signum, _frame):
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM both stop the stack (also when started in the
    # background, where a shell leaves SIGINT ignored).
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    scenarios = [SCENARIOS[key] for key in args.scenarios.split(",")]
    needs_http = any(s.target != "grpc" for s in scenarios)
    tool = find_load_tool(args.tool) if needs_http else LoadTool("grpc_load", "scripts/grpc_load.py", "")
    say(f"load tool: {tool.name} {tool.version} ({tool.path}); gRPC scenario: scripts/grpc_load.py (grpc.aio)")

    cpus = sorted(os.sched_getaffinity(0))
    service_cpus, loadgen_cpus = set(cpus), None
    if args.pin != "none" and len(cpus) >= 2:
        loadgen_cpus = {cpus[-1]}
        if args.pin == "split":
            service_cpus = set(cpus[:-1])

    workdir = tempfile.mkdtemp(prefix="shop-bench-")
    failed = True
    stack = None
    bench = None
    with contextlib.ExitStack() as cleanup:
        try:
            environ = {
                "DATA_DIR": os.path.join(workdir, "data"),
                "RATE_LIMIT": LIFTED_RATE_LIMIT,
                "RATE_LIMIT_STORAGE": "memory://",
                "LOG_LEVEL": args.log_level.upper(),
                **(
                    {"AUTH": "jwt", "AUTH_HS256_SECRET": JWT_SECRET}
                    if args.auth == "jwt"
                    else {"AUTH": "off", "ADMIN_TOKEN": ADMIN_TOKEN}
                ),
            }
            if args.postgres:
                admin_url = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
                environ.update(cleanup.enter_context(postgres_databases(admin_url)))
            if args.tls:
                environ = run_local.tls_environ(environ)
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
            bench = Bench(args, tool, stack, workdir, loadgen_cpus)
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
