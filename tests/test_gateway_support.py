"""What the gateway tests share (no tests here): the backends they run the
gateway against, a scriptable order service for the error rows, and checks
of the error shape.

The real inventory and payment services run in-process on port 0; the order
service is the real one when tests/harness.py has run_order, and the
scriptable one where a test needs a status the real one cannot be made to
give on cue.
"""

import contextlib
import dataclasses
import os
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from google.protobuf import timestamp_pb2

from gateway.app import create_app
from gateway.config import GatewayConfig
from launcher.stack import free_port_base
from plumbing.config import LogConfig, UpstreamConfig
from plumbing.errors import ShopError
from plumbing.server import Service, ShopServer
from shop.order.v1 import order_pb2 as order_pb
from shop.order.v1 import order_pb2_grpc
from tests import harness

# At least 32 bytes: the gateway refuses shorter admin tokens.
ADMIN_TOKEN = "test-admin-token-4f1c9a7e2b6d8035c1e9"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
ORDER_SERVICE = order_pb.DESCRIPTOR.services_by_name["OrderService"].full_name


def _timestamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


class ScriptedOrders(order_pb2_grpc.OrderServiceServicer):
    """An OrderService that answers what a test tells it to: an order, a
    ShopError, or nothing for a while. It records what each call carried."""

    def __init__(self) -> None:
        self.fail_with: ShopError | None = None
        self.delay_s = 0.0
        self.calls: list[tuple[str, object, dict[str, str]]] = []
        self.release = threading.Event()

    def _answer(self, name, request, context, order):
        self.calls.append((name, request, dict(context.invocation_metadata())))
        if self.delay_s:
            self.release.wait(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return order

    @staticmethod
    def order(order_id="ord_1", status=order_pb.CONFIRMED, customer_id="C123") -> order_pb.Order:
        return order_pb.Order(
            id=order_id,
            customer_id=customer_id,
            status=status,
            items=[order_pb.OrderItem(product_id="P001", quantity=2, unit_price_cents=1999)],
            total_cents=3998,
            currency="USD",
            payment_id="pay_1",
            created_at=_timestamp(1_795_000_000),
            updated_at=_timestamp(1_795_000_000),
        )

    def CreateOrder(self, request, context):
        return self._answer("CreateOrder", request, context, self.order(customer_id=request.customer_id))

    def ListOrders(self, request, context):
        return self._answer(
            "ListOrders", request, context, order_pb.ListOrdersResponse(orders=[self.order()])
        )

    def GetOrder(self, request, context):
        return self._answer("GetOrder", request, context, self.order(request.order_id))

    def CancelOrder(self, request, context):
        return self._answer("CancelOrder", request, context, self.order(request.order_id, order_pb.CANCELLED))


@dataclasses.dataclass
class Backends:
    inventory: str
    payment: str
    order: str
    scripted_orders: ScriptedOrders | None = None


def start_scripted_orders() -> tuple[ShopServer, ScriptedOrders]:
    servicer = ScriptedOrders()
    service = Service(ORDER_SERVICE, servicer, order_pb2_grpc.add_OrderServiceServicer_to_server)
    server = ShopServer([service], 0, workers=8, host="127.0.0.1").start()
    return server, servicer


def unused_address() -> str:
    """An address where nothing listens (below the ephemeral range, where no
    port-0 server of another test lands)."""
    return f"127.0.0.1:{free_port_base()}"


@contextlib.contextmanager
def running_backends(sqlite_url, real_orders: bool = False) -> Iterator[Backends]:
    """Inventory and payment for real, and the order service: scripted, or
    the real one (which needs harness.run_order)."""
    inventory = harness.run_inventory(sqlite_url("inventory"))
    payment = harness.run_payment(sqlite_url("payment"))
    stops = [inventory.stop, payment.stop]
    try:
        if real_orders:
            order = harness.run_order(sqlite_url("order"), inventory.address, payment.address)
            stops.append(order.stop)
            yield Backends(inventory.address, payment.address, order.address)
        else:
            server, servicer = start_scripted_orders()
            stops.append(lambda: (servicer.release.set(), server.stop(0)))
            yield Backends(inventory.address, payment.address, f"127.0.0.1:{server.port}", servicer)
    finally:
        for stop in reversed(stops):
            stop()


def gateway_config(backends: Backends, **overrides) -> GatewayConfig:
    config = GatewayConfig(
        port=0,
        upstreams=UpstreamConfig(backends.inventory, backends.payment, backends.order, timeout_s=5.0),
        rate_limit="10000/minute",
        rate_limit_storage="memory://",
        rate_limit_key_prefix=f"test-{uuid.uuid4().hex}",
        workers=1,
        threads=8,
        admin_token=ADMIN_TOKEN,
        trusted_proxies=0,
        log=LogConfig("INFO", "json"),
    )
    return dataclasses.replace(config, **overrides)


def make_client(backends: Backends, **overrides):
    app = create_app(gateway_config(backends, **overrides))
    return app.test_client()


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response, http_status: int, status: str, reason: str) -> dict:
    """The response is the API's JSON error with these code, status and reason."""
    assert response.status_code == http_status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "request_id"}
    error = body["error"]
    assert set(error) == {"code", "status", "reason", "message", "details"}
    assert (error["code"], error["status"], error["reason"]) == (http_status, status, reason)
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    assert body["request_id"] == response.headers["X-Request-ID"]
    return error


def detail_of(error: dict, type_name: str) -> dict:
    matches = [d for d in error["details"] if d.get("@type") == f"type.googleapis.com/{type_name}"]
    assert matches, f"no {type_name} in {error['details']}"
    return matches[0]


def redis_or_skip() -> str:
    """Redis' URL; skips the test when it is not reachable, or fails it with
    REQUIRE_REDIS=1 (as .ci/run sets)."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis required but not reachable at {REDIS_URL}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    return REDIS_URL
