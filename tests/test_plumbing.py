"""The shared plumbing: health, reflection (v1 by a raw stub, v1alpha with a real grpcurl), request ids
in the logs, deadlines on every outgoing call, and the SIGTERM drain."""

import ctypes
import json
import logging
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from launcher.stack import free_port_base
from plumbing import deadlines
from plumbing.channels import open_channel
from plumbing.config import ConfigError, LogConfig
from plumbing.logs import JsonFormatter, TextFormatter, request_id_var
from plumbing.targets import resolve_target
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICE = "shop.inventory.v1.InventoryService"


def health_of(channel, service=""):
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_serves_for_the_server_and_the_service(inventory):
    channel = inventory.channel()
    assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
    assert health_of(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_health_turns_not_serving_when_shutdown_begins(inventory):
    inventory.server.begin_shutdown()
    channel = inventory.channel()
    assert health_of(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_of(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    # Calls in the drain window still work.
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    assert stub.GetProduct(pb.GetProductRequest(product_id="P001"), timeout=5).product_id == "P001"


def grpcurl(*args):
    binary = shutil.which("grpcurl") or os.path.join(os.path.dirname(sys.executable), "grpcurl")
    done = subprocess.run([binary, "-plaintext", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_grpcurl_lists_services_through_reflection(inventory):
    listed = grpcurl(inventory.address, "list").split()
    assert set(listed) >= {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }


def test_grpcurl_describes_the_v1_reflection_service_over_v1alpha(inventory):
    # grpcurl 1.8.6 (PyPI's) speaks v1alpha only: it resolves the v1 service's descriptors through it.
    out = grpcurl(inventory.address, "describe", "grpc.reflection.v1.ServerReflection")
    assert "rpc ServerReflectionInfo ( stream .grpc.reflection.v1.ServerReflectionRequest )" in out


def reflect_v1(channel, request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
    """One request to grpc.reflection.v1, by a raw stub (v1's messages are v1alpha's on the wire)."""
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (response,) = list(info(iter([request]), timeout=5))
    return response


def test_reflection_v1_lists_every_service(inventory):
    response = reflect_v1(inventory.channel(), reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in response.list_services_response.service}
    assert names == {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }


@pytest.mark.parametrize(
    "symbol, file_name",
    [
        (SERVICE, "shop/inventory/v1/inventory.proto"),
        ("grpc.health.v1.Health", "grpc_health/v1/health.proto"),
        ("grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto"),
    ],
)
def test_reflection_v1_describes_each_service(inventory, symbol, file_name):
    response = reflect_v1(inventory.channel(), reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    (described,) = [f for f in files if f.name == file_name]
    service_name = symbol.rsplit(".", 1)[1]
    assert f"{described.package}.{service_name}" == symbol
    assert service_name in [s.name for s in described.service]


@pytest.mark.parametrize(
    "method, signature",
    [
        (f"{SERVICE}.GetProduct", "rpc GetProduct ( .shop.inventory.v1.GetProductRequest )"),
        ("grpc.health.v1.Health.Check", "rpc Check ( .grpc.health.v1.HealthCheckRequest )"),
    ],
)
def test_grpcurl_describes_a_method(inventory, method, signature):
    assert signature in grpcurl(inventory.address, "describe", method)


def test_reflection_answers_not_found_for_a_symbol_that_is_nothing(inventory):
    symbol = f"{SERVICE}.NoSuchMethod"
    response = reflect_v1(inventory.channel(), reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_grpcurl_calls_get_product_with_no_proto_files(inventory):
    out = grpcurl("-d", '{"product_id":"P001"}', inventory.address, f"{SERVICE}/GetProduct")
    assert json.loads(out)["name"] == "Wireless Mouse"


def test_grpcurl_calls_health_check(inventory):
    out = grpcurl("-d", json.dumps({"service": SERVICE}), inventory.address, "grpc.health.v1.Health/Check")
    assert json.loads(out) == {"status": "SERVING"}


class RecordsDeadline(grpc.ServerInterceptor):
    """Remembers the time_remaining() each call arrived with."""

    def __init__(self):
        self.remaining = []

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None  # UNIMPLEMENTED, as without the interceptor (the channel's health watch, say)
        inner = handler.unary_unary

        def behaviour(request, context):
            self.remaining.append(context.time_remaining())
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour, handler.request_deserializer, handler.response_serializer
        )


@pytest.fixture
def recorded(inventory):
    from concurrent import futures

    recorder = RecordsDeadline()
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[recorder])
    inventory_pb2_grpc.add_InventoryServiceServicer_to_server(inventory.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield recorder, f"127.0.0.1:{port}"
    server.stop(0)


def test_a_call_made_with_no_caller_deadline_still_gets_one(recorded):
    recorder, address = recorded
    channel = open_channel(address, SERVICE, default_timeout_s=3.0)
    inventory_pb2_grpc.InventoryServiceStub(channel).GetProduct(pb.GetProductRequest(product_id="P001"))
    channel.close()
    assert 0 < recorder.remaining[0] <= 3.0


def test_an_outgoing_call_never_outlives_the_incoming_deadline(recorded):
    recorder, address = recorded
    channel = open_channel(address, SERVICE, default_timeout_s=30.0)
    token = deadlines.deadline_var.set(time.monotonic() + 1.0)
    try:
        inventory_pb2_grpc.InventoryServiceStub(channel).GetProduct(pb.GetProductRequest(product_id="P001"))
    finally:
        deadlines.deadline_var.reset(token)
        channel.close()
    # The grpc-timeout header rounds up to the next millisecond or so.
    assert 0 < recorder.remaining[0] <= 1.0 - deadlines.MARGIN_S + 0.01


def test_an_expired_incoming_deadline_fails_the_outgoing_call_at_once(recorded):
    _, address = recorded
    channel = open_channel(address, SERVICE, default_timeout_s=30.0)
    token = deadlines.deadline_var.set(time.monotonic() - 1)
    try:
        with pytest.raises(grpc.RpcError) as info:
            inventory_pb2_grpc.InventoryServiceStub(channel).GetProduct(pb.GetProductRequest(product_id="P001"))
    finally:
        deadlines.deadline_var.reset(token)
        channel.close()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_no_caller_deadline_means_none_is_propagated():
    assert deadlines.deadline_from_remaining(9e18) is None
    assert deadlines.deadline_from_remaining(None) is None


def test_a_comma_separated_address_list_becomes_a_round_robin_target():
    assert resolve_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert resolve_target(" [::1]:1, [::1]:2 ") == "ipv6:[::1]:1,[::1]:2"
    assert resolve_target("dns:///inventory:50051") == "dns:///inventory:50051"
    assert resolve_target("localhost:50051") == "localhost:50051"
    # grpc's own list forms pass through, commas and all.
    assert resolve_target("ipv4:127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"


def _health_server(port: int) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    servicer = health.HealthServicer()
    servicer.set("grpc.health.v1.Health", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


def _fails_unavailable(call, within_s: float = 5.0) -> bool:
    give_up = time.monotonic() + within_s
    while time.monotonic() < give_up:
        try:
            call()
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                return True
        time.sleep(0.05)
    return False


def test_a_new_channel_reaches_a_new_server_at_an_address_an_old_channel_lost():
    # grpc shares connections among a process's channels by default: a new
    # channel would inherit the old one's reconnect backoff and fail fast.
    old_server, port = _health_server(0)
    old = open_channel(f"127.0.0.1:{port}", "grpc.health.v1.Health", 2.0)
    check = health_pb2.HealthCheckRequest(service="grpc.health.v1.Health")
    assert health_pb2_grpc.HealthStub(old).Check(check).status == health_pb2.HealthCheckResponse.SERVING
    old_server.stop(0).wait()
    # Until the old channel has found the server gone (a call in flight at
    # the stop is CANCELLED instead); then it is in its reconnect backoff.
    assert _fails_unavailable(lambda: health_pb2_grpc.HealthStub(old).Check(check))
    new_server, _ = _health_server(port)
    new = open_channel(f"127.0.0.1:{port}", "grpc.health.v1.Health", 2.0)
    try:
        assert health_pb2_grpc.HealthStub(new).Check(check).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for channel in (old, new):
            channel.close()
        new_server.stop(0)


def _rpc_lines(inventory, level: int, call) -> list[dict]:
    lines = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(json.loads(JsonFormatter("inventory").format(record)))

    handler = Capture()
    logger = logging.getLogger("plumbing.rpc")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        call(inventory_pb2_grpc.InventoryServiceStub(inventory.channel()))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)
    return [line for line in lines if line.get("message") == "rpc"]


def test_each_rpc_logs_one_debug_line_with_the_callers_request_id(inventory):
    def get(stub):
        stub.GetProduct(pb.GetProductRequest(product_id="P001"), metadata=[("x-request-id", "req-42")], timeout=5)

    assert _rpc_lines(inventory, logging.INFO, get) == []
    (line,) = _rpc_lines(inventory, logging.DEBUG, get)
    assert (line["level"], line["grpc_method"], line["grpc_code"]) == ("DEBUG", "GetProduct", "OK")
    assert line["request_id"] == "req-42"


def test_an_rpc_that_fails_logs_its_line_at_info(inventory):
    def get_unknown(stub):
        with pytest.raises(grpc.RpcError):
            stub.GetProduct(pb.GetProductRequest(product_id="NOPE"), metadata=[("x-request-id", "req-43")], timeout=5)

    (line,) = _rpc_lines(inventory, logging.INFO, get_unknown)
    assert (line["level"], line["grpc_code"], line["request_id"]) == ("INFO", "NOT_FOUND", "req-43")


def test_text_log_lines_name_their_service():
    record = logging.makeLogRecord({"name": "plumbing.rpc", "levelname": "INFO", "msg": "rpc", "grpc_code": "OK"})
    line = TextFormatter("inventory").format(record)
    assert " INFO inventory plumbing.rpc: rpc" in line
    assert line.endswith(" grpc_code=OK")


def test_text_access_lines_carry_the_request_id_once():
    # The gateway's access line passes request_id as a field too, beside the context's.
    token = request_id_var.set("req-7")
    try:
        record = logging.makeLogRecord(
            {"name": "gateway.access", "levelname": "INFO", "msg": "request", "request_id": "req-7", "status": 200}
        )
        line = TextFormatter("gateway").format(record)
    finally:
        request_id_var.reset(token)
    assert line.count("request_id=") == 1
    assert line.endswith(": request request_id=req-7 status=200")


@pytest.mark.parametrize("offered", ["x" * 129, "two words", 'forged" level="ERROR', "../etc/passwd"])
def test_a_request_id_not_in_the_accepted_form_is_replaced_by_a_fresh_one(inventory, offered):
    def get(stub):
        stub.GetProduct(pb.GetProductRequest(product_id="P001"), metadata=[("x-request-id", offered)], timeout=5)

    (line,) = _rpc_lines(inventory, logging.DEBUG, get)
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])


def wait_until_serving(channel, within_s: float = 30) -> None:
    """Until the service answers SERVING: its port opens before its
    database is prepared, and until then it is NOT_SERVING."""
    give_up = time.monotonic() + within_s
    while health_of(channel, SERVICE) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < give_up, "the service never turned SERVING"
        time.sleep(0.05)


def test_sigterm_turns_health_not_serving_then_drains_and_exits(tmp_path):
    port, metrics_port = free_port_base(), free_port_base()
    env = dict(
        os.environ,
        INVENTORY_PORT=str(port),
        METRICS_PORT=str(metrics_port),
        DATA_DIR=str(tmp_path),
        DRAIN_DELAY_S="3",
        SHUTDOWN_GRACE_S="2",
    )
    proc = subprocess.Popen([sys.executable, "-m", "inventory_svc"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        wait_until_serving(channel)
        proc.send_signal(signal.SIGTERM)
        statuses = set()
        give_up = time.monotonic() + 20
        while time.monotonic() < give_up:
            try:
                statuses.add(health_of(channel, SERVICE))
            except grpc.RpcError:
                break
            if health_pb2.HealthCheckResponse.NOT_SERVING in statuses:
                break
            time.sleep(0.02)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
        assert proc.wait(timeout=30) == 0
        log = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.startswith("{")]
        assert [entry["message"] for entry in log][-2:] == ["shutdown requested", "stopped"]
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()


# tgkill(2): a signal to one thread of another process (Python has no call for it).
_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


@pytest.mark.skipif(_SYS_TGKILL is None or sys.platform != "linux", reason="tgkill's number is known for Linux x86_64/aarch64")
def test_a_sigterm_the_kernel_hands_to_another_thread_still_stops_the_service(tmp_path):
    # The kernel may deliver a process's SIGTERM to any thread (it did after
    # a SIGSTOP): the main thread must still come round to its handler.
    port, metrics_port = free_port_base(), free_port_base()
    env = dict(os.environ, INVENTORY_PORT=str(port), METRICS_PORT=str(metrics_port), DATA_DIR=str(tmp_path))
    env.update(DRAIN_DELAY_S="0", SHUTDOWN_GRACE_S="1")
    proc = subprocess.Popen([sys.executable, "-m", "inventory_svc"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        wait_until_serving(channel)
        other = next(int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid)
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(_SYS_TGKILL, proc.pid, other, signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
        assert proc.wait(timeout=20) == 0
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()


def test_make_run_hands_each_process_its_own_per_service_settings():
    from launcher.plan import plan

    environ = {
        "INVENTORY_DATABASE_URL": "postgresql://db/inventory",
        "ORDER_METRICS_PORT": "9913",
        "INVENTORY_PORT": "6051",
        "DATABASE_URL": "sqlite:///not-for-any-one-process.db",
        "METRICS_PORT": "1",
        "DATA_DIR": "/var/shop",
        "PAYMENT_PROCESSES": "3",
        "PROCESSES": "7",
    }
    specs = {spec.name: spec for spec in plan(environ)}
    assert specs["inventory-1"].env["DATABASE_URL"] == "postgresql://db/inventory"
    assert "DATABASE_URL" not in specs["payment-1"].env  # its own default under DATA_DIR
    assert specs["order-1"].env["METRICS_PORT"] == "9913"
    assert specs["payment-1"].env["METRICS_PORT"] == "9102"
    assert specs["gateway-1"].env["INVENTORY_ADDR"] == "localhost:6051"
    assert {spec.env["DATA_DIR"] for spec in specs.values()} == {"/var/shop"}
    assert specs["payment-1"].env["PROCESSES"] == "3"
    assert "PROCESSES" not in specs["order-1"].env


def test_make_run_tls_hands_each_process_its_own_certificate_and_one_ca(tmp_path):
    from launcher.plan import plan, tls_environ
    from plumbing.config import TlsConfig

    specs = plan(tls_environ({"DATA_DIR": str(tmp_path)}))
    identities = {
        spec.module.removesuffix("_svc"): TlsConfig.load(
            spec.env["TLS_CERT_FILE"], spec.env["TLS_KEY_FILE"], spec.env["TLS_CA_FILE"]
        ).identity
        for spec in specs
    }
    assert identities == {"gateway": "gateway", "order": "order", "inventory": "inventory", "payment": "payment"}
    assert {spec.env["TLS_CA_FILE"] for spec in specs} == {str(tmp_path / "tls" / "ca.crt")}


def test_processes_serve_one_port_share_the_database_and_stop_together(tmp_path):
    """PROCESSES=2: two copies of the service on its one port, one metrics
    port for both, and SIGTERM stops the group gracefully."""
    port, metrics_port = free_port_base(), free_port_base()
    env = dict(os.environ, INVENTORY_PORT=str(port), METRICS_PORT=str(metrics_port), DATA_DIR=str(tmp_path),
               PROCESSES="2", LOG_FORMAT="json")  # fmt: skip
    log_path = tmp_path / "group.log"
    with open(log_path, "wb") as log:
        group = subprocess.Popen([sys.executable, "-m", "inventory_svc"], cwd=ROOT, env=env, stderr=log)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        wait_until_serving(channel)
        (started,) = [json.loads(line) for line in open(log_path) if "serving as a group" in line]
        copies = started["processes"]
        assert len(copies) == 2
        # Every new connection lands on either copy (40 all on one: 2^-39).
        for _ in range(40):
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as one:
                stub = inventory_pb2_grpc.InventoryServiceStub(one)
                assert stub.GetProduct(pb.GetProductRequest(product_id="P001"), timeout=5).product_id == "P001"
        counted = {path.name for path in pathlib.Path(started["metrics_dir"]).glob("counter_*.db")}
        assert counted == {f"counter_{pid}.db" for pid in copies}
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            assert 'grpc_method="GetProduct"' in response.read().decode()
        assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
        channel.close()
        # A second shop on the same port is refused, not let in beside the group.
        intruder = subprocess.run([sys.executable, "-m", "inventory_svc"], cwd=ROOT, env=env, capture_output=True,
                                  timeout=60)  # fmt: skip
        assert intruder.returncode != 0
        assert f"cannot serve gRPC on port {port}" in intruder.stderr.decode()
        group.send_signal(signal.SIGTERM)
        assert group.wait(timeout=30) == 0
        assert not any(_alive(pid) for pid in copies)
    finally:
        if group.poll() is None:
            group.kill()


def test_a_group_restarting_on_its_port_is_not_kept_off_by_connections_in_time_wait():
    from plumbing.server import _check_port_free

    # A server that closes first leaves its side of the connection in TIME_WAIT on its port.
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("::1", port))
        accepted, _ = listener.accept()
        accepted.close()
        client.recv(1)  # the server's FIN
        client.close()
    assert any(f":{port:04X} " in line and line.split()[3] == "06" for line in open("/proc/net/tcp6"))  # TIME_WAIT
    _check_port_free(port)  # no SystemExit
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as another_program:
        another_program.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        another_program.bind(("::", port))
        another_program.listen()
        with pytest.raises(SystemExit, match=f"cannot serve gRPC on port {port}"):
            _check_port_free(port)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return not open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z")
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_a_service_stopped_by_a_burst_of_signals_still_exits(tmp_path):
    """A process group stopped twice over (make run's group and its parent
    both passing SIGTERM on) sends a service several signals at once: each
    must leave it stopping, never deadlocked in its own handler."""
    port, metrics_port = free_port_base(), free_port_base()
    env = dict(os.environ, INVENTORY_PORT=str(port), METRICS_PORT=str(metrics_port), DATA_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "inventory_svc"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        for _ in range(50):
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()


def test_a_domain_value_becomes_a_message_of_the_fields_the_proto_declares():
    from payment_svc.charges import Payment
    from plumbing.messages import to_message
    from plumbing.timestamps import utc_now
    from shop.payment.v1 import payment_pb2 as pb

    now = utc_now()
    payment = Payment("pay_1", "ord_1", 1999, "USD", "CAPTURED", "visa", "4242", "", now, now, customer_id="C-owner")
    message = to_message(pb.Payment, payment, status=pb.CAPTURED)
    assert (message.id, message.order_id, message.amount_cents, message.card_last4) == ("pay_1", "ord_1", 1999, "4242")
    assert message.status == pb.CAPTURED  # converted, not copied
    # The owner is no field of the contract's Payment: never copied, never answered.
    assert "C-owner" not in str(message)


# How Linux schedules a process (plumbing/scheduling.py), in a process of its
# own: the policy would otherwise stay with the test run's own thread.
_POLICIES = """
import os, threading
from plumbing.scheduling import schedule_as_batch
set_now = schedule_as_batch()
later = []
thread = threading.Thread(target=lambda: later.append(os.sched_getscheduler(0)))
thread.start(); thread.join()
print(set_now, os.sched_getscheduler(0) == os.SCHED_BATCH, later[0] == os.SCHED_BATCH)
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="a platform with no SCHED_BATCH policy")
@pytest.mark.parametrize(("setting", "batch"), [(None, True), ("1", True), ("0", False)])
def test_a_process_runs_as_batch_work_with_the_threads_it_starts_unless_told_not_to(setting, batch):
    env = {k: v for k, v in os.environ.items() if k != "SCHED_BATCH"}
    if setting is not None:
        env["SCHED_BATCH"] = setting
    done = subprocess.run(
        [sys.executable, "-c", _POLICIES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(batch)] * 3


def test_a_scheduling_setting_that_is_not_a_flag_refuses_the_start():
    env = dict(os.environ, SCHED_BATCH="maybe")
    done = subprocess.run(
        [sys.executable, "-m", "inventory_svc"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "inventory: refusing to start: SCHED_BATCH='maybe' must be 1 or 0"


def test_a_log_level_logging_does_not_know_refuses_the_start(monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "verbose")
    with pytest.raises(ConfigError, match="LOG_LEVEL='VERBOSE' must be DEBUG, INFO, WARNING, ERROR or CRITICAL"):
        LogConfig.from_env()
    monkeypatch.setenv("LOG_LEVEL", "warning")
    assert LogConfig.from_env().level == "WARNING"
