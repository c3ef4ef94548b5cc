"""What every gRPC server refuses or keeps to itself: oversized requests,
reflection when switched off, interfaces it was not asked to listen on."""

import logging
import os
import socket
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2

from plumbing.config import ConfigError, ServerConfig
from plumbing.metrics import start_metrics_server
from plumbing.server import MAX_REQUEST_BYTES, Service, ShopServer
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc
from tests.harness import ROOT
from tests.test_plumbing import health_of

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
        return True
    except ConnectionRefusedError:
        return False


def test_a_request_over_the_size_limit_is_refused_unread(inventory):
    stub = inventory_pb2_grpc.InventoryServiceStub(inventory.channel())
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetProduct(pb.GetProductRequest(product_id="P" * (MAX_REQUEST_BYTES + 1)), timeout=5)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Just under the limit is read (and answered as the bad id it is).
    with pytest.raises(grpc.RpcError) as invalid:
        stub.GetProduct(pb.GetProductRequest(product_id="P" * (MAX_REQUEST_BYTES - 16)), timeout=5)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bytes_that_are_not_the_methods_message_are_invalid_argument_and_log_no_traceback(inventory, caplog):
    # grpc itself answers INTERNAL ("Exception deserializing request!") and logs an ERROR.
    get_product = inventory.channel().unary_unary("/shop.inventory.v1.InventoryService/GetProduct")
    with pytest.raises(grpc.RpcError) as refused:
        get_product(b"\xff\xff\xff\xff", timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in refused.value.details()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_reflection_is_on_by_default_and_grpc_reflection_0_turns_it_off(monkeypatch):
    assert ServerConfig.from_env("inventory").reflection is True
    monkeypatch.setenv("GRPC_REFLECTION", "0")
    config = ServerConfig.from_env("inventory")
    assert config.reflection is False
    monkeypatch.setenv("GRPC_REFLECTION", "maybe")
    with pytest.raises(ConfigError, match="GRPC_REFLECTION"):
        ServerConfig.from_env("inventory")

    service = Service("shop.inventory.v1.InventoryService", object(), lambda servicer, server: None)
    server = ShopServer([service], 0, host="127.0.0.1", reflection_enabled=config.reflection).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reflection = channel.stream_stream(REFLECTION)
            with pytest.raises(grpc.RpcError) as missing:
                list(reflection(iter([b""]), timeout=5))
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


def test_grpc_and_metrics_listen_only_where_their_bind_hosts_say(monkeypatch):
    assert (ServerConfig.from_env("order").bind_host, ServerConfig.from_env("order").metrics_bind_host) == (
        "::",
        "0.0.0.0",
    )
    monkeypatch.setenv("GRPC_BIND_HOST", "127.0.0.1")
    monkeypatch.setenv("METRICS_BIND_HOST", "127.0.0.1")
    config = ServerConfig.from_env("order")
    service = Service("shop.order.v1.OrderService", object(), lambda servicer, server: None)
    everywhere = ShopServer([service], 0).start()
    loopback = ShopServer([service], 0, host=config.bind_host).start()
    metrics_server, metrics_thread = start_metrics_server(0, config.metrics_bind_host)
    try:
        # 127.0.0.2 is this machine too: only a server on every interface answers there.
        assert reachable("127.0.0.2", everywhere.port)
        assert reachable("127.0.0.1", loopback.port) and not reachable("127.0.0.2", loopback.port)
        metrics_port = metrics_server.server_address[1]
        assert reachable("127.0.0.1", metrics_port) and not reachable("127.0.0.2", metrics_port)
    finally:
        everywhere.stop(0)
        loopback.stop(0)
        metrics_server.shutdown()
        metrics_thread.join()


@pytest.mark.parametrize(
    ("host", "said"),
    [
        ("999.1.1.1", "'999.1.1.1' is not a host name or address (GRPC_BIND_HOST?)"),
        # TEST-NET-1: an address, but none of this machine's.
        ("192.0.2.1", "Cannot assign requested address (GRPC_BIND_HOST?)"),
    ],
)
def test_a_bind_host_that_is_not_this_machines_is_refused_saying_so(host, said):
    service = Service("shop.order.v1.OrderService", object(), lambda servicer, server: None)
    with pytest.raises(ConfigError) as refused:
        ShopServer([service], 0, host=host).start()
    assert str(refused.value).endswith(said)


def test_a_port_in_use_is_refused_saying_so():
    service = Service("shop.order.v1.OrderService", object(), lambda servicer, server: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError) as refused:
            ShopServer([service], taken.getsockname()[1], host="127.0.0.1").start()
    assert str(refused.value).endswith("it is in use (another shop may be running?)")


def test_an_ipv6_bind_host_is_accepted_bare_or_in_brackets(monkeypatch):
    monkeypatch.setenv("GRPC_BIND_HOST", "[::1]")
    assert ServerConfig.from_env("order").bind_host == "::1"
    service = Service("shop.order.v1.OrderService", object(), lambda servicer, server: None)
    server = ShopServer([service], 0, host="::1").start()
    try:
        with grpc.insecure_channel(f"[::1]:{server.port}") as channel:
            assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


@pytest.mark.parametrize(
    ("module", "setting", "said"),
    [
        ("inventory_svc", {"GRPC_WORKERS": "many"}, "inventory: refusing to start: GRPC_WORKERS='many' is not an integer"),
        ("payment_svc", {"DRAIN_DELAY_S": "soon"}, "payment: refusing to start: DRAIN_DELAY_S='soon' is not a number"),
        ("order_svc", {"RECOVERY_INTERVAL_S": "0"}, "order: refusing to start: RECOVERY_INTERVAL_S=0.0 must be at least 0.01"),
        ("inventory_svc", {"INVENTORY_PORT": "70000"}, "inventory: refusing to start: INVENTORY_PORT='70000' must be a port number, 1-65535 (or 0: any free port)"),
        ("payment_svc", {"METRICS_PORT": "99999"}, "payment: refusing to start: METRICS_PORT='99999' must be a port number, 1-65535 (or 0: any free port)"),
        ("order_svc", {"RECOVERY_INTERVAL_S": "nan"}, "order: refusing to start: RECOVERY_INTERVAL_S='nan' is not a finite number"),
        ("payment_svc", {"SHUTDOWN_GRACE_S": "inf"}, "payment: refusing to start: SHUTDOWN_GRACE_S='inf' is not a finite number"),
        ("inventory_svc", {"DATABASE_URL": "mysql://shop:s3cret@db/shop"}, "inventory: refusing to start: DATABASE_URL: a mysql:// URL is not supported: use sqlite:///path/to.db or postgresql://"),
        ("inventory_svc", {"DATA_DIR": "/proc/nonexist"}, "inventory: refusing to start: DATA_DIR='/proc/nonexist': the folder '/proc/nonexist' cannot be created or written"),
        ("order_svc", {"INVENTORY_ADDR": "localhost:99999"}, "order: refusing to start: INVENTORY_ADDR='localhost:99999': port '99999' must be a port number, 1-65535"),
    ],
)  # fmt: skip
def test_a_bad_setting_stops_a_service_with_one_line_naming_it(module, setting, said, tmp_path):
    # Any free ports: a setting that is not refused must not take the shop's.
    ports = {f"{module.removesuffix('_svc').upper()}_PORT": "0", "METRICS_PORT": "0"}
    env = {**os.environ, "DATA_DIR": str(tmp_path), **ports, **setting}
    done = subprocess.run([sys.executable, "-m", module], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert said in done.stderr
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
