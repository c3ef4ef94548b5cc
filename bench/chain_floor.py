"""What the mesh's shape costs with nothing of the shop in it:
`python -m bench chain-floor [--duration 8] [--rounds 3] [--concurrency 16]
[--designs sync,aio,stream,aio-stream,pump]`.

Three bare gRPC servers, each in a process of its own, called like an
order: a caller sends to "order", whose handler commits a row, calls
"inventory", then "payment", and commits again; inventory and payment each
commit one row per call. Every server writes to its own SQLite file in WAL
mode with synchronous=FULL, so each call pays for a durable write as a saga
step does. Bytes in and out: no protobuf, no validation, no metrics, no logs.

It runs in five designs, rounds alternated:
- `sync`: grpcio's server on a thread pool of 16, blocking stubs (the shop's
  design);
- `aio`: grpc.aio servers and stubs, one event loop per process, SQLite run
  on the loop (no thread to hand a call to: the single-threaded design);
- `stream`: as `sync`, but each of order's 16 threads keeps one
  bidirectional stream open to each leaf and sends its calls on it as
  messages (no call set up or torn down per step: another data path);
- `aio-stream`: the leaves as in `stream`, order a grpc.aio server that
  keeps 16 streams open to each leaf and lends one to each step (grpcio's
  blocking stream needs a thread to feed it; an aio stream does not);
- `pump`: the leaves as in `stream`, order grpcio's sync server handing
  each step to one event loop thread that keeps the streams.

Prints one JSON line per design, the medians over rounds: chains/s, latency
p50/p99 of the caller, CPU milliseconds per chain of each server, and how
the machine's time went (user, system, idle, other; the caller included).
The caller (grpc.aio, in this process) is not counted in the servers' CPU.
What the shop spends on an order beyond these figures (and the gateway's
HTTP) is its own work.
"""

import argparse
import asyncio
import json
import os
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc

from bench.endtoend import at_least_one
from bench.grpc_load import percentile
from bench.machine import machine_split, machine_times, median_split
from bench.runner import cpu_seconds
from launcher.stack import free_port_base

DESIGNS = ("sync", "aio", "stream", "aio-stream", "pump")
SERVERS = ("inventory", "payment", "order")
METHOD = "/bench.Chain/Call"
STREAM_METHOD = "/bench.Chain/Stream"
CALL_TIMEOUT_S = 5.0
PAYLOAD = b"x" * 200


def open_database(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS steps (id INTEGER PRIMARY KEY, key TEXT, body BLOB)")
    connection.execute("CREATE INDEX IF NOT EXISTS steps_by_key ON steps (key)")
    return connection


class Journal:
    """One durable row per call, one writer at a time."""

    def __init__(self, path: str):
        self.connection = open_database(path)
        self.lock = threading.Lock()

    def write(self, body: bytes) -> None:
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            self.connection.execute("INSERT INTO steps (key, body) VALUES (?, ?)", (os.urandom(8).hex(), body))
            self.connection.execute("COMMIT")


def _handler(behaviour) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "bench.Chain", {"Call": grpc.unary_unary_rpc_method_handler(behaviour)}
    )


def _stream_handler(answer_each) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "bench.Chain", {"Stream": grpc.stream_stream_rpc_method_handler(answer_each)}
    )


def run_sync_server(handler: grpc.GenericRpcHandler, port: int, workers: int = 16) -> None:
    """grpcio's server on a pool of `workers` threads, until terminated."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def run_aio_server(handler: grpc.GenericRpcHandler, port: int) -> None:
    """A grpc.aio server on the running loop, until terminated."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_sync(name: str, port: int, upstreams: list[int], journal: Journal) -> None:
    if name == "order":
        calls = [grpc.insecure_channel(f"127.0.0.1:{p}").unary_unary(METHOD) for p in upstreams]

        def behaviour(request, context):
            journal.write(request)
            reserved = calls[0](request, timeout=CALL_TIMEOUT_S)
            charged = calls[1](reserved, timeout=CALL_TIMEOUT_S)
            journal.write(charged)
            return charged

    else:

        def behaviour(request, context):
            journal.write(request)
            return request

    run_sync_server(_handler(behaviour), port)


async def serve_aio(name: str, port: int, upstreams: list[int], journal: Journal) -> None:
    if name == "order":
        calls = [grpc.aio.insecure_channel(f"127.0.0.1:{p}").unary_unary(METHOD) for p in upstreams]

        async def behaviour(request, context):
            journal.write(request)
            reserved = await calls[0](request, timeout=CALL_TIMEOUT_S)
            charged = await calls[1](reserved, timeout=CALL_TIMEOUT_S)
            journal.write(charged)
            return charged

    else:

        async def behaviour(request, context):
            journal.write(request)
            return request

    await run_aio_server(_handler(behaviour), port)


class StreamedCall:
    """A blocking call over one bidirectional stream per calling thread, in
    lockstep (grpcio feeds each stream's requests from a thread of its own)."""

    def __init__(self, channel: grpc.Channel):
        self.open = channel.stream_stream(STREAM_METHOD)
        self.local = threading.local()

    def __call__(self, request: bytes) -> bytes:
        if not hasattr(self.local, "outbox"):
            self.local.outbox = queue.SimpleQueue()
            self.local.answers = self.open(iter(self.local.outbox.get, None))
        self.local.outbox.put(request)
        return next(self.local.answers)


def serve_stream(name: str, port: int, upstreams: list[int], journal: Journal) -> None:
    if name == "order":
        calls = [StreamedCall(grpc.insecure_channel(f"127.0.0.1:{p}")) for p in upstreams]

        def behaviour(request, context):
            journal.write(request)
            charged = calls[1](calls[0](request))
            journal.write(charged)
            return charged

        handler = _handler(behaviour)
    else:

        def answer_each(requests, context):
            for request in requests:
                journal.write(request)
                yield request

        handler = _stream_handler(answer_each)
    # A stream holds a server thread for its life: room for every order thread's.
    run_sync_server(handler, port, workers=16 if name == "order" else 48)


class StreamPool:
    """Open bidirectional streams to one leaf, lent one per step: a message
    out, the answer back. A floor's sketch: no deadline per message and no
    stream opened again after a failure, as a design would need."""

    def __init__(self, port: int, size: int = 16):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.idle: asyncio.Queue = asyncio.Queue()
        for _ in range(size):
            self.idle.put_nowait(channel.stream_stream(STREAM_METHOD)(wait_for_ready=True))

    async def ask(self, request: bytes) -> bytes:
        stream = await self.idle.get()
        try:
            await stream.write(request)
            return await stream.read()
        finally:
            self.idle.put_nowait(stream)


async def serve_aio_stream_order(port: int, upstreams: list[int], journal: Journal) -> None:
    """Order in the `aio-stream` design: grpc.aio, each step a message."""
    inventory, payment = (StreamPool(p) for p in upstreams)

    async def behaviour(request, context):
        journal.write(request)
        charged = await payment.ask(await inventory.ask(request))
        journal.write(charged)
        return charged

    await run_aio_server(_handler(behaviour), port)


def serve_pump_order(port: int, upstreams: list[int], journal: Journal) -> None:
    """Order in the `pump` design: grpcio's sync server, each step handed to
    one event loop thread that owns the streams, and its answer handed back."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def open_pools() -> tuple[StreamPool, StreamPool]:
        return tuple(StreamPool(p) for p in upstreams)

    inventory, payment = asyncio.run_coroutine_threadsafe(open_pools(), loop).result()

    def ask(pool: StreamPool, request: bytes) -> bytes:
        return asyncio.run_coroutine_threadsafe(pool.ask(request), loop).result(CALL_TIMEOUT_S)

    def behaviour(request, context):
        journal.write(request)
        charged = ask(payment, ask(inventory, request))
        journal.write(charged)
        return charged

    run_sync_server(_handler(behaviour), port)


def serve(design: str, name: str, port: int, upstreams: list[int], database: str) -> None:
    journal = Journal(database)
    if design == "sync":
        serve_sync(name, port, upstreams, journal)
    elif design == "aio":
        asyncio.run(serve_aio(name, port, upstreams, journal))
    elif design == "stream" or name != "order":
        # Every streamed design's leaves answer messages on streams.
        serve_stream(name, port, upstreams, journal)
    elif design == "aio-stream":
        asyncio.run(serve_aio_stream_order(port, upstreams, journal))
    else:
        serve_pump_order(port, upstreams, journal)


async def drive(port: int, duration_s: float, concurrency: int) -> list[float]:
    """Latencies of the chains `concurrency` callers completed back to back."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        stop_at = time.perf_counter() + duration_s

        async def caller() -> None:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                await call(PAYLOAD, timeout=CALL_TIMEOUT_S)
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


def run_once(design: str, duration_s: float, warmup_s: float, concurrency: int, folder: str) -> dict:
    ports = {name: free_port_base() for name in SERVERS}
    processes = {}
    for name in SERVERS:
        upstreams = [str(ports["inventory"]), str(ports["payment"])] if name == "order" else []
        command = [sys.executable, "-m", "bench", "chain-floor", "--serve", design, name, str(ports[name])]
        command += [os.path.join(folder, f"{design}-{name}.db"), *upstreams]
        processes[name] = subprocess.Popen(command)
    try:
        for port in ports.values():
            _wait_until_serving(port)
        asyncio.run(drive(ports["order"], warmup_s, concurrency))
        before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
        machine_before = machine_times()
        started = time.perf_counter()
        latencies = asyncio.run(drive(ports["order"], duration_s, concurrency))
        elapsed = time.perf_counter() - started
        machine_after = machine_times()
        after = {name: cpu_seconds(p.pid) for name, p in processes.items()}
    finally:
        for p in processes.values():
            p.terminate()
        for p in processes.values():
            p.wait()
    if not latencies:
        raise RuntimeError(f"chain-floor: no chain completed in {duration_s} s ({design})")
    latencies.sort()
    chains = len(latencies)
    cpu_ms = {name: 1000 * (after[name] - before[name]) / chains for name in SERVERS}
    return {
        "chains": chains,
        "chains_per_s": chains / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "cpu_ms_per_chain": {**cpu_ms, "total": sum(cpu_ms.values())},
        "machine_pct": machine_split(machine_before, machine_after),
    }


def _wait_until_serving(port: int, timeout_s: float = 30.0) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)


def median_of(runs: list[dict]) -> dict:
    def med(pick) -> float:
        return round(statistics.median(pick(r) for r in runs), 3)

    return {
        "chains_per_s": med(lambda r: r["chains_per_s"]),
        "p50_ms": med(lambda r: r["p50_ms"]),
        "p99_ms": med(lambda r: r["p99_ms"]),
        "cpu_ms_per_chain": {k: med(lambda r, k=k: r["cpu_ms_per_chain"][k]) for k in (*SERVERS, "total")},
        "machine_pct": median_split([r["machine_pct"] for r in runs]),
    }


def designs(text: str) -> tuple[str, ...]:
    chosen = tuple(d for d in text.split(",") if d)
    if not chosen or set(chosen) - set(DESIGNS):
        raise argparse.ArgumentTypeError(f"takes {', '.join(DESIGNS)}, not {text!r}")
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each run (default 2)")
    parser.add_argument("--rounds", type=at_least_one, default=3, help="runs of each design, alternated (default 3)")
    parser.add_argument("--concurrency", type=at_least_one, default=16, help="chains in flight (default 16)")
    parser.add_argument(
        "--designs", type=designs, default=DESIGNS, help=f"{', '.join(DESIGNS)}, comma-separated (default all)"
    )
    # One server of a run, started by the run itself.
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    if args.serve:
        design, name, port, database, *upstreams = args.serve
        serve(design, name, int(port), [int(p) for p in upstreams], database)
        return 0
    runs: dict[str, list[dict]] = {d: [] for d in args.designs}
    with tempfile.TemporaryDirectory(prefix="chain-floor-") as folder:
        for _ in range(args.rounds):
            for design in args.designs:
                runs[design].append(run_once(design, args.duration, args.warmup, args.concurrency, folder))
    for design in args.designs:
        line = {"design": design, "rounds": args.rounds, "concurrency": args.concurrency}
        print(json.dumps({**line, **median_of(runs[design])}))
    return 0
