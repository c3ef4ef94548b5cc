"""The channel factory: every call gets a deadline (clamped to the caller's
own), carries x-request-id, is counted in metrics, and is spread round-robin
over every address behind the target; with TLS on, the channel presents this
process's certificate and checks the server's."""

import json
import time
import uuid

import grpc

from plumbing import metrics, tracing
from plumbing import tls as mtls
from plumbing.config import TlsConfig
from plumbing.deadlines import timeout_for_call
from plumbing.logs import request_id_var
from plumbing.targets import list_host, resolve_target

# A replica that restarts (a rollout, a crash) is reconnected within about
# this long, and until then round_robin sends its share to the others.
INITIAL_RECONNECT_BACKOFF_MS = 250
MAX_RECONNECT_BACKOFF_MS = 2_000


def service_config(service: str, retry_methods: tuple[str, ...] = ()) -> str:
    """round_robin, plus transparent retries on UNAVAILABLE for idempotent reads.
    Writes are never retried here: the saga's idempotency keys make their
    retries safe, at the level that knows what a retry means."""
    config: dict = {
        "loadBalancingConfig": [{"round_robin": {}}],
        # Client-side health checking: a replica that turns NOT_SERVING (its
        # SIGTERM drain) gets no new calls while it finishes the ones it has.
        "healthCheckConfig": {"serviceName": service},
    }
    if retry_methods:
        config["methodConfig"] = [
            {
                "name": [{"service": service, "method": m} for m in retry_methods],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


class DeadlineAlreadyExceeded(grpc.RpcError, grpc.Call):
    """Raised instead of making a call when the caller's deadline leaves no
    time for it (grpc would read a zero timeout as none at all)."""

    def code(self):
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self):
        return "deadline exceeded before the call was made"

    def initial_metadata(self):
        return None

    def trailing_metadata(self):
        return None

    def is_active(self):
        return False

    def time_remaining(self):
        return 0

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


class ObservedUnaryUnary(grpc.UnaryUnaryMultiCallable):
    """One method's calls, each given a deadline (its own or the default,
    never past the caller's), x-request-id, and counted in metrics.

    A thin wrapper rather than a grpc client interceptor: grpc's interceptor
    machinery builds a new multi-callable, call details and an outcome object
    on every call, which cost more than the rest of this bookkeeping."""

    def __init__(self, inner: grpc.UnaryUnaryMultiCallable, full_method: str, default_timeout_s: float):
        self._inner = inner
        self._service, self._method = metrics.split_method(full_method)
        self._default_timeout_s = default_timeout_s
        self._seconds = metrics.labelled(metrics.client_handling_seconds, "unary", self._service, self._method)

    def _prepare(self, timeout, metadata, credentials, wait_for_ready, compression) -> dict:
        """The inner call's keyword arguments: its deadline, x-request-id
        in its metadata, the rest as given."""
        metadata = list(metadata or ())
        if not any(k == "x-request-id" for k, _ in metadata):
            metadata.append(("x-request-id", request_id_var.get() or uuid.uuid4().hex))
        timeout = timeout_for_call(timeout, self._default_timeout_s)
        if timeout <= 0:
            raise DeadlineAlreadyExceeded()
        return {
            "timeout": timeout,
            "metadata": metadata,
            "credentials": credentials,
            "wait_for_ready": wait_for_ready,
            "compression": compression,
        }

    def _record(self, code: grpc.StatusCode, started: float) -> None:
        metrics.labelled(metrics.client_handled, "unary", self._service, self._method, code.name).inc()
        self._seconds.observe(time.perf_counter() - started)

    def _failed(self, error: Exception, started: float) -> grpc.StatusCode:
        code = error.code() if isinstance(error, grpc.RpcError) and hasattr(error, "code") else None
        # Not an RPC's outcome (a request that would not serialize): grpc's own name for it.
        code = code or grpc.StatusCode.INTERNAL
        self._record(code, started)
        return code

    def _blocking(self, invoke, request, timeout, metadata, credentials, wait_for_ready, compression):
        """A blocking call (`invoke` is the inner __call__ or with_call), observed."""
        options = self._prepare(timeout, metadata, credentials, wait_for_ready, compression)
        span = None
        if tracing.enabled:
            span = tracing.start_client_span(
                f"{self._service}/{self._method}",
                options["metadata"],
                {"rpc.system": "grpc", "rpc.service": self._service, "rpc.method": self._method},
            )
        started = time.perf_counter()
        try:
            result = invoke(request, **options)
        except Exception as error:
            code = self._failed(error, started)
            if span is not None:
                tracing.end_client_span(span, code.name, failed=True)
            raise
        self._record(grpc.StatusCode.OK, started)
        if span is not None:
            tracing.end_client_span(span, "OK", failed=False)
        return result

    def __call__(self, request, timeout=None, metadata=None, credentials=None, wait_for_ready=None, compression=None):
        return self._blocking(self._inner, request, timeout, metadata, credentials, wait_for_ready, compression)

    def with_call(
        self, request, timeout=None, metadata=None, credentials=None, wait_for_ready=None, compression=None
    ):
        return self._blocking(
            self._inner.with_call, request, timeout, metadata, credentials, wait_for_ready, compression
        )

    def future(self, request, timeout=None, metadata=None, credentials=None, wait_for_ready=None, compression=None):
        options = self._prepare(timeout, metadata, credentials, wait_for_ready, compression)
        started = time.perf_counter()
        future = self._inner.future(request, **options)
        future.add_done_callback(lambda done: self._record(done.code(), started))
        return future


class ObservedChannel(grpc.Channel):
    """A channel whose unary calls are ObservedUnaryUnary (the only kind the
    shop makes); streaming calls pass through as they are."""

    def __init__(self, channel: grpc.Channel, default_timeout_s: float):
        self._channel = channel
        self._default_timeout_s = default_timeout_s

    def unary_unary(self, method, *args, **kwargs):
        return ObservedUnaryUnary(self._channel.unary_unary(method, *args, **kwargs), method, self._default_timeout_s)

    def unary_stream(self, method, *args, **kwargs):
        return self._channel.unary_stream(method, *args, **kwargs)

    def stream_unary(self, method, *args, **kwargs):
        return self._channel.stream_unary(method, *args, **kwargs)

    def stream_stream(self, method, *args, **kwargs):
        return self._channel.stream_stream(method, *args, **kwargs)

    def subscribe(self, callback, try_to_connect=False):
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback):
        self._channel.unsubscribe(callback)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self._channel.close()
        return False


# Connections of their own: by default grpc shares them among every channel
# of the process with the same target, so a new channel to a server that
# took over an address (a restart, a reused port) would inherit an old
# channel's reconnect backoff and fail its first calls fast with UNAVAILABLE.
_OWN_CONNECTIONS = ("grpc.use_local_subchannel_pool", 1)


def dial(address: str, tls: TlsConfig | None, options=()) -> grpc.Channel:
    """A plain grpc channel to `address`: mutual TLS with `tls`, else plaintext."""
    options = [*options, _OWN_CONNECTIONS]
    if tls is None:
        return grpc.insecure_channel(resolve_target(address), options=options)
    host = list_host(address)
    if host is not None:
        # The list is resolved to addresses: check each server's certificate
        # against the name it was given by.
        options.append(("grpc.ssl_target_name_override", host))
    return grpc.secure_channel(resolve_target(address), mtls.channel_credentials(tls), options=options)


def open_channel(
    address: str,
    service: str,
    default_timeout_s: float,
    retry_methods: tuple[str, ...] = (),
    tls: TlsConfig | None = None,
) -> grpc.Channel:
    """A channel to `service` (its full name) at `address`, ready for stubs."""
    channel = dial(
        address,
        tls,
        options=[
            ("grpc.service_config", service_config(service, retry_methods)),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # After a long outage the default backoff (up to 120 s) would keep
            # failing calls fast long after the backend is back; orders must
            # settle within 30 s of it answering again.
            ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ],
    )
    return ObservedChannel(channel, default_timeout_s)
