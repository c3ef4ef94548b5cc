"""grpc.health.v1 as every service serves it: "" is the process's liveness
(SERVING until its shutdown begins), a service's own name its readiness
(NOT_SERVING too while it waits for its database). A Check answered
NOT_SERVING says why in trailing metadata REASON_KEY, which the gateway's
/ready and /mesh/service-status show.

The servicer is the shop's own, not grpcio-health-checking's: that one
sends a status change to each Watch stream while holding its lock, and
waits for the send on the server's event thread; a stream that closes at
that moment runs its close callback on that same thread, which needs the
lock, and both wait forever. Clients close their streams just as a service
turns NOT_SERVING (every process of `make run` stops at once, a rolling
update replaces the callers), so the service never finished its SIGTERM
drain (grpc/grpc#43403). Here statuses change under one lock and are sent
outside it, one change at a time and in order, and nothing the event thread
runs waits for a send.
"""

import threading
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REASON_KEY = "shop-not-serving-reason"
SHUTTING_DOWN = "shutting down"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# A Watch stream's sender: a response to send, or None to end the stream.
Send = Callable[[health_pb2.HealthCheckResponse | None], None]


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Check, List and Watch of every service's status; `reason` says why a
    Check is answered NOT_SERVING."""

    reason = ""

    def __init__(self):
        # Statuses and the Watch streams of each service.
        self._lock = threading.Lock()
        self._statuses = {"": SERVING}
        self._watchers: dict[str, set[Send]] = {}
        self._shutting_down = False
        # Held while statuses are sent, so they reach each stream in the
        # order they were set. Reentrant: a graceful shutdown sets them all.
        self._sending = threading.RLock()

    def Check(self, request, context):
        with self._lock:
            status = self._statuses.get(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return health_pb2.HealthCheckResponse()
        reason = self.reason
        if reason and status == NOT_SERVING:
            context.set_trailing_metadata(((REASON_KEY, reason),))
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context, send_response_callback: Send):
        # Non-blocking (below): the stream holds no thread while it is open.
        service, send = request.service, send_response_callback
        with self._sending:
            with self._lock:
                status = self._statuses.get(service, SERVICE_UNKNOWN)
                self._watchers.setdefault(service, set()).add(send)
            send(health_pb2.HealthCheckResponse(status=status))
        if not context.add_callback(lambda: self._forget(service, send)):
            self._forget(service, send)  # the stream ended already

    Watch.experimental_non_blocking = True

    def List(self, request, context):
        """Every service's status at once (grpc.health.v1's List; the
        generated base class answers UNIMPLEMENTED)."""
        with self._lock:
            statuses = dict(self._statuses)
        return health_pb2.HealthListResponse(
            statuses={service: health_pb2.HealthCheckResponse(status=status) for service, status in statuses.items()}
        )

    def _forget(self, service: str, send: Send) -> None:
        """A Watch stream closed (on the server's event thread: no waiting here)."""
        with self._lock:
            self._watchers.get(service, set()).discard(send)
        send(None)

    def set(self, service: str, status: int) -> None:
        """The status of `service` ("" for the process); ignored once the
        graceful shutdown has begun."""
        with self._sending:
            with self._lock:
                if self._shutting_down:
                    return
                self._statuses[service] = status
                watchers = list(self._watchers.get(service, ()))
            response = health_pb2.HealthCheckResponse(status=status)
            for send in watchers:
                send(response)

    def enter_graceful_shutdown(self) -> None:
        """Every status NOT_SERVING, for good."""
        with self._sending:
            with self._lock:
                services = [] if self._shutting_down else list(self._statuses)
            for service in services:
                self.set(service, NOT_SERVING)
            with self._lock:
                self._shutting_down = True
