"""Tracing with OpenTelemetry, configured by its standard environment
variables: on when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is
set, exporting over OTLP (OTEL_EXPORTER_OTLP_PROTOCOL grpc or http/protobuf,
the default), as OTEL_SERVICE_NAME (by default the process's own name).

One order is one trace: the gateway continues a client's W3C traceparent (or
starts a trace), and every gRPC call carries the context on as metadata. The
spans are made here by hand - the gateway's request, each gRPC client and
server call, the saga's steps - because the generic instrumentation wraps
every call in machinery that costs more than the call's own bookkeeping.

Off (no endpoint), every hook below is one boolean test: no provider, no
exporter, no context objects, and log lines without trace fields.
"""

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

# Set once by setup_tracing; read on every request.
enabled = False
_provider = None
_tracer: trace.Tracer = trace.NoOpTracer()


def exporter_protocol() -> str | None:
    """The OTLP protocol spans go out with, or None when tracing is off (no
    endpoint). Raises ConfigError for a protocol we do not speak."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol not in ("grpc", "http/protobuf"):
        from plumbing.config import ConfigError

        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} must be grpc or http/protobuf")
    return protocol


def setup_tracing(service: str) -> bool:
    """Export spans when an OTLP endpoint is configured; True if it is."""
    protocol = exporter_protocol()
    if protocol is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    # The exporter reads the endpoint, headers, timeout... from the same variables.
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Global too, for any library that traces through the OpenTelemetry API.
    trace.set_tracer_provider(provider)
    use_provider(provider)
    return True


def use_provider(provider) -> None:
    """Trace into `provider` (setup_tracing's, or a test's in-memory one)."""
    global enabled, _provider, _tracer
    _provider, _tracer, enabled = provider, provider.get_tracer("shop"), True


def disable() -> None:
    global enabled, _provider, _tracer
    _provider, _tracer, enabled = None, trace.NoOpTracer(), False


def shutdown() -> None:
    """Send what is buffered (at a graceful stop)."""
    if _provider is not None:
        _provider.shutdown()


# --- spans -------------------------------------------------------------------


@contextlib.contextmanager
def step(name: str, **attributes) -> Iterator[None]:
    """A span for one piece of work inside a call (a saga step, a recovery);
    nothing at all when tracing is off."""
    if not enabled:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


def saga_step(name: str) -> Callable:
    """Decorates a method whose first argument is an order (or its id): a
    span named `name` for each call, with the order's id."""

    def decorate(method):
        @functools.wraps(method)
        def traced(self, order, *args, **kwargs):
            if not enabled:
                return method(self, order, *args, **kwargs)
            with _tracer.start_as_current_span(name, attributes={"order_id": getattr(order, "id", order)}):
                return method(self, order, *args, **kwargs)

        return traced

    return decorate


def start_server_span(name: str, carrier: dict[str, str] | None, attributes: dict | None = None):
    """The span of a call this process serves, continuing the caller's
    context from `carrier` (HTTP headers or gRPC metadata) and made current.
    Returns (span, token) for end_server_span."""
    parent = propagate.extract(carrier) if carrier else None
    span = _tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    token = context.attach(trace.set_span_in_context(span))
    return span, token


def end_server_span(span, token, error: str | None = None, **attributes) -> None:
    for key, value in attributes.items():
        span.set_attribute(key, value)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
    context.detach(token)


def start_client_span(name: str, metadata: list[tuple[str, str]], attributes: dict | None = None):
    """The span of an outgoing call, its context added to `metadata` (W3C
    traceparent, which gRPC carries as metadata)."""
    span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata.extend(carrier.items())
    return span


def end_client_span(span, code_name: str, failed: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", code_name)
    if failed:
        span.set_status(Status(StatusCode.ERROR, code_name))
    span.end()


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span, for log lines; None when
    there is none (or tracing is off)."""
    if not enabled:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
