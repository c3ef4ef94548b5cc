"""The benchmark's reference route: a bare Flask app under the gateway's own
gunicorn settings (GatewayServer: gthread, GATEWAY_WORKERS x GATEWAY_THREADS)
with one route, GET /inventory/<product_id>, that makes one gRPC GetProduct
call and returns its JSON. No hooks, no rate limit, no metrics, no logs, no
transcoding: the ceiling for a gateway read on this stack.

    python -m scripts.bench_reference   (GATEWAY_PORT, INVENTORY_ADDR, as the gateway)
"""

import json
import os
import sys
import threading
import time

import grpc
from flask import Flask, Response
from google.protobuf import json_format

from gateway.__main__ import GatewayServer
from gateway.config import GatewayConfig
from plumbing.config import ConfigError
from plumbing.logs import setup_logging
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc


def create_reference_app(inventory_addr: str, timeout_s: float) -> Flask:
    app = Flask("bench_reference")
    lock = threading.Lock()
    stubs: dict[int, inventory_pb2_grpc.InventoryServiceStub] = {}

    def stub() -> inventory_pb2_grpc.InventoryServiceStub:
        # Opened in the worker, after gunicorn's fork.
        with lock:
            if os.getpid() not in stubs:
                stubs[os.getpid()] = inventory_pb2_grpc.InventoryServiceStub(grpc.insecure_channel(inventory_addr))
            return stubs[os.getpid()]

    @app.get("/inventory/<product_id>")
    def get_product(product_id: str):
        try:
            product = stub().GetProduct(inventory_pb2.GetProductRequest(product_id=product_id), timeout=timeout_s)
        except grpc.RpcError as error:
            return Response(json.dumps({"error": error.code().name}), status=502, mimetype="application/json")
        document = json_format.MessageToDict(product, preserving_proto_field_name=True)
        return Response(json.dumps(document), mimetype="application/json")

    @app.get("/health")
    def health():
        return Response('{"status": "ok"}', mimetype="application/json")

    return app


class ReferenceServer(GatewayServer):
    def load_config(self) -> None:
        super().load_config()
        # No Prometheus directory to tidy: this app keeps no metrics.
        self.cfg.set("child_exit", lambda _arbiter, _worker: None)
        self.cfg.set("proc_name", "shop-bench-reference")

    def load(self):
        upstreams = self.config.upstreams
        return create_reference_app(upstreams.inventory_addr, upstreams.timeout_s)


def main() -> int:
    try:
        config = GatewayConfig.from_env()
    except ConfigError as error:
        print(f"bench reference: refusing to start: {error}", file=sys.stderr, flush=True)
        return 2
    setup_logging("bench-reference", config.log.level, config.log.format)
    ReferenceServer(config, started_at=time.time()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
