"""A service's readiness follows its database: it waits for it at start
(NOT_SERVING, retrying with capped backoff, one log line per attempt), and
turns NOT_SERVING while it stays unreachable, SERVING when it answers."""

import logging
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inventory_svc.server import SERVICE_NAME, InventoryServicer
from inventory_svc.store import InventoryStore
from plumbing import db, readiness
from plumbing.errors import RETRY_PUSHBACK_KEY, DatabaseUnavailable
from plumbing.health import REASON_KEY
from plumbing.readiness import WAITING_FOR_DATABASE, DatabaseReadiness
from plumbing.server import Service, ShopServer
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from tests import harness


def away() -> DatabaseUnavailable:
    return DatabaseUnavailable(grpc.StatusCode.UNAVAILABLE, "the database is away", "UNAVAILABLE")


@pytest.fixture
def quick(monkeypatch):
    """The same schedule, shrunk, so a test does not sit through seconds."""
    monkeypatch.setattr(readiness, "RETRY_INITIAL_S", 0.01)
    monkeypatch.setattr(readiness, "RETRY_MAX_S", 0.04)
    monkeypatch.setattr(readiness, "PROBE_INTERVAL_S", 0.05)
    monkeypatch.setattr(readiness, "UNREACHABLE_AFTER_S", 0.3)


def test_retries_back_off_to_at_most_two_seconds_so_a_returning_database_is_seen_within_five():
    # A database refusing connections fails an attempt at once: the next one
    # comes at most RETRY_MAX_S later.
    delays = readiness.retry_delays()
    assert [next(delays) for _ in range(8)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]


@pytest.fixture
def engine(sqlite_url):
    engine = db.open_engine(sqlite_url("inventory"))
    yield engine
    engine.dispose()


def test_preparation_is_retried_while_the_database_is_away_logging_ever_fewer_attempts(quick, caplog, engine):
    caplog.set_level(logging.INFO, logger="plumbing.readiness")
    failures = [away() for _ in range(9)]

    def prepare():
        if failures:
            raise failures.pop()

    database = DatabaseReadiness(engine, prepare)
    assert database.wait_until_prepared(threading.Event())
    assert database.prepared.is_set()
    retries = [r for r in caplog.records if r.getMessage() == "database not ready; retrying"]
    assert [r.attempt for r in retries] == [1, 2, 4, 8]
    assert all(r.retry_in_s <= readiness.RETRY_MAX_S for r in retries)
    assert "Traceback" not in caplog.text
    assert [r.attempts for r in caplog.records if r.getMessage() == "database ready"] == [10]


def test_a_sqlite_file_that_may_not_be_written_is_waited_for_at_start(quick, engine, monkeypatch):
    # SQLite would open it read-only and answer reads; the service must not
    # call itself ready until it can write.
    real_access = db.os.access
    writable = threading.Event()
    monkeypatch.setattr(db.os, "access", lambda name, mode: writable.is_set() and real_access(name, mode))
    prepared = []
    database = DatabaseReadiness(engine, lambda: prepared.append(True))
    waiting = threading.Thread(target=database.wait_until_prepared, args=(threading.Event(),))
    waiting.start()
    try:
        assert not database.prepared.wait(0.3)
        assert prepared == []
    finally:
        writable.set()
        waiting.join(timeout=5)
    assert database.prepared.is_set() and prepared == [True]


def test_a_migration_that_fails_for_another_reason_is_raised_not_retried(quick, engine):
    def prepare():
        raise RuntimeError("a bug in a migration")

    database = DatabaseReadiness(engine, prepare)
    with pytest.raises(RuntimeError):
        database.wait_until_prepared(threading.Event())
    assert not database.prepared.is_set()


def test_shutdown_ends_the_wait_for_the_database(quick, engine):
    stopping = threading.Event()

    def prepare():
        stopping.set()  # SIGTERM arrives while the database is away
        raise away()

    assert not DatabaseReadiness(engine, prepare).wait_until_prepared(stopping)


def _health(channel, service: str):
    response, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return response.status, dict(call.trailing_metadata() or ()).get(REASON_KEY, "")


def test_a_service_waiting_for_its_database_is_alive_not_ready_and_answers_unavailable(sqlite_url):
    engine = db.open_engine(sqlite_url("inventory"))
    store = InventoryStore(engine)
    ready = threading.Event()
    service = Service(SERVICE_NAME, InventoryServicer(store), inventory_pb2_grpc.add_InventoryServiceServicer_to_server)
    server = ShopServer([service], 0, workers=4, host="127.0.0.1", ready=ready).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        assert _health(channel, "") == (health_pb2.HealthCheckResponse.SERVING, "")
        assert _health(channel, SERVICE_NAME) == (health_pb2.HealthCheckResponse.NOT_SERVING, WAITING_FOR_DATABASE)
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetProduct(inventory_pb2.GetProductRequest(product_id="P001"), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "waiting for its database" in raised.value.details()
        # Another replica may be ready: the client's retry may go there (no pushback).
        assert RETRY_PUSHBACK_KEY not in dict(raised.value.trailing_metadata())

        store.migrate()
        ready.set()
        server.set_serving(True)
        assert _health(channel, SERVICE_NAME) == (health_pb2.HealthCheckResponse.SERVING, "")
        assert stub.GetProduct(inventory_pb2.GetProductRequest(product_id="P001"), timeout=5).product_id == "P001"
    finally:
        channel.close()
        server.stop(0)
        engine.dispose()


def test_health_says_shutting_down_once_the_drain_begins(sqlite_url):
    running = harness.run_inventory(sqlite_url("inventory"))
    try:
        running.server.begin_shutdown()
        assert _health(running.channel(), SERVICE_NAME) == (health_pb2.HealthCheckResponse.NOT_SERVING, "shutting down")
    finally:
        running.stop()


def test_readiness_turns_not_serving_while_the_database_is_down_and_back_when_it_answers(quick, private_postgres):
    engine = db.open_engine(private_postgres.new_database("readiness"), pool_size=2)
    changes: list[tuple[bool, str]] = []
    stopping = threading.Event()
    watcher = threading.Thread(
        target=DatabaseReadiness(engine, prepare=lambda: None).watch,
        args=(stopping, lambda serving, reason: changes.append((serving, reason))),
    )
    watcher.start()
    try:
        private_postgres.stop("immediate")
        harness.eventually(lambda: changes, what="readiness turning NOT_SERVING")
        assert changes == [(False, WAITING_FOR_DATABASE)]
        private_postgres.start()
        harness.eventually(lambda: len(changes) == 2, what="readiness turning SERVING again")
        assert changes == [(False, WAITING_FOR_DATABASE), (True, "")]
    finally:
        stopping.set()
        watcher.join()
        engine.dispose()
