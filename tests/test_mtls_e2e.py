"""The shop as real processes over mutual TLS, as `make run TLS=1` starts it,
and what a process says at start about the caller table."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from launcher.plan import tls_environ
from launcher.stack import Stack, http, plan_stack
from tests import harness
from tests.test_gateway_support import unused_address

pytestmark = pytest.mark.e2e

TABLE_OFF = "TLS is off: the caller table is not enforced, every peer may call every RPC"


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("grpcurl") or os.path.join(os.path.dirname(sys.executable), "grpcurl")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def log_messages(path) -> list[dict]:
    with open(path) as log:
        return [json.loads(line) for line in log if line.startswith("{")]


def test_the_tour_runs_over_mtls_and_grpcurl_needs_the_certificates(tmp_path):
    environ = tls_environ({"DATA_DIR": str(tmp_path), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
    stack = Stack(plan_stack(1, environ), log_dir=str(tmp_path)).start()
    try:
        (gateway,) = stack.gateway_urls()
        status, _, order = http(
            "POST", gateway + "/orders", {"customer_id": "C123", "items": [{"product_id": "P001", "quantity": 2}]}
        )
        assert (status, order["status"]) == (201, "CONFIRMED"), order
        assert http("GET", f"{gateway}/payments?order_id={order['id']}")[2]["payments"][0]["status"] == "CAPTURED"
        assert http("DELETE", f"{gateway}/orders/{order['id']}")[2]["status"] == "CANCELLED"
        assert http("GET", gateway + "/ready")[0] == 200

        (inventory, _), = stack.replicas_of("inventory_svc")
        address = f"localhost:{inventory.port}"
        certs = tmp_path / "tls"
        flags = ["-cacert", str(certs / "ca.crt"), "-cert", str(certs / "gateway.crt"), "-key", str(certs / "gateway.key")]
        listed = grpcurl(*flags, address, "list")
        assert listed.returncode == 0, listed.stderr
        assert "shop.inventory.v1.InventoryService" in listed.stdout.split()
        product = grpcurl(*flags, "-d", '{"product_id":"P001"}', address, "shop.inventory.v1.InventoryService/GetProduct")
        assert json.loads(product.stdout)["product_id"] == "P001"
        assert grpcurl("-plaintext", address, "list").returncode != 0
        assert grpcurl("-cacert", str(certs / "ca.crt"), address, "list").returncode != 0  # no client certificate
    finally:
        stack.stop()
    for name in ("inventory-1", "payment-1", "order-1"):
        messages = log_messages(tmp_path / f"{name}.log")
        (serving,) = [m for m in messages if m["message"] == "serving"]
        assert serving["tls_identity"] == name.removesuffix("-1")
        assert not [m for m in messages if m["message"] == TABLE_OFF]


def test_with_tls_off_a_service_says_once_that_the_table_is_not_enforced(tmp_path):
    process = harness.spawn_order(
        f"sqlite:///{tmp_path}/order.db", unused_address(), unused_address(), str(tmp_path / "order.log")
    )
    try:
        messages = log_messages(process.log_path)
    finally:
        process.kill()
    (warning,) = [m for m in messages if m["message"] == TABLE_OFF]
    assert warning["level"] == "WARNING"
    (serving,) = [m for m in messages if m["message"] == "serving"]
    assert serving["tls_identity"] is None
