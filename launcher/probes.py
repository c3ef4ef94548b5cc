"""What make run, the tests and the benchmarks ask a process of the shop
before and while it runs: is its port free, does it answer, is it ready."""

import socket
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launcher.plan import SERVICE_NAMES, ProcessSpec
from plumbing.channels import dial
from plumbing.targets import bind_error


def port_taken(port: int) -> bool:
    """Whether something listens on `port` (on any address), as a process
    binding it would find."""
    return bind_error(socket.AF_INET, ("0.0.0.0", port)) is not None


def ports_in_use(specs: list[ProcessSpec]) -> list[str]:
    """One line for each port a process would bind that is taken."""
    return [
        f"port {port} ({spec.name} {what}, {setting})"
        for spec in specs
        for port, setting, what in spec.listens_on()
        if port and port_taken(port)
    ]


def probe(spec: ProcessSpec, timeout_s: float = 1.0) -> str | None:
    """What a process answers: its health status for a gRPC service
    ("SERVING", "NOT_SERVING", ...), "SERVING" for a gateway whose /health
    says ok; None if it does not answer (yet)."""
    if spec.module == "gateway":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{spec.port}/health", timeout=timeout_s) as response:
                return "SERVING" if response.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None
    with dial(spec.grpc_address, spec.tls) as channel:
        try:
            # The service's own name (its readiness): "" only says the process is alive.
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAMES[spec.module])
            answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
        except grpc.RpcError:
            return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def serving(spec: ProcessSpec) -> bool:
    """The readiness a stack waits for by default: a service SERVING under
    its own name (its database prepared), a gateway whose /health says ok."""
    return probe(spec) == "SERVING"


def shop_ready(gateway_port: int) -> bool:
    """Whether the gateway's /ready says every backend is SERVING."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/ready", timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
