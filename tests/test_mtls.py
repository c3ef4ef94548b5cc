"""Mutual TLS between the processes and the caller table (API.md,
"Service-to-service TLS"), in-process, with certificates made by the test:
who is refused at the handshake, who is refused by the table, and a whole
order over mTLS."""

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from plumbing import access
from plumbing.channels import dial
from plumbing.config import ConfigError, ServerConfig, TlsConfig, UpstreamConfig
from plumbing.errors import from_rpc_error
from plumbing.server import Service, ShopServer
from scripts.certs import make_certificates
from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1 import inventory_pb2_grpc
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2 as pay
from shop.payment.v1 import payment_pb2_grpc
from tests import harness
from tests.test_gateway_support import Backends, gateway_config

SERVICES = {
    "inventory": inv.DESCRIPTOR.services_by_name["InventoryService"],
    "payment": pay.DESCRIPTOR.services_by_name["PaymentService"],
    "order": order_pb2.DESCRIPTOR.services_by_name["OrderService"],
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """The shop's CA with a certificate per process, one for a name the
    table does not know (same CA), and a gateway certificate from another CA."""
    shop = make_certificates(tmp_path_factory.mktemp("certs"))
    make_certificates(shop, names=("intruder",))
    other = make_certificates(tmp_path_factory.mktemp("other-ca"), names=("gateway",))

    def tls(name: str, directory=shop) -> TlsConfig:
        return TlsConfig.load(*(str(directory / f) for f in (f"{name}.crt", f"{name}.key", "ca.crt")))

    tls.dir, tls.other_dir = shop, other
    return tls


@pytest.fixture
def mesh(certs, sqlite_url):
    """Inventory, payment and order, each with its own certificate."""
    inventory = harness.run_inventory(sqlite_url("inventory"), wrap=harness.Faults, tls=certs("inventory"))
    payment = harness.run_payment(sqlite_url("payment"), tls=certs("payment"))
    order = harness.run_order(
        sqlite_url("order"), inventory.address, payment.address, tls=certs("order"), **harness.OrderShop.FAST
    )
    yield {"inventory": inventory, "payment": payment, "order": order}
    for running in (order, payment, inventory):
        running.stop()


def health_of(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def code_of(call, request, **kwargs) -> grpc.StatusCode:
    try:
        call(request, timeout=5, **kwargs)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def unary(channel, service, method):
    """A stub-free callable for any method of the shop's services."""
    return channel.unary_unary(
        f"/{service.full_name}/{method.name}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=lambda data: data,
    )


def test_a_plaintext_client_is_refused(mesh):
    channel = grpc.insecure_channel(mesh["inventory"].address)
    with pytest.raises(grpc.RpcError) as refused:
        health_of(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_a_client_certificate_from_another_ca_is_refused(mesh, certs):
    outsider = certs("gateway", certs.other_dir)
    # The outsider trusts the shop's CA, so only the server can be refusing.
    trusting = TlsConfig(outsider.certificate, outsider.private_key, certs("gateway").ca_certificates, "gateway")
    with pytest.raises(grpc.RpcError) as refused:
        health_of(mesh["inventory"].channel(trusting))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_checks_the_servers_name(mesh, certs):
    channel = grpc.secure_channel(
        mesh["inventory"].address,
        grpc.ssl_channel_credentials(
            certs("gateway").ca_certificates, certs("gateway").private_key, certs("gateway").certificate
        ),
        options=[("grpc.ssl_target_name_override", "bank.example")],
    )
    with pytest.raises(grpc.RpcError) as refused:
        health_of(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


@pytest.mark.parametrize(
    "service, method, request_",
    [
        ("payment", "Charge", pay.ChargeRequest()),
        ("payment", "Refund", pay.RefundRequest()),
        ("payment", "Void", pay.VoidRequest()),
        ("inventory", "Reserve", inv.ReserveRequest()),
        ("inventory", "Release", inv.ReleaseRequest()),
    ],
)
def test_the_gateway_may_not_call_saga_steps_even_with_an_invalid_request(mesh, certs, service, method, request_):
    # An empty request would be INVALID_ARGUMENT: the table answers first.
    channel = mesh[service].channel(certs("gateway"))
    descriptor = SERVICES[service]
    with pytest.raises(grpc.RpcError) as denied:
        unary(channel, descriptor, descriptor.methods_by_name[method])(request_, timeout=5)
    error = from_rpc_error(denied.value)
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    assert error.metadata == {"caller": "gateway", "method": f"{descriptor.full_name}/{method}"}


def test_the_order_service_may_reserve_charge_refund_and_read(mesh, certs):
    order = certs("order")
    inventory = inventory_pb2_grpc.InventoryServiceStub(mesh["inventory"].channel(order))
    payment = payment_pb2_grpc.PaymentServiceStub(mesh["payment"].channel(order))
    items = [inv.Item(product_id="P001", quantity=1)]
    reservation = inventory.Reserve(inv.ReserveRequest(order_id="ord_mtls", items=items), timeout=5)
    assert reservation.status == inv.RESERVED
    charge = pay.ChargeRequest(order_id="ord_mtls", amount_cents=1999, currency="USD", payment_method="tok_visa")
    assert payment.Charge(charge, timeout=5).status == pay.CAPTURED
    assert payment.Refund(pay.RefundRequest(order_id="ord_mtls"), timeout=5).status == pay.REFUNDED
    assert inventory.Release(inv.ReleaseRequest(order_id="ord_mtls"), timeout=5).status == inv.RELEASED
    # And read what the saga reads.
    assert inventory.GetProduct(inv.GetProductRequest(product_id="P001"), timeout=5).product_id == "P001"
    assert len(payment.ListPayments(pay.ListPaymentsRequest(order_id="ord_mtls"), timeout=5).payments) == 1


def test_an_unknown_identity_is_denied_everything_but_health_and_reflection(mesh, certs):
    intruder = certs("intruder")
    for name, descriptor in SERVICES.items():
        channel = mesh[name].channel(intruder)
        for method in descriptor.methods:
            request_ = message_factory.GetMessageClass(method.input_type)()
            assert code_of(unary(channel, descriptor, method), request_) == grpc.StatusCode.PERMISSION_DENIED, (
                method.full_name
            )
        assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
        reflection = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda data: data,
        )
        answers = list(reflection(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        assert descriptor.full_name.encode() in answers[0]


def test_customer_identity_metadata_is_believed_only_from_the_gateway(mesh, certs):
    subject = [("x-shop-subject", "C1")]
    read = unary(
        mesh["payment"].channel(certs("order")),
        SERVICES["payment"],
        SERVICES["payment"].methods_by_name["ListPayments"],
    )
    assert code_of(read, pay.ListPaymentsRequest(order_id="ord_1"), metadata=subject) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert code_of(read, pay.ListPaymentsRequest(order_id="ord_1")) == grpc.StatusCode.OK
    from_gateway = unary(
        mesh["payment"].channel(certs("gateway")),
        SERVICES["payment"],
        SERVICES["payment"].methods_by_name["ListPayments"],
    )
    assert code_of(from_gateway, pay.ListPaymentsRequest(order_id="ord_1"), metadata=subject) == grpc.StatusCode.OK


def test_the_service_knows_its_caller_while_it_serves(mesh, certs):
    seen = []

    def spy(request, context, method):
        seen.append((access.caller_var.get(), access.believes_identity_metadata()))
        return method(request, context)

    mesh["inventory"].servicer.rules["GetProduct"] = spy
    stub = inventory_pb2_grpc.InventoryServiceStub(mesh["inventory"].channel(certs("gateway")))
    stub.GetProduct(inv.GetProductRequest(product_id="P001"), timeout=5)
    assert seen == [("gateway", True)]
    assert access.caller_var.get() is None  # set for the call only


def test_a_whole_order_goes_through_the_gateway_over_mtls(mesh, certs):
    from gateway.app import create_app

    addresses = [mesh[name].address for name in ("inventory", "payment", "order")]
    upstreams = UpstreamConfig(*addresses, timeout_s=5.0, tls=certs("gateway"))
    client = create_app(gateway_config(Backends(*addresses), upstreams=upstreams)).test_client()
    placed = client.post("/orders", json={"customer_id": "C1", "items": [{"product_id": "P001", "quantity": 2}]})
    assert placed.status_code == 201, placed.get_json()
    order = placed.get_json()
    assert order["status"] == "CONFIRMED"
    payments = client.get(f"/payments?order_id={order['id']}").get_json()["payments"]
    assert [p["status"] for p in payments] == ["CAPTURED"]
    cancelled = client.delete(f"/orders/{order['id']}")
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "CANCELLED"
    assert client.get("/ready").status_code == 200


def test_a_comma_separated_list_is_checked_against_the_name_it_gives(mesh, certs, monkeypatch):
    # The list is resolved to addresses: without the name, no certificate
    # would match and every call would be UNAVAILABLE.
    port = mesh["inventory"].address.rpartition(":")[2]
    for listed in (f"localhost:{port},localhost:{port}", f"127.0.0.1:{port},127.0.0.1:{port}"):
        channel = dial(listed, certs("gateway"))
        assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
        channel.close()
    # Several names: no one name to check every server against.
    for name, path in (("TLS_CERT_FILE", "gateway.crt"), ("TLS_KEY_FILE", "gateway.key"), ("TLS_CA_FILE", "ca.crt")):
        monkeypatch.setenv(name, str(certs.dir / path))
    monkeypatch.setenv("INVENTORY_ADDR", f"localhost:{port},127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="INVENTORY_ADDR=.*must share one host name"):
        UpstreamConfig.from_env()
    monkeypatch.delenv("TLS_CA_FILE")
    monkeypatch.delenv("TLS_CERT_FILE")
    monkeypatch.delenv("TLS_KEY_FILE")
    assert UpstreamConfig.from_env().inventory_addr == f"localhost:{port},127.0.0.1:{port}"


def test_tls_settings_come_together_or_not_at_all(monkeypatch, certs):
    monkeypatch.setenv("TLS_CERT_FILE", str(certs.dir / "order.crt"))
    with pytest.raises(ConfigError, match="TLS_KEY_FILE and TLS_CA_FILE unset"):
        TlsConfig.from_env("order")
    monkeypatch.setenv("TLS_KEY_FILE", str(certs.dir / "order.key"))
    monkeypatch.setenv("TLS_CA_FILE", str(certs.dir / "ca.crt"))
    assert TlsConfig.from_env("order").identity == "order"
    with pytest.raises(ConfigError, match="certificate of 'order', not of 'payment'"):
        TlsConfig.from_env("payment")
    monkeypatch.setenv("TLS_KEY_FILE", str(certs.dir / "payment.key"))
    with pytest.raises(ConfigError, match="not the private key"):
        TlsConfig.from_env("order")
    monkeypatch.setenv("TLS_KEY_FILE", str(certs.dir / "order.key"))
    monkeypatch.setenv("TLS_CA_FILE", str(certs.other_dir / "ca.crt"))
    with pytest.raises(ConfigError, match="not issued by a CA"):
        TlsConfig.from_env("order")
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"):
        monkeypatch.delenv(name)
    assert TlsConfig.from_env("order") is None


def test_kubelet_probes_health_in_plaintext_on_the_health_port_and_nothing_else(certs, monkeypatch):
    monkeypatch.setenv("HEALTH_PORT", "0")
    assert ServerConfig.from_env("inventory").health_port == 0
    monkeypatch.delenv("HEALTH_PORT")
    assert ServerConfig.from_env("inventory").health_port is None

    name = SERVICES["inventory"].full_name
    service = Service(name, object(), lambda servicer, server: None)
    server = ShopServer([service], 0, host="127.0.0.1", tls=certs("inventory"), health_port=0).start()
    probe = grpc.insecure_channel(f"127.0.0.1:{server.health_port}")
    try:
        check = health_pb2_grpc.HealthStub(probe).Check
        assert check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        listing = unary(probe, SERVICES["inventory"], SERVICES["inventory"].methods_by_name["ListProducts"])
        assert code_of(listing, inv.ListProductsRequest()) == grpc.StatusCode.UNIMPLEMENTED
        server.begin_shutdown()
        # The same statuses as the TLS port: NOT_SERVING once the drain begins.
        assert check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
    finally:
        probe.close()
        server.stop(0)
