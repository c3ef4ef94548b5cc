"""The whole shop as real processes on free ports, for end-to-end tests and
benchmarks: make run's plan (launcher/plan.py), started and stopped from
code, without make run's supervision.

A Stack takes two hooks, both public: `root`, the code tree its processes
run from (a benchmark compares two), and `ready`, what it waits for before
a process counts as started (by default launcher.probes.serving)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from launcher.plan import REPLICA_PORT_STEP, ProcessSpec, plan
from launcher.probes import port_taken, serving
from launcher.supervisor import STOP_TIMEOUT_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Free ports are picked at random from here: stacks started at once (pytest's
# workers, a benchmark beside the tests) do not all take the first free ones.
# Below the ephemeral range (32768-60999, where outgoing connections get
# theirs), clear of the defaults (30080, 50051-50053, 9101-9103). pytest's
# workers each take a slice of their own (tests/conftest.py).
PORT_RANGE = (20000, 29000)

# Ports handed out by this process: a port is only taken once its process
# binds it, so two picks made before that must not meet.
_handed_out: set[int] = set()


def free_port_base(replicas: int = 1, step: int = REPLICA_PORT_STEP) -> int:
    """A port p with p + n * step free for every replica n, none of them
    handed out before by this process."""
    low, high = PORT_RANGE
    for _ in range(1000):
        base = random.randrange(low, high - (replicas - 1) * step)
        ports = {base + n * step for n in range(replicas)}
        if not ports & _handed_out and not any(port_taken(port) for port in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError(f"no free ports in {low}-{high}")


@dataclass
class Stack:
    specs: list[ProcessSpec]
    procs: list[tuple[ProcessSpec, subprocess.Popen]] = field(default_factory=list)
    # Each process's output goes to <log_dir>/<name>.log.
    log_dir: str = ""
    # The code tree the processes run (their working directory).
    root: str = ROOT
    # Whether a process counts as started: the readiness start() waits for.
    ready: Callable[[ProcessSpec], bool] = serving

    def gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{s.port}" for s in self.specs if s.module == "gateway"]

    def replicas_of(self, module: str) -> list[tuple[ProcessSpec, subprocess.Popen]]:
        return [(s, p) for s, p in self.procs if s.module == module]

    def start(self) -> "Stack":
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> "Stack":
        """Start every process without waiting for any to be ready."""
        for spec in self.specs:
            spec.env.setdefault("LOG_LEVEL", "WARNING")
            self.procs.append((spec, self.spawn(spec)))
        return self

    def restart(self, spec: ProcessSpec) -> None:
        index = next(i for i, (s, _) in enumerate(self.procs) if s is spec)
        self.procs[index] = (spec, self.spawn(spec))
        self.wait_ready([spec])

    def spawn(self, spec: ProcessSpec) -> subprocess.Popen:
        """One process of the plan, run from `root`, its output in its log."""
        with open(os.path.join(self.log_dir, f"{spec.name}.log"), "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", spec.module], env=spec.env, cwd=self.root, stdout=log, stderr=log
            )

    def wait_ready(self, specs: list[ProcessSpec] | None = None, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        for spec in specs or self.specs:
            while not self.ready(spec):
                proc = next(p for s, p in self.procs if s is spec)
                if proc.poll() is not None:
                    raise RuntimeError(f"{spec.name} exited with {proc.returncode}; see {self.log_dir}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{spec.name} not ready in {timeout_s}s; see {self.log_dir}")
                time.sleep(0.1)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM everything (each drains), then wait; kill what outlives it."""
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def plan_stack(replicas: int, environ: dict[str, str]) -> list[ProcessSpec]:
    """make run's plan on free ports and in `environ`'s own DATA_DIR, so a
    developer's `make run` keeps going and keeps its data to itself."""
    if not environ.get("DATA_DIR"):
        raise ValueError("plan_stack needs a DATA_DIR of its own (make run's ./data is the developer's)")
    env = dict(os.environ, **environ)
    for service in ("INVENTORY", "PAYMENT", "ORDER"):
        env[f"{service}_PORT"] = str(free_port_base(replicas))
        env[f"{service}_METRICS_PORT"] = str(free_port_base(replicas))
        env.pop(f"{service}_ADDR", None)
    # Gateways take consecutive ports.
    env["GATEWAY_PORT"] = str(free_port_base(replicas, step=1))
    return plan(env, replicas)


def http(method: str, url: str, body=None, headers=None, timeout: float = 30):
    """(status, headers (names case-insensitive), parsed JSON body) without raising on 4xx/5xx."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        payload = error.read()
        return error.code, error.headers, json.loads(payload) if payload else None


def metric_total(port: int, name: str, **labels) -> float:
    """Sum of a metric's samples whose labels include `labels`, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        label_text, value = line[len(name) + 1 :].rsplit("} ", 1)
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total
