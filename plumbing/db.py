"""Storage plumbing on SQLAlchemy Core: one engine per service database,
embedded SQLite by default, PostgreSQL when replicas share state.

SQLite runs in WAL mode with synchronous=FULL (a confirmed order survives a
power loss), a busy timeout, and BEGIN IMMEDIATE for every write transaction:
a deferred transaction's later lock upgrade fails at once, ignoring the busy
timeout. PostgreSQL runs Read Committed, which re-checks a conditional
UPDATE's WHERE after waiting for a row lock.
"""

import contextlib
import functools
import pathlib
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalise_url(url: str) -> str:
    """postgresql://... means psycopg 3 here."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def open_engine(url: str, pool_size: int = 10) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        return _open_sqlite(url, pool_size)
    if url.startswith("postgresql+psycopg://"):
        return sa.create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=300
        )
    raise ValueError(f"unsupported DATABASE_URL {url!r}: use sqlite:///path or postgresql://...")


def _open_sqlite(url: str, pool_size: int) -> Engine:
    path = sa.engine.make_url(url).database
    if not path or path == ":memory:":
        raise ValueError("SQLite needs a file (sqlite:///path/to.db): every replica thread shares it")
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        # Take transaction control from the driver so BEGIN is ours to send.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection):
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        # Straight to the driver: a statement through SQLAlchemy here cost
        # more than the BEGIN itself, on every transaction.
        connection.connection.driver_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    _SQLITE_WRITERS[engine] = _SqliteWriter(engine)

    @sa.event.listens_for(engine, "engine_disposed")
    def on_dispose(_engine):
        _SQLITE_WRITERS[engine].close()

    return engine


class _SqliteWriter:
    """SQLite has one writer at a time, so a process keeps one connection
    for its writes and its threads queue for it here, each handed the turn
    the moment the last one commits. Left to SQLite's busy handler they would
    sleep and poll (1, 2, 5 ... 100 ms), leaving the write lock idle between
    turns; and a pool checkout and return (with its reset rollback) per write
    cost more than the write's own statements. Other processes on the same
    file still wait in the busy timeout."""

    def __init__(self, engine: Engine):
        self.engine = engine
        # Reentrant, so a nested write fails at once (the connection is in a
        # transaction already) instead of hanging.
        self.lock = threading.RLock()
        self.connection: Connection | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.lock:
            if self.connection is None or self.connection.invalidated:
                self.close()
                self.connection = self.engine.connect().execution_options(sqlite_immediate=True)
            with self.connection.begin():
                yield self.connection

    def close(self) -> None:
        with self.lock:
            if self.connection is not None:
                self.connection.close()
                self.connection = None


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, _SqliteWriter] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on error."""
    writer = _SQLITE_WRITERS.get(engine)
    if writer is not None:
        with writer.transaction() as conn:
            yield conn
        return
    with engine.connect() as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: one consistent snapshot."""
    with engine.connect() as conn, conn.begin():
        yield conn


def insert_if_absent(conn: Connection, table: sa.Table, values: dict) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: True if this call inserted the row.

    The building block of idempotent writes: whoever inserts the row owns the
    work; a repeat, or a concurrent duplicate on another replica, finds it.
    (RETURNING rather than rowcount, which psycopg reports as -1 here.)
    """
    return insert_returning_key(conn, table, values) is not None


def insert_returning_key(conn: Connection, table: sa.Table, values: dict) -> sa.Row | None:
    """insert_if_absent, answering the inserted row's primary key (None if
    the row was there already)."""
    return conn.execute(_insert_if_absent(conn.dialect.name, table), values).first()


@functools.cache
def _insert_if_absent(dialect_name: str, table: sa.Table) -> sa.Insert:
    # Built once per table: the columns come from each call's parameters, and
    # SQLAlchemy's compiled cache keys on them.
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def migrate(
    engine: Engine,
    metadata: sa.MetaData,
    migrations: Sequence[Callable[[Connection], None]],
    seed: Callable[[Connection], None] | None = None,
) -> None:
    """Apply the versioned migrations not yet applied, then the seed, under
    one lock, so replicas starting together do it once.

    Migration N is migrations[N-1]; schema_migrations records the version.
    The lock is BEGIN IMMEDIATE on SQLite and a transaction-scoped advisory
    lock on PostgreSQL (keyed by the tables' names, one per service).
    """
    versions = sa.Table(
        "schema_migrations",
        sa.MetaData(),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    with write(engine) as conn:
        if engine.dialect.name == "postgresql":
            key = zlib.crc32(",".join(sorted(metadata.tables)).encode())
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        versions.create(conn, checkfirst=True)
        applied = set(conn.execute(sa.select(versions.c.version)).scalars())
        for version, migration in enumerate(migrations, start=1):
            if version not in applied:
                migration(conn)
                conn.execute(versions.insert().values(version=version))
        if seed is not None:
            seed(conn)
