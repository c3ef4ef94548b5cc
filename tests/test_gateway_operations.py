"""The operations routes, request ids, the access log, metrics and traffic
stats, and the gateway's configuration."""

import json
import logging
import os
import re
import threading

import pytest

from gateway.app import create_app
from gateway.config import DEFAULT_THREADS, DEFAULT_WORKERS, GatewayConfig
from gateway.metrics import histogram_quantile, traffic_stats
from gateway.operations import OPERATIONS_ROUTES
from gateway.transcoding import route_table
from gateway.upstreams import SERVICES
from plumbing.config import ConfigError
from plumbing.logs import JsonFormatter
from plumbing.readiness import WAITING_FOR_DATABASE
from plumbing.server import Service, ShopServer
from shop.order.v1 import order_pb2_grpc
from tests.test_gateway_support import (
    ORDER_SERVICE,
    ScriptedOrders,
    assert_error,
    detail_of,
    gateway_config,
    make_client,
    start_scripted_orders,
    unused_address,
)

# The one list of operations routes

OPERATIONS_PATHS = [route.path for route in OPERATIONS_ROUTES]


def test_the_operations_routes_are_the_contracts():
    # API.md, "Operations": every other test of them reads OPERATIONS_ROUTES.
    assert OPERATIONS_PATHS == [
        "/health",
        "/ready",
        "/metrics",
        "/mesh/traffic-stats",
        "/mesh/service-status",
        "/openapi.json",
    ]


def test_every_operations_route_answers_get(client):
    for path in OPERATIONS_PATHS:
        assert client.get(path).status_code == 200, path


# /health, /ready, /mesh/service-status


def test_health_is_ok_without_asking_any_backend(backends):
    backends.inventory = backends.payment = backends.order = unused_address()
    response = make_client(backends).get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize("path", OPERATIONS_PATHS)
def test_operations_routes_refuse_unknown_query_parameters_like_every_route(client, path):
    error = assert_error(client.get(path + "?verbose=1"), 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert detail_of(error, "google.rpc.BadRequest")["field_violations"] == [
        {"field": "verbose", "description": "unknown query parameter"}
    ]


def test_ready_is_200_when_every_backend_serves(client):
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert {name: b["status"] for name, b in body["backends"].items()} == {
        "inventory": "SERVING",
        "payment": "SERVING",
        "order": "SERVING",
    }


def test_ready_is_503_listing_the_backend_that_is_down(backends):
    backends.payment = unused_address()
    response = make_client(backends).get("/ready")
    assert response.status_code == 503
    body = response.get_json()
    # The report, and the error shape every non-2xx answer carries.
    assert (body["error"]["code"], body["error"]["status"], body["error"]["reason"]) == (
        503,
        "UNAVAILABLE",
        "NOT_READY",
    )
    assert "payment" in body["error"]["message"]
    assert body["status"] == "not_ready"
    assert body["backends"]["payment"]["status"] == "UNREACHABLE"
    assert body["backends"]["inventory"]["status"] == "SERVING"


def test_service_status_reports_each_backend_and_overall(backends):
    client = make_client(backends)
    body = client.get("/mesh/service-status").get_json()
    assert body["overall"] == "SERVING"
    for name, address in (
        ("inventory", backends.inventory),
        ("payment", backends.payment),
        ("order", backends.order),
    ):
        report = body["backends"][name]
        assert report["address"] == address
        assert report["status"] == "SERVING"
        assert isinstance(report["latency_ms"], int | float) and report["latency_ms"] >= 0


def test_service_status_tells_not_serving_from_unreachable(backends):
    draining, _ = start_scripted_orders()
    draining.begin_shutdown()  # health turns NOT_SERVING, the server still answers
    try:
        backends.order = f"127.0.0.1:{draining.port}"
        backends.payment = unused_address()
        response = make_client(backends).get("/mesh/service-status")
        assert response.status_code == 200
        body = response.get_json()
        assert body["backends"]["order"]["status"] == "NOT_SERVING"
        assert body["backends"]["payment"]["status"] == "UNREACHABLE"
        assert body["overall"] == "DEGRADED"
    finally:
        draining.stop(0)


def test_ready_and_service_status_name_the_backend_waiting_for_its_database(backends):
    waiting = threading.Event()  # never set: its database never answers
    servicer = ScriptedOrders()
    service = Service(ORDER_SERVICE, servicer, order_pb2_grpc.add_OrderServiceServicer_to_server)
    server = ShopServer([service], 0, workers=4, host="127.0.0.1", ready=waiting).start()
    try:
        backends.order = f"127.0.0.1:{server.port}"
        client = make_client(backends)
        ready = client.get("/ready")
        assert ready.status_code == 503
        body = ready.get_json()
        assert body["backends"]["order"]["status"] == "NOT_SERVING"
        assert body["backends"]["order"]["detail"] == WAITING_FOR_DATABASE
        assert body["error"]["message"] == f"not ready: order ({WAITING_FOR_DATABASE}) not serving"
        status = client.get("/mesh/service-status").get_json()
        assert status["backends"]["order"]["detail"] == WAITING_FOR_DATABASE
        assert "detail" not in status["backends"]["inventory"]
    finally:
        server.stop(0)


# Request ids and the access log


def test_request_id_is_generated_when_missing(client):
    response = client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_sane_request_id_is_echoed_on_success_and_error(client):
    assert (
        client.get("/inventory/P001", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    missing = client.get("/nope", headers={"X-Request-ID": "abc-456"})
    assert missing.headers["X-Request-ID"] == "abc-456"
    assert missing.get_json()["request_id"] == "abc-456"


@pytest.mark.parametrize("offered", ["x" * 129, "tab\there", "caf\u00e9"])
def test_insane_request_id_is_replaced(client, offered):
    response = client.get("/health", headers={"X-Request-ID": offered.encode("utf-8").decode("latin-1")})
    assert response.headers["X-Request-ID"] != offered
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def _access_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.access"]


def test_one_json_access_line_per_request_with_the_route_template(client, caplog):
    caplog.set_level(logging.INFO)
    client.get("/inventory/P001", headers={"X-Request-ID": "log-1"})
    (record,) = _access_lines(caplog)
    line = json.loads(JsonFormatter("gateway").format(record))
    assert line["request_id"] == "log-1"
    assert line["client_ip"] == "127.0.0.1"
    assert (line["method"], line["route"], line["status"]) == ("GET", "/inventory/{product_id}", 200)
    assert line["upstream_code"] == "OK"
    assert isinstance(line["duration_ms"], int | float)
    assert "time" in line


def test_access_line_carries_the_upstream_code_of_a_failure(client, caplog):
    caplog.set_level(logging.INFO)
    client.get("/inventory/P404")
    (record,) = _access_lines(caplog)
    assert (record.status, record.upstream_code) == (404, "NOT_FOUND")


def test_card_numbers_never_reach_the_log(client, caplog):
    caplog.set_level(logging.DEBUG)
    card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "987"}
    client.post("/orders", json={"customer_id": "C1", "card": card})
    client.post("/payment_methods", json={"card": {**card, "number": 4242424242424242}})
    client.post("/payment_methods", json={"card": card})
    text = "\n".join(JsonFormatter("gateway").format(r) for r in caplog.records)
    assert "4242424242424242" not in text
    # The CVC as a value of its own: not inside a random request id or a duration.
    assert not re.search(r"(?<![\w.])987(?![\w.])", text)
    assert len(_access_lines(caplog)) == 3


# /metrics and /mesh/traffic-stats


def _sample(metrics_text: str, name: str, **labels) -> float:
    """The value of one sample in a Prometheus exposition, 0 if absent."""
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[line.index("{") : line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_route_template_not_raw_path(client):
    before = client.get("/metrics").get_data(as_text=True)
    for product_id in ("P001", "P002", "P003"):
        assert client.get(f"/inventory/{product_id}").status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    labels = {"route": "/inventory/{product_id}", "method": "GET", "status": "200"}
    assert (
        _sample(text, "gateway_http_requests_total", **labels)
        - _sample(before, "gateway_http_requests_total", **labels)
        == 3
    )
    assert 'route="/inventory/P00' not in text
    assert (
        _sample(
            text, "gateway_http_request_duration_seconds_count", route="/inventory/{product_id}", method="GET"
        )
        >= 3
    )
    upstream = {
        "grpc_service": "shop.inventory.v1.InventoryService",
        "grpc_method": "GetProduct",
        "grpc_code": "OK",
    }
    assert (
        _sample(text, "grpc_client_handled_total", **upstream)
        - _sample(before, "grpc_client_handled_total", **upstream)
        == 3
    )


def test_unmatched_paths_share_one_route_label(client):
    client.get("/no/such/route/12345")
    text = client.get("/metrics").get_data(as_text=True)
    assert _sample(text, "gateway_http_requests_total", route="unmatched", status="404") >= 1
    assert "/no/such/route" not in text


def test_traffic_stats_count_upstream_requests_errors_and_latency(backends):
    client = make_client(backends)
    before = client.get("/mesh/traffic-stats").get_json()
    for _ in range(4):
        client.get("/inventory/P001")
    client.get("/inventory/P404")  # NOT_FOUND: an answer, not a failure of the service
    stats = client.get("/mesh/traffic-stats").get_json()
    inventory, earlier = stats["upstreams"]["inventory"], before["upstreams"]["inventory"]
    assert inventory["service"] == "shop.inventory.v1.InventoryService"
    assert inventory["requests"] - earlier["requests"] == 5
    assert inventory["errors"] - earlier["errors"] == 0
    # The counters are the process's: earlier tests in this worker may have
    # failed calls of their own, so the rate is checked against the totals.
    assert inventory["success_rate"] == round((inventory["requests"] - inventory["errors"]) / inventory["requests"], 4)
    latency = inventory["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"]
    assert latency["avg"] > 0
    assert stats["total_requests"] - before["total_requests"] == 6  # five calls and the first stats request
    assert stats["uptime_seconds"] >= 0
    assert set(stats["upstreams"]) == {"inventory", "payment", "order"}


def test_traffic_stats_count_a_backend_outage_as_errors(backends):
    backends.order = unused_address()
    client = make_client(backends)
    before = client.get("/mesh/traffic-stats").get_json()["upstreams"]["order"]
    client.get("/orders/ord_1")
    after = client.get("/mesh/traffic-stats").get_json()["upstreams"]["order"]
    assert after["errors"] - before["errors"] == 1
    assert after["codes"]["UNAVAILABLE"] >= 1
    assert after["success_rate"] < 1


def test_traffic_stats_of_an_upstream_not_called_yet_are_numbers():
    stats = traffic_stats(0.0, {"idle": "shop.idle.v1.NeverCalledService"})
    idle = stats["upstreams"]["idle"]
    assert (idle["requests"], idle["errors"], idle["success_rate"]) == (0, 0, 1.0)
    assert idle["latency_ms"] == {"avg": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}


def test_histogram_quantile_interpolates_within_the_bucket():
    buckets = [(0.01, 0.0), (0.1, 50.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.55)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.055)
    assert histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 10.0)]) == 0.1
    assert histogram_quantile(0.5, []) is None


# /openapi.json


def test_openapi_documents_every_route_and_the_operations_routes(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    documented = {(verb.upper(), path) for path, item in document["paths"].items() for verb in item}
    expected = {(b.verb, b.template) for b in route_table(SERVICES)}
    operations = {("GET", path) for path in OPERATIONS_PATHS}
    assert documented == expected | operations


def test_openapi_documents_the_503_of_ready(client):
    ready = client.get("/openapi.json").get_json()["paths"]["/ready"]["get"]["responses"]
    assert {"200", "503"} <= set(ready)


def test_openapi_shows_created_location_admin_and_integer_money(client):
    document = client.get("/openapi.json").get_json()
    create = document["paths"]["/orders"]["post"]
    assert "Location" in create["responses"]["201"]["headers"]
    assert "card" in create["description"]
    assert document["paths"]["/inventory/{product_id}"]["put"]["security"] == [{"adminToken": []}]
    product = document["components"]["schemas"]["shop.inventory.v1.Product"]
    assert product["properties"]["price_cents"] == {"type": "integer", "format": "int64"}
    order = document["components"]["schemas"]["shop.order.v1.Order"]
    assert order["properties"]["status"]["enum"][:3] == ["ORDER_STATUS_UNSPECIFIED", "PENDING", "CONFIRMED"]
    list_orders = document["paths"]["/orders"]["get"]
    query = {p["name"] for p in list_orders["parameters"] if p.get("in") == "query"}
    assert query == {"customer_id", "page_size", "page_token"}


def test_openapi_references_all_resolve(client):
    document = client.get("/openapi.json").get_json()
    refs = re.findall(r'"\$ref": "#/components/(\w+)/([^"]+)"', json.dumps(document))
    assert {kind for kind, _ in refs} == {"schemas", "headers", "parameters"}
    for kind, name in refs:
        assert name in document["components"][kind], (kind, name)


# Configuration


def test_config_defaults(monkeypatch):
    for name in ("GATEWAY_PORT", "RATE_LIMIT", "RATE_LIMIT_STORAGE", "GATEWAY_WORKERS", "GATEWAY_THREADS",
                 "ADMIN_TOKEN", "TRUSTED_PROXIES", "UPSTREAM_TIMEOUT_S", "AUTH", "AUTH_HS256_SECRET"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    config = GatewayConfig.from_env()
    assert (config.port, config.rate_limit, config.rate_limit_storage) == (30080, "100/minute", "memory://")
    assert (config.workers, config.threads, config.trusted_proxies) == (DEFAULT_WORKERS, DEFAULT_THREADS, 0)
    assert (config.admin_token, config.upstreams.timeout_s, config.max_body_bytes) == ("", 10.0, 65536)
    assert (config.auth.mode, config.auth.subject_claim) == ("off", "sub")


@pytest.mark.parametrize(
    "name, value", [("RATE_LIMIT", "lots"), ("RATE_LIMIT_STORAGE", "mongo://x"), ("GATEWAY_WORKERS", "0")]
)
def test_unusable_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        GatewayConfig.from_env()


def test_create_app_reads_the_environment(monkeypatch, backends):
    monkeypatch.setenv("INVENTORY_ADDR", backends.inventory)
    monkeypatch.setenv("ADMIN_TOKEN", "from-env-" + "7" * 32)
    client = create_app().test_client()
    assert client.get("/inventory/P001").status_code == 200
    response = client.post(
        "/inventory/P001/adjustments", json={"delta": 1}, headers={"Authorization": "Bearer from-env-" + "7" * 32}
    )
    assert response.status_code == 200


# Channels: opened lazily, in the process that uses them


def test_no_channel_is_opened_until_a_backend_is_called(backends):
    app = create_app(gateway_config(backends))
    upstreams = app.extensions["shop_gateway"].upstreams
    client = app.test_client()
    assert upstreams.opened() == []
    client.get("/health")
    assert upstreams.opened() == []
    client.get("/inventory/P001")
    assert upstreams.opened() == ["inventory"]


def test_a_forked_process_opens_its_own_channels(backends, monkeypatch):
    app = create_app(gateway_config(backends))
    upstreams = app.extensions["shop_gateway"].upstreams
    client = app.test_client()
    client.get("/inventory/P001")
    parent_channel = upstreams.channel("inventory")
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as a worker process sees it after the fork
    assert upstreams.opened() == []
    assert client.get("/inventory/P001").status_code == 200
    assert upstreams.channel("inventory") is not parent_channel


def test_options_answers_204_with_allow_and_no_body(client):
    response = client.open("/orders", method="OPTIONS")
    assert response.status_code == 204
    assert set(response.headers["Allow"].split(", ")) == {"GET", "POST", "HEAD", "OPTIONS"}
    assert response.get_data() == b""
    # The same header, in the same order, as a 405 on that path gives.
    assert response.headers["Allow"] == client.open("/orders", method="PUT").headers["Allow"]
    assert "html" not in response.headers.get("Content-Type", "")
