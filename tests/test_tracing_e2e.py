"""Tracing over the real protocol: the shop started as processes, exporting
over OTLP/gRPC to a receiver this test runs, sends the spans of one order
from all four processes under one trace id."""

import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from launcher.stack import Stack, http, plan_stack

pytestmark = pytest.mark.e2e

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
# A bound, not an assertion: keeps a broken run from hanging.
WAIT_S = 30


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps (service.name, trace id, span name) of every span."""

    def __init__(self):
        self.spans: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((attributes.get("service.name"), span.trace_id.hex(), span.name))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver():
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.endpoint = f"http://127.0.0.1:{port}"
    yield servicer
    server.stop(0)


def test_one_order_reaches_the_collector_from_all_four_processes(receiver, tmp_path):
    specs = plan_stack(
        1,
        {
            "DATA_DIR": str(tmp_path / "data"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            # Export within a tenth of a second, not the default five.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    stack = Stack(specs, log_dir=str(tmp_path)).start()
    try:
        (gateway,) = stack.gateway_urls()
        status, _, order = http(
            "POST", gateway + "/orders", {"customer_id": "C-otlp", "items": [{"product_id": "P001", "quantity": 1}]},
            headers={"traceparent": TRACEPARENT},
        )  # fmt: skip
        assert status == 201, order
        # Each process exports in batches of its own: wait for every span looked for.
        expected = {
            ("gateway", "POST /orders"),
            ("order", "saga.charge"),
            ("inventory", "shop.inventory.v1.InventoryService/Reserve"),
            ("payment", "shop.payment.v1.PaymentService/Charge"),
        }
        give_up = time.monotonic() + WAIT_S
        while time.monotonic() < give_up:
            with receiver.lock:
                ours = {(service, name) for service, trace_id, name in receiver.spans if trace_id == TRACE_ID}
            if expected <= ours:
                break
            time.sleep(0.1)
        assert expected <= ours, sorted(ours)
    finally:
        stack.stop()
