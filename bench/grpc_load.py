"""`python -m bench grpc-load`: a closed-loop gRPC load driver for the
benchmark (no HTTP tool speaks gRPC here): `concurrency` callers on
grpc.aio, each sending GetProduct to the inventory service back to back for
`duration` seconds. Prints one JSON object in the shape bench/loadtools.py
reads from hey and wrk.

    python -m bench grpc-load ADDRESS PRODUCT_ID DURATION_S CONCURRENCY [--tls CERT KEY CA]

With --tls CERT KEY CA (the gateway's), it calls over mutual TLS.
"""

import argparse
import asyncio
import json
import time

import grpc

from plumbing import tls as mtls
from plumbing.config import TlsConfig
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

CALL_TIMEOUT_S = 10.0


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


async def drive(
    address: str, product_id: str, duration_s: float, concurrency: int, tls: TlsConfig | None = None
) -> dict:
    latencies: list[float] = []
    codes: dict[str, int] = {}
    request = inventory_pb2.GetProductRequest(product_id=product_id)
    channel = (
        grpc.aio.insecure_channel(address)
        if tls is None
        else grpc.aio.secure_channel(address, mtls.channel_credentials(tls))
    )
    async with channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        await channel.channel_ready()
        started = time.perf_counter()
        stop_at = started + duration_s

        async def caller() -> None:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                try:
                    await stub.GetProduct(request, timeout=CALL_TIMEOUT_S)
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                latencies.append(time.perf_counter() - sent)
                codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_s": percentile(latencies, 0.50),
        "p95_s": percentile(latencies, 0.95),
        "p99_s": percentile(latencies, 0.99),
        "statuses": codes,
        "errors": {},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="the inventory service, host:port")
    parser.add_argument("product_id")
    parser.add_argument("duration_s", type=float)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("--tls", nargs=3, metavar=("CERT", "KEY", "CA"), help="call over mutual TLS with these files")


def main(args: argparse.Namespace) -> int:
    tls = TlsConfig.load(*args.tls) if args.tls else None
    print(json.dumps(asyncio.run(drive(args.address, args.product_id, args.duration_s, args.concurrency, tls))))
    return 0
