"""The shop's grpc.health.v1 servicer (plumbing/health.py): Check, List and
Watch as the protocol says, and no deadlock when Watch streams close while
statuses change (grpcio-health-checking's servicer hangs there)."""

import threading
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plumbing.health import HealthServicer

SERVICE = "shop.test.v1.TestService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


@pytest.fixture
def served():
    servicer = HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, health_pb2_grpc.HealthStub(channel), port
    channel.close()
    server.stop(0).wait(5)  # bounded: a deadlocked servicer must fail its test, not hang the suite


def test_check_answers_a_known_status_and_not_found_for_an_unknown_service(served):
    servicer, stub, _ = served
    servicer.set(SERVICE, NOT_SERVING)
    assert stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status == NOT_SERVING
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Check(health_pb2.HealthCheckRequest(service="shop.test.v1.Unknown"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_answers_every_services_status(served):
    # Reflection shows List beside Check and Watch: it answers, never UNIMPLEMENTED.
    servicer, stub, _ = served
    servicer.set(SERVICE, NOT_SERVING)
    listed = stub.List(health_pb2.HealthListRequest(), timeout=5).statuses
    assert {service: response.status for service, response in listed.items()} == {"": SERVING, SERVICE: NOT_SERVING}


def test_check_says_why_a_service_is_not_serving(served):
    servicer, stub, _ = served
    servicer.set(SERVICE, NOT_SERVING)
    servicer.reason = "waiting for its database"
    _, call = stub.Check.with_call(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert ("shop-not-serving-reason", "waiting for its database") in call.trailing_metadata()


def test_watch_sends_the_status_then_every_change_in_order(served):
    servicer, stub, _ = served
    servicer.set(SERVICE, SERVING)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    assert next(stream).status == SERVING
    for status in (NOT_SERVING, SERVING, NOT_SERVING):
        servicer.set(SERVICE, status)
    assert [next(stream).status for _ in range(3)] == [NOT_SERVING, SERVING, NOT_SERVING]
    stream.cancel()


def test_watch_of_an_unknown_service_says_so_until_it_is_set(served):
    servicer, stub, _ = served
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    assert next(stream).status == SERVICE_UNKNOWN
    servicer.set(SERVICE, SERVING)
    assert next(stream).status == SERVING
    stream.cancel()


def test_graceful_shutdown_turns_everything_not_serving_for_good(served):
    servicer, stub, _ = served
    servicer.set(SERVICE, SERVING)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    assert next(stream).status == SERVING
    servicer.enter_graceful_shutdown()
    assert next(stream).status == NOT_SERVING
    servicer.set(SERVICE, SERVING)  # ignored from now on
    for service in ("", SERVICE):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == NOT_SERVING
    stream.cancel()


def _cancel_all(streams) -> None:
    for stream in streams:
        stream.cancel()


def test_watch_streams_closing_while_statuses_change_never_hang_the_servicer(served):
    # Each round, streams are cancelled by their client while the service's
    # status flips: grpcio-health-checking's servicer deadlocks within a few
    # rounds here (a send under its lock, the close callback waiting for it).
    servicer, _, port = served
    servicer.set(SERVICE, SERVING)

    def rounds():
        for _ in range(30):
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            stub = health_pb2_grpc.HealthStub(channel)
            streams = [stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE)) for _ in range(8)]
            for stream in streams:
                next(stream)
            closing = threading.Thread(target=_cancel_all, args=(streams,))
            closing.start()
            for flip in range(6):
                servicer.set(SERVICE, NOT_SERVING if flip % 2 == 0 else SERVING)
            closing.join()
            channel.close()

    worker = threading.Thread(target=rounds, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "a status change and a closing Watch stream deadlocked the health servicer"
