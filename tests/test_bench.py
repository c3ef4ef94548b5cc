"""The benchmark's own parts, without load: its command line, how it reads
the load tools' output, how it counts CPU, and that a missing tool is
named with how to get it instead of being installed; and the chain floor's
servers, driven for a moment."""

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from bench import chain_floor, compare, endtoend, loadtools, machine
from bench.__main__ import main as bench_main
from bench.runner import cpu_seconds, pinned_cpus
from bench.scenarios import SCENARIOS, summarise

HEY_OUTPUT = """
Summary:
  Total:\t10.0031 secs
  Slowest:\t0.0521 secs
  Requests/sec:\t812.3456

Latency distribution:
  10% in 0.0081 secs
  50% in 0.0190 secs
  95% in 0.0302 secs
  99% in 0.0411 secs

Status code distribution:
  [201]\t8120 responses
  [503]\t3 responses

Error distribution:
  [2]\tPost "http://127.0.0.1:1/orders": dial tcp: connection refused
"""


def test_a_missing_load_tool_is_named_with_how_to_get_it(monkeypatch):
    monkeypatch.setattr(loadtools.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exit:
        loadtools.find_load_tool("auto")
    message = str(exit.value.code)
    assert "no hey or wrk on PATH" in message
    assert "apt-get install hey" in message  # how to get it, not done for you


def test_hey_summary_is_read_into_rps_latency_statuses_and_errors():
    result = loadtools.parse_hey(HEY_OUTPUT)
    assert result["rps"] == 812.3456
    assert result["elapsed_s"] == 10.0031
    assert (result["p50_s"], result["p95_s"], result["p99_s"]) == (0.0190, 0.0302, 0.0411)
    assert result["statuses"] == {"201": 8120, "503": 3}
    assert sum(result["errors"].values()) == 2
    assert result["requests"] == 8125


def test_hey_without_a_summary_is_an_error():
    with pytest.raises(RuntimeError, match="no summary"):
        loadtools.parse_hey("Error: connection refused\n")


def test_wrk_result_line_is_read_and_empty_error_kinds_dropped():
    line = (
        'BENCH_JSON {"requests": 500, "elapsed_s": 5.0, "p50_s": 0.01, "p95_s": 0.02, "p99_s": 0.03, '
        '"statuses": {"200": 500}, "errors": {"connect": 0, "read": 1, "write": 0, "timeout": 0}}'
    )
    result = loadtools.parse_wrk("Running 5s test\n" + line + "\n")
    assert result["rps"] == 100.0
    assert result["errors"] == {"read": 1}


def test_cpu_is_counted_for_a_process_and_its_descendants():
    # The child burns no CPU itself; its own child burns 0.3 s of CPU time, then waits.
    grandchild = "import time\nwhile time.process_time() < 0.3: pass\nprint('burnt', flush=True)\ntime.sleep(60)"
    child = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}], stdout=sys.stdout)\n"
        "p.wait()"
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "burnt"
        # /proc counts CPU in ticks, sampled: allow for a few of them either way.
        assert cpu_seconds(proc.pid) >= 0.25
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_cpu_of_a_process_gone_is_zero():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert cpu_seconds(proc.pid) == 0.0


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["run", "--scenarios", "post-order,nope"], "unknown scenarios ['nope']"),
        (["run", "--compare", "3"], "ROUNDS,SECONDS"),
        (["run", "--runs", "0"], "must be at least 1"),
        (["compare", "only-one-tree"], "the following arguments are required"),
        (["grpc-load", "127.0.0.1:1"], "the following arguments are required"),
        (["chain-floor", "--designs", "grpc"], "takes sync, aio, stream, aio-stream"),
        (["chain-floor", "--rounds", "0"], "must be at least 1"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_the_command_line_refuses_bad_arguments_before_starting_anything(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exit:
        bench_main(argv)
    assert exit.value.code == 2
    assert complaint in capsys.readouterr().err


def test_nothing_is_pinned_unless_asked(monkeypatch):
    # As users run it: `bench run` and `bench compare` both default to --pin none.
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert pinned_cpus("none") == ({0, 1, 2}, None)
    assert pinned_cpus("split") == ({0, 1}, {2})
    assert pinned_cpus("loadgen") == ({0, 1, 2}, {2})
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert pinned_cpus("split") == ({0}, None)
    for module, argv in ((endtoend, []), (compare, ["before", "after"])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert parser.parse_args(argv).pin == "none"
        assert parser.parse_args([*argv, "--pin", "split"]).pin == "split"


def test_every_scenario_has_a_target_the_runner_knows():
    assert {s.target for s in SCENARIOS.values()} == {"gateway", "grpc"}
    assert all(s.path.startswith("/") for s in SCENARIOS.values() if s.target == "gateway")



@pytest.mark.parametrize("design", chain_floor.DESIGNS)
def test_the_chain_floor_calls_like_an_order_each_server_writing_its_steps(design, tmp_path):
    result = chain_floor.run_once(design, duration_s=0.3, warmup_s=0.1, concurrency=4, folder=str(tmp_path))
    assert result["chains"] > 0 and result["chains_per_s"] > 0

    def rows(name: str) -> int:
        with contextlib.closing(sqlite3.connect(tmp_path / f"{design}-{name}.db")) as connection:
            return connection.execute("SELECT count(*) FROM steps").fetchone()[0]

    # Warm-up chains included: one Reserve-like and one Charge-like call per
    # chain, and the order server's two steps around them.
    assert rows("inventory") == rows("payment") >= result["chains"]
    assert rows("order") == 2 * rows("inventory")


def test_the_chain_floor_prints_one_line_per_design(capsys, monkeypatch):
    measured = {"chains": 1, "chains_per_s": 1.0, "p50_ms": 1.0, "p99_ms": 2.0}
    cpu = {"inventory": 0.5, "payment": 0.5, "order": 1.0, "total": 2.0}
    split = {"user": 50.0, "system": 30.0, "idle": 15.0, "other": 5.0}
    monkeypatch.setattr(
        chain_floor, "run_once", lambda design, *a: {**measured, "cpu_ms_per_chain": cpu, "machine_pct": split}
    )
    assert bench_main(["chain-floor", "--designs", "aio", "--rounds", "2"]) == 0
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line["design"] == "aio" and line["rounds"] == 2
    assert line["cpu_ms_per_chain"] == cpu
    assert line["machine_pct"] == split


def test_the_machines_time_is_split_into_user_system_idle_and_the_rest():
    # /proc/stat's order: user, nice, system, idle, iowait, irq, softirq, steal.
    before = [100, 0, 50, 400, 0, 0, 0, 0]
    after = [160, 10, 80, 490, 5, 2, 3, 0]
    assert machine.machine_split(before, after) == {"user": 35.0, "system": 15.0, "idle": 45.0, "other": 5.0}
    # Nothing measured (off Linux, or no tick between the readings): no split rather than a division by zero.
    assert machine.machine_split(None, after) is None
    assert machine.machine_split(after, after) is None


def test_the_machines_time_is_read_on_linux():
    times = machine.machine_times()
    if not os.path.exists("/proc/stat"):
        assert times is None
        return
    assert len(times) == 8 and all(ticks >= 0 for ticks in times)


def test_a_scenarios_machine_split_is_the_median_of_its_runs():
    def run(rps, user, idle):
        return {
            "rps": rps, "requests": 10, "statuses": {"201": 10}, "errors": {},
            "cpu_ms_per_request": {"gateway": 1.0}, "loadgen_cpu_ms_per_request": 0.1,
            "machine_pct": {"user": user, "system": 100.0 - user - idle, "idle": idle, "other": 0.0},
        }

    runs = [run(100, 60.0, 10.0), run(120, 70.0, 5.0), run(110, 64.0, 12.0)]
    line = summarise(SCENARIOS["post-order"], runs)
    assert line["machine_pct"] == {"user": 64.0, "system": 25.0, "idle": 10.0, "other": 0.0}
    # A run without a split (off Linux) leaves the others' median.
    runs[0]["machine_pct"] = None
    assert summarise(SCENARIOS["post-order"], runs)["machine_pct"]["user"] == 67.0
