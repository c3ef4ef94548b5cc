"""Tracing: one order is one trace across the gateway and the three services,
continuing the client's traceparent, with the saga's steps and the trace ids
in the log lines; and with tracing off, nothing of it."""

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from plumbing import tracing
from plumbing.logs import JsonFormatter
from tests.test_gateway_support import make_client, running_backends

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
ORDER = {"customer_id": "C-trace", "items": [{"product_id": "P001", "quantity": 1}]}


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


@pytest.fixture
def shop(sqlite_url):
    with running_backends(sqlite_url, real_orders=True) as running:
        yield make_client(running)


class FormattedNow(logging.Handler):
    """Formats each INFO record as it is logged, inside the span that logged it."""

    def __init__(self):
        super().__init__()
        self.lines: list[dict] = []

    def emit(self, record):
        self.lines.append(json.loads(JsonFormatter("test").format(record)))

    def __enter__(self):
        root = logging.getLogger()
        self.saved_level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self)
        return self

    def __exit__(self, *_exc):
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self.saved_level)


def test_one_order_is_one_trace_from_the_clients_traceparent_through_every_service(spans, shop):
    answer = shop.post("/orders", json=ORDER, headers={"traceparent": TRACEPARENT})
    assert answer.status_code == 201, answer.get_data(as_text=True)
    finished = spans.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}
    by_id = {s.context.span_id: s for s in finished}

    def parent(span):
        return by_id.get(span.parent.span_id) if span.parent else None

    (request,) = [s for s in finished if s.name == "POST /orders"]
    assert request.kind == SpanKind.SERVER
    assert format(request.parent.span_id, "016x") == CLIENT_SPAN_ID
    assert request.attributes["http.route"] == "/orders"
    assert request.attributes["http.response.status_code"] == 201

    def call(method: str, service: str, caller) -> None:
        """The client span of `method` under `caller`, and its server span under it."""
        full = f"shop.{service}.v1.{service.capitalize()}Service/{method}"
        (client,) = [s for s in finished if s.name == full and s.kind == SpanKind.CLIENT]
        (server,) = [s for s in finished if s.name == full and s.kind == SpanKind.SERVER]
        assert parent(client) is caller, f"{full}: client span under {parent(client).name}"
        assert parent(server) is client
        assert server.attributes["rpc.grpc.status_code"] == "OK"
        return server

    create = call("CreateOrder", "order", request)
    steps = {s.name: s for s in finished if s.name.startswith("saga.")}
    assert {"saga.reserve", "saga.charge", "saga.confirm"} <= set(steps)
    order_id = answer.get_json()["id"]
    for step in ("saga.reserve", "saga.charge"):
        assert parent(steps[step]) is create
        assert steps[step].attributes["order_id"] == order_id
    call("Reserve", "inventory", steps["saga.reserve"])
    call("Charge", "payment", steps["saga.charge"])
    assert parent(steps["saga.confirm"]) is steps["saga.charge"]


def test_probes_and_scrapes_are_not_traced(spans, shop):
    # /ready asks every backend's health too: no span there either.
    for path in ("/health", "/ready", "/metrics"):
        assert shop.get(path).status_code == 200
    assert not spans.get_finished_spans()
    assert shop.get("/inventory").status_code == 200
    assert [s.name for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER] == [
        "shop.inventory.v1.InventoryService/ListProducts",
        "GET /inventory",
    ]


def test_without_a_traceparent_the_gateway_starts_the_trace(spans, shop):
    assert shop.get("/inventory/P001").status_code == 200
    (request,) = [s for s in spans.get_finished_spans() if s.name == "GET /inventory/{product_id}"]
    assert request.parent is None
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER and s is not request]
    assert server.context.trace_id == request.context.trace_id


def test_log_lines_of_a_traced_request_carry_its_trace_and_span_ids(spans, shop):
    with FormattedNow() as capture:
        shop.post("/orders", json=ORDER, headers={"traceparent": TRACEPARENT})
    (access,) = [line for line in capture.lines if line["logger"] == "gateway.access"]
    (confirmed,) = [line for line in capture.lines if line["message"] == "order confirmed"]
    for line in (access, confirmed):
        assert line["trace_id"] == TRACE_ID
        assert len(line["span_id"]) == 16
    by_id = {format(s.context.span_id, "016x"): s for s in spans.get_finished_spans()}
    assert by_id[access["span_id"]].name == "POST /orders"
    assert by_id[confirmed["span_id"]].name == "saga.confirm"


def test_tracing_off_leaves_log_lines_without_trace_fields(shop):
    assert not tracing.enabled
    with FormattedNow() as capture:
        shop.post("/orders", json=ORDER, headers={"traceparent": TRACEPARENT})
    assert capture.lines
    assert not [line for line in capture.lines if "trace_id" in line or "span_id" in line]


def test_without_an_otlp_endpoint_tracing_stays_off(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.setup_tracing("order") is False
    assert not tracing.enabled


def test_an_otlp_protocol_we_do_not_speak_is_refused(monkeypatch):
    from plumbing.config import ConfigError

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.setup_tracing("order")
    assert not tracing.enabled
