"""The gRPC backends behind the gateway, with channels opened lazily in the
process that uses them.

granian forks its workers: a channel opened before the fork would be shared
by processes that cannot share it, so nothing here connects at import time
or in create_app, and a process that finds channels from another pid (its
parent's) opens its own.
"""

import os
import threading
import time
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plumbing.channels import dial, open_channel
from plumbing.config import TlsConfig, UpstreamConfig
from plumbing.health import REASON_KEY
from shop.inventory.v1 import inventory_pb2
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2

# The services the gateway fronts, by backend name. A new annotated RPC on
# one of them needs no gateway code; a new service needs one line here.
SERVICES: dict[str, ServiceDescriptor] = {
    "inventory": inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
    "payment": payment_pb2.DESCRIPTOR.services_by_name["PaymentService"],
    "order": order_pb2.DESCRIPTOR.services_by_name["OrderService"],
}

SERVING, NOT_SERVING, UNREACHABLE = "SERVING", "NOT_SERVING", "UNREACHABLE"


@dataclass(frozen=True)
class Backend:
    name: str
    service: ServiceDescriptor
    address: str
    # Methods that only read, so the channel may retry them on UNAVAILABLE.
    read_methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthReport:
    backend: Backend
    status: str
    latency_ms: float
    detail: str = ""

    def to_json(self) -> dict:
        report = {
            "service": self.backend.service.full_name,
            "address": self.backend.address,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.detail:
            report["detail"] = self.detail
        return report


def shop_backends(
    config: UpstreamConfig, read_methods: dict[str, tuple[str, ...]] | None = None
) -> list[Backend]:
    addresses = {
        "inventory": config.inventory_addr,
        "payment": config.payment_addr,
        "order": config.order_addr,
    }
    read_methods = read_methods or {}
    return [
        Backend(name, service, addresses[name], read_methods.get(name, ()))
        for name, service in SERVICES.items()
    ]


class Upstreams:
    """Channels and calls to every backend, for the current process."""

    def __init__(self, backends: list[Backend], timeout_s: float, tls: TlsConfig | None = None):
        self.backends = {backend.name: backend for backend in backends}
        self.timeout_s = timeout_s
        # The gateway's own certificate for every channel (None: plaintext).
        self.tls = tls
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._channels: dict[str, grpc.Channel] = {}
        self._callables: dict[tuple[str, str], grpc.UnaryUnaryMultiCallable] = {}
        self._probes: dict[str, grpc.Channel] = {}

    def channel(self, backend_name: str) -> grpc.Channel:
        with self._lock:
            self._forget_inherited()
            channel = self._channels.get(backend_name)
            if channel is None:
                backend = self.backends[backend_name]
                channel = open_channel(
                    backend.address, backend.service.full_name, self.timeout_s, backend.read_methods, self.tls
                )
                self._channels[backend_name] = channel
            return channel

    def probe_channel(self, backend_name: str) -> grpc.Channel:
        """A channel for health checks alone, without the call channel's
        client-side health checking: through that one a NOT_SERVING backend
        has no connection to ask, and would read as UNREACHABLE."""
        with self._lock:
            self._forget_inherited()
            channel = self._probes.get(backend_name)
            if channel is None:
                channel = dial(self.backends[backend_name].address, self.tls)
                self._probes[backend_name] = channel
            return channel

    def _forget_inherited(self) -> None:
        if self._pid != os.getpid():
            # Inherited across a fork: unusable here, and not ours to close.
            self._channels, self._callables, self._probes, self._pid = {}, {}, {}, os.getpid()

    def opened(self) -> list[str]:
        """The backends this process has a channel to."""
        with self._lock:
            return sorted(self._channels) if self._pid == os.getpid() else []

    def call(
        self,
        backend_name: str,
        full_method: str,
        request: Message,
        response_class: type[Message],
        metadata: list[tuple[str, str]],
    ) -> Message:
        """One unary call with the gateway's deadline; raises grpc.RpcError."""
        key = (backend_name, full_method)
        # Once a method has its callable, calls take no lock (every request
        # thread would queue on it); a fork's child finds none of its own.
        callable_ = self._callables.get(key) if self._pid == os.getpid() else None
        if callable_ is None:
            channel = self.channel(backend_name)
            callable_ = channel.unary_unary(
                full_method,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=response_class.FromString,
            )
            self._callables[key] = callable_
        return callable_(request, timeout=self.timeout_s, metadata=metadata)

    def check_health(self, backend_name: str, timeout_s: float, metadata=()) -> HealthReport:
        """The standard grpc.health.v1 Check for the backend's service."""
        backend = self.backends[backend_name]
        stub = health_pb2_grpc.HealthStub(self.probe_channel(backend_name))
        started = time.perf_counter()
        try:
            response, call = stub.Check.with_call(
                health_pb2.HealthCheckRequest(service=backend.service.full_name),
                timeout=timeout_s,
                metadata=list(metadata),
            )
        except grpc.RpcError as error:
            elapsed = (time.perf_counter() - started) * 1000
            if error.code() == grpc.StatusCode.NOT_FOUND:
                # Up, but not serving this service.
                return HealthReport(backend, NOT_SERVING, elapsed, "service unknown to the server")
            return HealthReport(backend, UNREACHABLE, elapsed, error.code().name)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return HealthReport(backend, SERVING, elapsed)
        # Why, when the backend says (such as "waiting for its database").
        reason = dict(call.trailing_metadata() or ()).get(REASON_KEY, "")
        return HealthReport(backend, NOT_SERVING, elapsed, reason)

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for channel in (*self._channels.values(), *self._probes.values()):
                    channel.close()
            self._channels, self._callables, self._probes = {}, {}, {}
