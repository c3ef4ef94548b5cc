"""CPU per request of the gateway's Flask layer alone, in-process: Flask's
test client, the upstream answer stubbed, no gunicorn, no gRPC. Prints one
JSON line: microseconds per request (the best of 3 rounds) for

- the bare reference route (scripts/bench_reference.py),
- the gateway as built,
- the gateway without its rate limiter, and without its access log line,
- POST /orders through the gateway,

so the cost of each part of the gateway's own work is visible apart from
the network and the services. scripts/bench measures the whole path.

    .venv/bin/python -m scripts.bench_gateway_hooks [--requests N]
"""

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from unittest import mock

from gateway import app as gateway_app
from gateway import upstreams
from plumbing.logs import setup_logging
from scripts import bench_reference
from shop.inventory.v1 import inventory_pb2
from shop.order.v1 import order_pb2

CLIENT = {"REMOTE_ADDR": "10.0.0.1"}
ORDER_BODY = json.dumps(
    {"customer_id": "C-bench", "items": [{"product_id": "P001", "quantity": 1}], "payment_method": "tok_visa"}
)


def _answers():
    product = inventory_pb2.Product(product_id="P001", name="Widget", price_cents=1999, currency="USD", available=98)
    order = order_pb2.Order(
        id="ord_0123456789abcdef01234567",
        customer_id="C-bench",
        status=order_pb2.CONFIRMED,
        total_cents=1999,
        currency="USD",
        payment_id="pay_0123456789abcdef",
        items=[order_pb2.OrderItem(product_id="P001", quantity=1, unit_price_cents=1999)],
    )
    now = dt.datetime.now(dt.UTC)
    order.created_at.FromDatetime(now)
    order.updated_at.FromDatetime(now)
    return product, order


def per_request_us(request, count: int) -> float:
    """Best of three rounds of `count` requests, in CPU microseconds each."""
    for _ in range(min(500, count)):
        answer = request()
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"unexpected answer {answer.status_code}: {answer.data[:200]!r}")
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(count):
            request()
        best = min(best, (time.process_time() - started) / count * 1e6)
    return round(best, 1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench_gateway_hooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per round (default 5000)")
    args = parser.parse_args(argv)

    # create_app reads its config from the environment: the limit lifted, as in scripts/bench.
    os.environ.update(RATE_LIMIT="1000000000/minute", RATE_LIMIT_STORAGE="memory://")
    setup_logging("gateway", "INFO")
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))
    product, order = _answers()

    def answer(_self, _backend, _method, _message, response_class, _metadata):
        return order if response_class is order_pb2.Order else product

    class InventoryStub:
        def GetProduct(self, _request, timeout):
            return product

    results = {}
    with (
        mock.patch.object(upstreams.Upstreams, "call", answer),
        mock.patch.object(bench_reference.inventory_pb2_grpc, "InventoryServiceStub", lambda _channel: InventoryStub()),
    ):
        reference = bench_reference.create_reference_app("127.0.0.1:1", 5).test_client()
        results["reference_get_us"] = per_request_us(
            lambda: reference.get("/inventory/P001", environ_base=CLIENT), args.requests
        )
        gateway = gateway_app.create_app().test_client()
        results["gateway_get_us"] = per_request_us(
            lambda: gateway.get("/inventory/P001", environ_base=CLIENT), args.requests
        )
        results["gateway_post_order_us"] = per_request_us(
            lambda: gateway.post("/orders", data=ORDER_BODY, content_type="application/json", environ_base=CLIENT),
            args.requests,
        )
        with mock.patch.object(gateway_app, "install_rate_limit", lambda *_args, **_kwargs: None):
            unlimited = gateway_app.create_app().test_client()
        results["gateway_get_without_rate_limit_us"] = per_request_us(
            lambda: unlimited.get("/inventory/P001", environ_base=CLIENT), args.requests
        )
        logging.getLogger("gateway.access").setLevel(logging.WARNING)
        results["gateway_get_without_access_log_us"] = per_request_us(
            lambda: gateway.get("/inventory/P001", environ_base=CLIENT), args.requests
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
