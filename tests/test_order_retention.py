"""Idempotency keys are kept IDEMPOTENCY_KEY_TTL_H (at least 24 h), then
forgotten in batches, safely with several replicas; the orders stay. On
SQLite and PostgreSQL."""

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from order_svc import store as order_store
from order_svc.saga import OrderSaga
from order_svc.store import OrderStore, orders
from plumbing import db, migrations
from plumbing.config import ConfigError, OrderConfig
from plumbing.timestamps import utc_now
from shop.order.v1 import order_pb2 as pb
from tests.test_order_placement import place

DAY = dt.timedelta(hours=24)


def placed_with_key(shop, key: str, customer_id: str = "C1") -> str:
    return place(shop.orders(), customer_id=customer_id, metadata=[("idempotency-key", key)]).id


def age(shop, order_id: str, by: dt.timedelta) -> None:
    """Make an order placed `by` ago."""
    engine = db.open_engine(shop.urls["order"])
    try:
        with engine.begin() as conn:
            conn.execute(orders.update().where(orders.c.id == order_id).values(created_at=utc_now() - by))
    finally:
        engine.dispose()


def saga_on(shop, **settings) -> tuple[OrderSaga, sa.Engine]:
    engine = db.open_engine(shop.urls["order"])
    config = OrderConfig(inventory_addr="unused:1", payment_addr="unused:1", **settings)
    return OrderSaga(OrderStore(engine), None, None, config), engine


def test_keys_past_the_retention_are_forgotten_and_their_orders_kept(shop):
    old = placed_with_key(shop, "old-key")
    recent = placed_with_key(shop, "recent-key")
    age(shop, old, DAY + dt.timedelta(minutes=1))
    age(shop, recent, DAY - dt.timedelta(minutes=1))
    saga, engine = saga_on(shop)
    try:
        assert saga.recovery.forget_expired_idempotency_keys() == 1
        assert saga.recovery.forget_expired_idempotency_keys() == 0
    finally:
        saga.close()
        engine.dispose()

    # The order stays; its key no longer names it, so a retry is a new order.
    assert shop.orders().GetOrder(pb.GetOrderRequest(order_id=old), timeout=10).status == pb.CONFIRMED
    assert placed_with_key(shop, "old-key") != old
    assert placed_with_key(shop, "recent-key") == recent


def test_the_retention_is_read_from_the_environment_and_is_at_least_24_hours(monkeypatch):
    monkeypatch.setenv("IDEMPOTENCY_KEY_TTL_H", "48")
    assert OrderConfig.from_env().idempotency_key_ttl_h == 48
    monkeypatch.delenv("IDEMPOTENCY_KEY_TTL_H")
    assert OrderConfig.from_env().idempotency_key_ttl_h == 24
    monkeypatch.setenv("IDEMPOTENCY_KEY_TTL_H", "12")
    with pytest.raises(ConfigError, match="IDEMPOTENCY_KEY_TTL_H"):
        OrderConfig.from_env()


def test_a_longer_retention_keeps_keys_longer(shop):
    order_id = placed_with_key(shop, "kept-key")
    age(shop, order_id, DAY + dt.timedelta(hours=1))
    saga, engine = saga_on(shop, idempotency_key_ttl_h=48)
    try:
        assert saga.recovery.forget_expired_idempotency_keys() == 0
        assert saga.recovery.forget_expired_idempotency_keys(now=utc_now() + DAY) == 1
    finally:
        saga.close()
        engine.dispose()


def test_keys_are_forgotten_in_batches_by_replicas_side_by_side(shop):
    expired = [placed_with_key(shop, f"batch-{n}", customer_id=f"C{n}") for n in range(7)]
    for order_id in expired:
        age(shop, order_id, 2 * DAY)
    replicas = [saga_on(shop) for _ in range(2)]
    counts: list[int] = []
    lock = threading.Lock()

    def purge(saga):
        while True:
            forgotten = saga.recovery.forget_expired_idempotency_keys(batch=2)
            with lock:
                counts.append(forgotten)
            if forgotten < 2:
                return

    threads = [threading.Thread(target=purge, args=(saga,)) for saga, _ in replicas]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for saga, engine in replicas:
            saga.close()
            engine.dispose()
    assert sum(counts) == 7 and max(counts) <= 2
    engine = db.open_engine(shop.urls["order"])
    try:
        with db.read(engine) as conn:
            keys = conn.execute(sa.select(orders.c.idempotency_key).where(orders.c.id.in_(expired))).scalars()
    finally:
        engine.dispose()
    assert keys == [None] * 7


def test_an_order_database_from_before_the_retention_gets_its_index(database_url):
    engine = db.open_engine(database_url("order"))
    try:
        migrations.migrate(engine, order_store.metadata, order_store.MIGRATIONS[:1])
        with engine.begin() as conn:
            conn.execute(sa.text("DROP INDEX orders_keyed_by_time"))
        OrderStore(engine).migrate()
        with engine.connect() as conn:
            names = {index["name"] for index in sa.inspect(conn).get_indexes("orders")}
        assert "orders_keyed_by_time" in names
    finally:
        engine.dispose()
