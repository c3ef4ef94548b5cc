"""The HTTP load tools the end-to-end benchmark drives: hey (preferred) or
wrk, found on PATH, never installed: without either the benchmark says how
to get one and exits non-zero. Each tool's command for a scenario, and its
output read into one shape: rps, p50/p95/p99 seconds, statuses, errors."""

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from bench.scenarios import Scenario


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
