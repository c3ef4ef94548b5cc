"""Two code trees' stacks side by side, their runs alternated, so whatever
else the machine is doing weighs on both alike: a before/after comparison that
holds on a busy machine, where two separate `scripts/bench` runs minutes apart
do not. Both stacks share the service CPUs, the load tool has its own.

    .venv/bin/python -m scripts.bench_compare /path/to/before /path/to/after [--rounds 4] [--duration 5]

(a tree is a checkout, e.g. `git worktree add /tmp/before HEAD~1`). Prints
one JSON line per tree and scenario: the median over the rounds.
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from scripts import benchmark
from scripts.stack import Stack, plan_stack


class TreeStack(Stack):
    """A stack whose processes run another tree's code."""

    def __init__(self, specs, log_dir: str, root: str):
        super().__init__(specs, log_dir=log_dir)
        self.root = root

    def _spawn(self, spec) -> subprocess.Popen:
        with open(os.path.join(self.log_dir, f"{spec.name}.log"), "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", spec.module], env=spec.env, cwd=self.root, stdout=log, stderr=log
            )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--scenarios", default="post-order,get-inventory")
    args = parser.parse_args(argv)
    scenarios = [benchmark.SCENARIOS[key] for key in args.scenarios.split(",")]
    tool = benchmark.find_load_tool("auto")
    cpus = sorted(os.sched_getaffinity(0))
    service_cpus, loadgen_cpus = (set(cpus[:-1]), {cpus[-1]}) if len(cpus) >= 2 else (set(cpus), None)
    stacks: list[Stack] = []
    benches = []
    try:
        os.sched_setaffinity(0, service_cpus)
        for n, tree in enumerate(args.trees):
            workdir = tempfile.mkdtemp(prefix=f"shop-compare-{n}-")
            environ = {
                "DATA_DIR": os.path.join(workdir, "data"),
                "RATE_LIMIT": benchmark.LIFTED_RATE_LIMIT,
                "RATE_LIMIT_STORAGE": "memory://",
                "ADMIN_TOKEN": benchmark.ADMIN_TOKEN,
                "LOG_LEVEL": "INFO",
                "PYTHONPATH": os.path.abspath(tree),
            }
            stack = TreeStack(plan_stack(1, environ), workdir, tree)
            stacks.append(stack)
            stack.start()
        if loadgen_cpus:
            os.sched_setaffinity(0, loadgen_cpus)
        options = argparse.Namespace(concurrency=args.concurrency)
        for stack in stacks:
            bench = benchmark.Bench(options, tool, stack, stack.log_dir, loadgen_cpus)
            bench.prepare()
            benches.append(bench)
            for scenario in scenarios:
                bench.run_once(scenario, 1)  # warm-up
        runs = {(n, s.key): [] for n in range(len(benches)) for s in scenarios}
        for round_ in range(args.rounds):
            for scenario in scenarios:
                order = range(len(benches)) if round_ % 2 == 0 else reversed(range(len(benches)))
                for n in order:
                    runs[n, scenario.key].append(benches[n].run_once(scenario, args.duration))
        for n, tree in enumerate(args.trees):
            for scenario in scenarios:
                line = benchmark.summarise(scenario, runs[n, scenario.key])
                print(json.dumps({"tree": tree, **line}), flush=True)
    finally:
        for bench in benches:
            bench.stop_load()
        for stack in stacks:
            with contextlib.suppress(Exception):
                stack.stop()
            shutil.rmtree(stack.log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
