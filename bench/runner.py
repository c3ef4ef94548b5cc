"""One end-to-end benchmark run against a started stack: the order to read
back, stock topped up, the load tool (or the gRPC driver) run for a
scenario, and the CPU time every process of the shop spent meanwhile.

CPU time is read with psutil: a process and its live descendants (the
gateway's workers, a service's PROCESSES), user + system; the machine's time
is split too (bench/machine.py)."""

import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass, field

from bench.loadtools import LoadTool, hey_command, parse_hey, parse_wrk, wrk_command
from bench.machine import machine_split, machine_times
from bench.scenarios import ADMIN_TOKEN, BENCH_CUSTOMER, JWT_SECRET, SCENARIOS, STOCK_TOP_UP, Scenario
from launcher.plan import ProcessSpec
from launcher.stack import ROOT, Stack, http

try:
    import psutil
except ImportError:  # a development dependency: the images do not carry it
    raise SystemExit(
        "bench: psutil is missing. Install the development requirements and run again: "
        ".venv/bin/pip install -r requirements-dev.txt (or `make .venv/.installed`)."
    ) from None


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


PIN_CHOICES = ("none", "split", "loadgen")
PIN_HELP = (
    "none (default, as users run it): no pinning; split: the load tool on the last CPU, the services "
    "on the others; loadgen: the load tool on the last CPU, the services on every CPU (taskset)"
)


def pinned_cpus(pin: str) -> tuple[set[int], set[int] | None]:
    """The services' CPUs and the load tool's (None: any) for --pin `pin`."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "none" or len(cpus) < 2:
        return set(cpus), None
    return (set(cpus[:-1]) if pin == "split" else set(cpus)), {cpus[-1]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue  # ended since the list was taken
        total += times.user + times.system
    return total


def short_name(spec: ProcessSpec) -> str:
    return spec.name.rsplit("-", 1)[0]


def token(subject: str, scopes: tuple[str, ...] = ()) -> str:
    """A token the --auth jwt gateway takes (signed with JWT_SECRET), good for the whole run."""
    from gateway.config import AuthConfig
    from gateway.token import mint

    return mint(AuthConfig("jwt", hs256_secret=JWT_SECRET), subject, list(scopes), ttl_s=24 * 3600)


@dataclass
class Bench:
    tool: LoadTool
    stack: Stack
    workdir: str
    concurrency: int
    # The CPUs the load tool is pinned to (taskset); None: not pinned.
    loadgen_cpus: set[int] | None = None
    # The gateway's AUTH: "jwt" puts a customer's token on every request.
    auth: str = "off"
    # py-spy, and where its profiles go, for the runs asked to profile.
    py_spy: str | None = None
    profile_dir: str | None = None
    order_id: str = ""
    current: subprocess.Popen | None = None
    profilers: list = field(default_factory=list)

    @property
    def customer_headers(self) -> dict:
        """What every scenario request carries: with --auth jwt, the bench customer's token."""
        if self.auth != "jwt":
            return {}
        return {"Authorization": f"Bearer {token(BENCH_CUSTOMER)}"}

    @property
    def admin_headers(self) -> dict:
        admin = token("bench-ops", ("shop:admin",)) if self.auth == "jwt" else ADMIN_TOKEN
        return {"Authorization": f"Bearer {admin}"}

    def url(self, scenario: Scenario) -> str:
        return self.gateway + scenario.path.replace("{order_id}", self.order_id)

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
        if scenario.target == "grpc":
            inventory = next(s for s, _ in self.stack.procs if s.module == "inventory_svc")
            gateway = next(s for s, _ in self.stack.procs if s.module == "gateway")
            command = [
                sys.executable, "-m", "bench", "grpc-load", f"127.0.0.1:{inventory.port}", "P001",
                str(duration_s), str(self.concurrency),
            ]
            if gateway.env.get("TLS_CERT_FILE"):
                # Over mTLS (--tls), as the gateway: the caller GetProduct admits.
                command += ["--tls", *(gateway.env[n] for n in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"))]
            return command, json.loads
        if self.tool.name == "hey":
            cpus = len(self.loadgen_cpus) if self.loadgen_cpus else os.cpu_count()
            command = hey_command(
                self.tool, self.url(scenario), scenario, duration_s, self.concurrency, cpus, self.customer_headers
            )
            return command, parse_hey
        command = wrk_command(
            self.tool, self.url(scenario), scenario, duration_s, self.concurrency, self.workdir, self.customer_headers
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
        machine_before = machine_times()
        self.current = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = self.current.communicate(timeout=duration_s + 120)
        returncode, self.current = self.current.returncode, None
        machine_after = machine_times()
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
        result["machine_pct"] = machine_split(machine_before, machine_after)
        return result

    def start_profilers(self, scenario: Scenario, duration_s: int) -> None:
        """py-spy on every process (the gateway's workers included) for this
        run; it slows what it samples, so a profiled run's figures are not
        comparable with the others."""
        os.makedirs(self.profile_dir, exist_ok=True)
        for spec, proc in self.stack.procs:
            output = os.path.join(self.profile_dir, f"{scenario.key}.{short_name(spec)}.txt")
            command = [
                self.py_spy, "record", "--pid", str(proc.pid), "--subprocesses", "--gil", "--rate", "200",
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
