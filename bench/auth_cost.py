"""What AUTH=jwt costs per request, in-process (no load tool, no free CPU
needed): `python -m bench auth-cost [--requests 2000] [--rounds 5]`.

1. Verification alone, per key kind (an HS256 secret; RS256 2048-bit and
   ES256 P-256 keys from a JWKS served here, fetched once): the CPU of a
   full check (PyJWT: a token seen for the first time) and of a token the
   verifier remembers (every later request with it, for up to a minute).
2. A read through the gateway: `GET /orders/{id}` with Flask's test client
   in front of the real inventory, payment and order services (in this
   process, SQLite), AUTH=off against AUTH=jwt with an HS256 and an RS256
   token. CPU of this whole process (gateway and services) per request.

Rounds alternate the modes, so a drift of a busy machine hits all alike;
each figure is the median over rounds. Prints one JSON line per figure.
"""

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.app import create_app
from gateway.auth import TokenVerifier
from gateway.config import AuthConfig, GatewayConfig
from gateway.token import mint
from plumbing import db
from plumbing.config import LogConfig, OrderConfig, UpstreamConfig
from plumbing.server import Service, ShopServer

SECRET = "0123456789abcdef0123456789abcdef"
CUSTOMER = "C-cost"


def _jwks_server(keys: list[dict]) -> ThreadingHTTPServer:
    body = json.dumps({"keys": keys}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _claims() -> dict:
    now = int(time.time())
    return {"sub": CUSTOMER, "iat": now, "exp": now + 3600}


def _cpu_us_per_call(call: Callable[[], object], count: int, clock=time.thread_time) -> float:
    started = clock()
    for _ in range(count):
        call()
    return (clock() - started) / count * 1e6


def _median_rounds(figures: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    measured: dict[str, list[float]] = {name: [] for name in figures}
    for _ in range(rounds):
        for name, measure in figures.items():
            measured[name].append(measure())
    return {name: round(statistics.median(values), 1) for name, values in measured.items()}


@contextlib.contextmanager
def _services(folder: str):
    """Inventory, payment and order in this process, as their __main__ composes them."""
    from inventory_svc.server import SERVICE_NAME as INVENTORY
    from inventory_svc.server import InventoryServicer
    from inventory_svc.store import InventoryStore
    from order_svc.__main__ import build_saga
    from order_svc.server import SERVICE_NAME as ORDER
    from order_svc.server import OrderServicer
    from order_svc.store import OrderStore
    from payment_svc.server import SERVICE_NAME as PAYMENT
    from payment_svc.server import PaymentServicer
    from payment_svc.store import PaymentStore
    from shop.inventory.v1 import inventory_pb2_grpc
    from shop.order.v1 import order_pb2_grpc
    from shop.payment.v1 import payment_pb2_grpc

    engines = [db.open_engine(f"sqlite:///{folder}/{name}.db") for name in ("inventory", "payment", "order")]
    servers = []

    def serve(service: Service) -> str:
        server = ShopServer([service], 0, host="127.0.0.1").start()
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    inventory = serve(
        Service(INVENTORY, InventoryServicer(InventoryStore(engines[0])), inventory_pb2_grpc.add_InventoryServiceServicer_to_server)
    )
    payment = serve(
        Service(PAYMENT, PaymentServicer(PaymentStore(engines[1])), payment_pb2_grpc.add_PaymentServiceServicer_to_server)
    )
    saga, channels = build_saga(OrderConfig(inventory_addr=inventory, payment_addr=payment), OrderStore(engines[2]))
    order = serve(Service(ORDER, OrderServicer(saga), order_pb2_grpc.add_OrderServiceServicer_to_server))
    try:
        yield UpstreamConfig(inventory, payment, order, timeout_s=10.0)
    finally:
        for server in servers:
            server.stop(0)
        saga.close()
        for channel in channels:
            channel.close()
        for engine in engines:
            engine.dispose()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=2000, help="requests (and verifications) per round")
    parser.add_argument("--rounds", type=int, default=5)


def main(args: argparse.Namespace) -> int:

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = [
        {**jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa"},
        {**jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec"},
    ]
    server = _jwks_server(keys)
    jwks_url = f"http://127.0.0.1:{server.server_address[1]}/jwks"
    hs256 = AuthConfig("jwt", hs256_secret=SECRET)
    from_jwks = AuthConfig("jwt", jwks_url=jwks_url)
    tokens = {
        "HS256": (TokenVerifier(hs256), mint(hs256, CUSTOMER, [], 3600)),
        "RS256": (TokenVerifier(from_jwks), jwt.encode(_claims(), rsa_key, "RS256", {"kid": "rsa"})),
        "ES256": (TokenVerifier(from_jwks), jwt.encode(_claims(), ec_key, "ES256", {"kid": "ec"})),
    }
    for verifier, token in tokens.values():
        verifier.verify(token)  # the one JWKS fetch, outside the measurement
    full = _median_rounds(
        # The full check, as for a token seen for the first time.
        {kind: (lambda v=v, t=t: _cpu_us_per_call(lambda: v.verify_signed(t), args.requests)) for kind, (v, t) in tokens.items()},
        args.rounds,
    )
    remembered = _median_rounds(
        {kind: (lambda v=v, t=t: _cpu_us_per_call(lambda: v.verify(t), args.requests)) for kind, (v, t) in tokens.items()},
        args.rounds,
    )
    print(json.dumps({"verify_cpu_us": {"full": full, "remembered": remembered}}), flush=True)

    with tempfile.TemporaryDirectory() as folder, _services(folder) as upstreams:

        def client(auth: AuthConfig):
            config = GatewayConfig(
                port=0, upstreams=upstreams, rate_limit="1000000000/minute", rate_limit_storage="memory://",
                rate_limit_key_prefix="cost", workers=1, threads=8, admin_token="", trusted_proxies=0,
                log=LogConfig("WARNING", "json"), auth=auth,
            )  # fmt: skip
            return create_app(config).test_client()

        modes = {
            "off": (client(AuthConfig()), {}),
            "jwt-HS256": (client(hs256), {"Authorization": f"Bearer {tokens['HS256'][1]}"}),
            "jwt-RS256": (client(from_jwks), {"Authorization": f"Bearer {tokens['RS256'][1]}"}),
        }
        placed = modes["jwt-HS256"][0].post(
            "/orders", json={"items": [{"product_id": "P001", "quantity": 1}]}, headers=modes["jwt-HS256"][1]
        )
        assert placed.status_code == 201, placed.get_json()
        path = f"/orders/{placed.get_json()['id']}"
        for test_client, headers in modes.values():
            assert test_client.get(path, headers=headers).status_code == 200

        def per_request(test_client, headers) -> float:
            return _cpu_us_per_call(lambda: test_client.get(path, headers=headers), args.requests, time.process_time)

        reads = _median_rounds(
            {mode: (lambda c=c, h=h: per_request(c, h)) for mode, (c, h) in modes.items()}, args.rounds
        )
        print(
            json.dumps(
                {
                    "read_cpu_us": reads,
                    "added_by_jwt_us": {mode: round(cpu - reads["off"], 1) for mode, cpu in reads.items() if mode != "off"},
                }
            ),
            flush=True,
        )
    server.shutdown()
    return 0
