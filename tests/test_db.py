"""plumbing.db: transactions on the driver's connection, SQLite's single writer."""

import sqlite3
import threading

import pytest
import sqlalchemy as sa

from plumbing import db

metadata = sa.MetaData()
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)


@pytest.fixture
def engine(tmp_path):
    engine = db.open_engine(f"sqlite:///{tmp_path}/db.sqlite")
    db.migrate(engine, metadata, (lambda conn: metadata.create_all(conn),))
    yield engine
    engine.dispose()


def _value(engine) -> int:
    with db.read(engine) as conn:
        return conn.execute(sa.select(counters.c.value).where(counters.c.name == "n")).scalar_one()


def test_sqlite_writes_share_one_connection_and_commit_each_transaction(engine):
    drivers = set()
    for value in range(3):
        with db.write(engine) as conn:
            drivers.add(id(conn.driver_connection))
            conn.execute(sa.delete(counters))
            conn.execute(counters.insert().values(name="n", value=value))
    assert len(drivers) == 1
    assert _value(engine) == 2
    # Committed for other connections too: WAL, durable.
    with engine.connect() as other:
        assert other.execute(sa.select(counters.c.value)).scalar_one() == 2


def test_a_failed_write_rolls_back_and_the_next_one_proceeds(engine):
    with db.write(engine) as conn:
        conn.execute(counters.insert().values(name="n", value=1))
    with pytest.raises(RuntimeError), db.write(engine) as conn:
        conn.execute(counters.update().values(value=99))
        raise RuntimeError("refused half-way")
    assert _value(engine) == 1
    with db.write(engine) as conn:
        conn.execute(counters.update().values(value=counters.c.value + 1))
    assert _value(engine) == 2


def test_a_nested_write_fails_at_once_instead_of_hanging(engine):
    with db.write(engine):
        with pytest.raises(RuntimeError, match="do not nest"):
            with db.write(engine):
                pass


def test_concurrent_writers_of_one_process_lose_no_update(engine):
    with db.write(engine) as conn:
        conn.execute(counters.insert().values(name="n", value=0))

    def add(times):
        for _ in range(times):
            with db.write(engine) as conn:
                current = conn.execute(sa.select(counters.c.value)).scalar_one()
                conn.execute(counters.update().values(value=current + 1))

    threads = [threading.Thread(target=add, args=(50,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _value(engine) == 400


def test_dispose_closes_the_writer_connection_and_writes_reopen_it(engine):
    with db.write(engine) as conn:
        conn.execute(counters.insert().values(name="n", value=1))
        first = conn.driver_connection
    engine.dispose()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        first.execute("SELECT 1")
    with db.write(engine) as conn:
        assert conn.driver_connection is not first
        conn.execute(counters.update().values(value=5))
    assert _value(engine) == 5
