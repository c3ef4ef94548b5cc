"""What the end-to-end benchmark measures: its scenarios, the settings of
the shop under it, and how a scenario's runs become one JSON line."""

import argparse
import statistics
import uuid
from dataclasses import dataclass

from bench.machine import median_split

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


@dataclass(frozen=True)
class Scenario:
    """One request driven over and over: against the gateway over HTTP, or
    GetProduct on the inventory service over gRPC (no gateway)."""

    key: str
    name: str
    target: str  # "gateway" or "grpc"
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
            {"customer_id": BENCH_CUSTOMER, "items": [{"product_id": "P001", "quantity": 1}], "payment_method": "tok_visa"},
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
                "customer_id": BENCH_CUSTOMER,
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


def scenario_keys(text: str) -> list[str]:
    """--scenarios: comma-separated keys of SCENARIOS."""
    keys = text.split(",")
    unknown = [key for key in keys if key not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    return keys


def stack_environ(data_dir: str, log_level: str = "INFO", auth: str = "off") -> dict[str, str]:
    """The settings of a benchmarked shop: its data in `data_dir`, the rate
    limit lifted, and an admin token (AUTH=off) or an HS256 secret (jwt)
    the benchmark knows."""
    credentials = (
        {"AUTH": "jwt", "AUTH_HS256_SECRET": JWT_SECRET} if auth == "jwt" else {"AUTH": "off", "ADMIN_TOKEN": ADMIN_TOKEN}
    )
    return {
        "DATA_DIR": data_dir,
        "RATE_LIMIT": LIFTED_RATE_LIMIT,
        "RATE_LIMIT_STORAGE": "memory://",
        "LOG_LEVEL": log_level.upper(),
        **credentials,
    }


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
        "machine_pct": median_split([r.get("machine_pct") for r in runs]),
        "rps_runs": [round(r["rps"], 1) for r in runs],
    }


def summary_line(lines: dict[str, dict]) -> dict:
    """CPU per order and per read, whole stack and by process."""
    summary: dict = {"summary": True}
    for key in ("post-order", "post-order-5", "get-inventory"):
        if key in lines:
            summary[f"cpu_ms_per_request_{key}"] = lines[key]["cpu_ms_per_request"]
    return summary
