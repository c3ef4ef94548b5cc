"""The whole shop as real processes on free ports, for end-to-end tests and
benchmarks: scripts/run_local.py's plan, started and stopped from code."""

import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from scripts import run_local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Free ports are picked at random from here: stacks started at once (pytest's
# workers, a benchmark beside the tests) do not all take the first free ones.
# Below the ephemeral range (32768-60999, where outgoing connections get
# theirs), clear of the defaults (30080, 50051-50053, 9101-9103).
PORT_RANGE = (20000, 29000)


def free_port_base(replicas: int = 1, step: int = run_local.REPLICA_PORT_STEP) -> int:
    """A port p with p + n * step free for every replica n."""
    for _ in range(1000):
        base = random.randrange(*PORT_RANGE)
        if not any(run_local.port_taken(base + n * step) for n in range(replicas)):
            return base
    raise RuntimeError("no free ports")


@dataclass
class Stack:
    specs: list
    procs: list = field(default_factory=list)
    log_dir: str = ""

    def gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{s.port}" for s in self.specs if s.module == "gateway"]

    def replicas_of(self, module: str) -> list:
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
            self.procs.append((spec, self._spawn(spec)))
        return self

    def restart(self, spec) -> None:
        index = next(i for i, (s, _) in enumerate(self.procs) if s is spec)
        self.procs[index] = (spec, self._spawn(spec))
        self.wait_ready([spec])

    def _spawn(self, spec) -> subprocess.Popen:
        with open(os.path.join(self.log_dir, f"{spec.name}.log"), "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", spec.module], env=spec.env, cwd=ROOT, stdout=log, stderr=log
            )

    def wait_ready(self, specs=None, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        for spec in specs or self.specs:
            while True:
                if self._ready(spec):
                    break
                proc = next(p for s, p in self.procs if s is spec)
                if proc.poll() is not None:
                    raise RuntimeError(f"{spec.name} exited with {proc.returncode}; see {self.log_dir}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{spec.name} not ready in {timeout_s}s; see {self.log_dir}")
                time.sleep(0.1)

    @staticmethod
    def _ready(spec) -> bool:
        return run_local.probe(spec) == "SERVING"

    def stop(self) -> None:
        run_local.stop(self.procs)


def plan_stack(replicas: int, environ: dict[str, str]) -> list:
    """run_local's plan on free ports, so a developer's `make run` can keep going."""
    env = dict(os.environ, **environ)
    for service in ("INVENTORY", "PAYMENT", "ORDER"):
        env[f"{service}_PORT"] = str(free_port_base(replicas))
        env[f"{service}_METRICS_PORT"] = str(free_port_base(replicas))
        env.pop(f"{service}_ADDR", None)
    # Gateways take consecutive ports.
    env["GATEWAY_PORT"] = str(free_port_base(replicas, step=1))
    return run_local.plan(env, replicas)


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
