"""`python -m bench compare BEFORE AFTER`: two code trees' stacks side by
side, their runs alternated, so whatever else the machine is doing weighs
on both alike: a before/after comparison that holds on a busy machine,
where two separate `python -m bench run` minutes apart do not. Nothing is
pinned unless --pin says so, as `bench run`.

(a tree is a checkout, e.g. `git worktree add /tmp/before HEAD~1`). Prints
one JSON line per tree and scenario: the median over the rounds.
"""

import argparse
import contextlib
import json
import os
import shutil
import tempfile

from bench.loadtools import find_load_tool
from bench.runner import PIN_CHOICES, PIN_HELP, Bench, pinned_cpus
from bench.scenarios import SCENARIOS, scenario_keys, stack_environ, summarise
from launcher.stack import Stack, plan_stack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trees", nargs=2, metavar="TREE", help="two checkouts: before and after")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--scenarios", type=scenario_keys, default=["post-order", "get-inventory"])
    parser.add_argument("--pin", choices=PIN_CHOICES, default="none", help=PIN_HELP)


def main(args: argparse.Namespace) -> int:
    scenarios = [SCENARIOS[key] for key in args.scenarios]
    tool = find_load_tool("auto")
    service_cpus, loadgen_cpus = pinned_cpus(args.pin)
    stacks: list[Stack] = []
    benches = []
    try:
        os.sched_setaffinity(0, service_cpus)
        for n, tree in enumerate(args.trees):
            workdir = tempfile.mkdtemp(prefix=f"shop-compare-{n}-")
            environ = {**stack_environ(os.path.join(workdir, "data")), "PYTHONPATH": os.path.abspath(tree)}
            # The tree's own code: its processes run from it.
            stack = Stack(plan_stack(1, environ), log_dir=workdir, root=os.path.abspath(tree))
            stacks.append(stack)
            stack.start()
        if loadgen_cpus:
            os.sched_setaffinity(0, loadgen_cpus)
        for stack in stacks:
            bench = Bench(tool, stack, stack.log_dir, args.concurrency, loadgen_cpus)
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
                line = summarise(scenario, runs[n, scenario.key])
                print(json.dumps({"tree": tree, **line}), flush=True)
    finally:
        for bench in benches:
            bench.stop_load()
        for stack in stacks:
            with contextlib.suppress(Exception):
                stack.stop()
            shutil.rmtree(stack.log_dir, ignore_errors=True)
    return 0
