"""Storage plumbing on SQLAlchemy Core: one engine per service database,
embedded SQLite by default, PostgreSQL when replicas share state.

SQLite runs in WAL mode with synchronous=FULL (a confirmed order survives a
power loss), a busy timeout, and BEGIN IMMEDIATE for every write transaction:
a deferred transaction's later lock upgrade fails at once, ignoring the busy
timeout. PostgreSQL runs Read Committed, which re-checks a conditional
UPDATE's WHERE after waiting for a row lock.

A database that goes away for a while (restarting, crashed, unreachable,
locked past its timeout) is a condition to retry, not a bug: read() and
write() raise it as DatabaseUnavailable (UNAVAILABLE, or DEADLINE_EXCEEDED
for a statement cut off at the deadline), and every wait on the database -
connecting, a statement, a lock - ends before the deadline of the call being
served.
"""

import contextlib
import functools
import math
import pathlib
import sqlite3
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence

import grpc
import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Connection, Engine

from plumbing.deadlines import MARGIN_S, deadline_from_remaining, deadline_var, remaining_s
from plumbing.errors import DatabaseUnavailable, database_unavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Connecting to PostgreSQL when the caller's deadline allows longer (libpq
# counts whole seconds, at least 2), or when the URL sets no connect_timeout.
POSTGRES_CONNECT_TIMEOUT_S = 5
# A connection to a host that vanished (a failover, a partition) is found
# dead within about idle + interval * count seconds, not the kernel's hours.
POSTGRES_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 2, "keepalives_count": 3}

# SQLSTATEs of a database that is away for now: connection exceptions (08),
# operator intervention (57: admin or crash shutdown, starting up), too many
# connections, and a read-only standby (a failover in progress).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "57")
_TRANSIENT_SQLSTATES = {"53300", "25006"}
# A statement cut off by the statement_timeout the caller's deadline set.
_QUERY_CANCELED = "57014"
_SQLITE_LOCK_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


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
        return _open_postgres(url, pool_size)
    raise ValueError(f"unsupported DATABASE_URL {url!r}: use sqlite:///path or postgresql://...")


# Errors


def unavailable(error: BaseException) -> DatabaseUnavailable | None:
    """What a transient database failure answers (UNAVAILABLE; DEADLINE_EXCEEDED
    for a statement cut off at the caller's deadline), or None when `error`
    is not one (a bug, a constraint: INTERNAL is right for those)."""
    if isinstance(error, DatabaseUnavailable):
        return error
    orig = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    if isinstance(orig, psycopg.Error):
        sqlstate = orig.sqlstate
        if sqlstate == _QUERY_CANCELED:
            return database_unavailable(
                "the service's database did not answer within the call's deadline", grpc.StatusCode.DEADLINE_EXCEEDED
            )
        # Without a SQLSTATE: the client's side of a failed connection
        # (refused, reset, closed, timed out, "starting up", "shutting down").
        if (
            (sqlstate is None and isinstance(orig, psycopg.OperationalError))
            or (sqlstate or "")[:2] in _TRANSIENT_SQLSTATE_CLASSES
            or sqlstate in _TRANSIENT_SQLSTATES
        ):
            return _database_away()
    if isinstance(orig, sqlite3.OperationalError) and (getattr(orig, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_LOCK_CODES:
        return _database_locked()
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return _database_away()
    return None


def describe(error: BaseException) -> str:
    """The driver's own first line about a database error, for a log line
    (not for callers: it names hosts and ports)."""
    orig = error.__cause__ if isinstance(error, DatabaseUnavailable) and error.__cause__ else error
    orig = orig.orig if isinstance(orig, sa.exc.DBAPIError) else orig
    text = str(orig).strip()
    return f"{type(orig).__name__}: {text.splitlines()[0] if text else ''}"


def _database_away() -> DatabaseUnavailable:
    return database_unavailable("the service's database is unreachable or restarting; retry shortly")


def _database_locked() -> DatabaseUnavailable:
    return database_unavailable(
        "the service's database is locked by another writer for longer than this call could wait; retry shortly"
    )


@contextlib.contextmanager
def _raising_unavailable() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        translated = unavailable(error)
        if translated is None:
            raise
        raise translated from error


def _bounded_s(default_s: float) -> float:
    """default_s, or less: a wait on the database ends in time for the
    service to answer its caller, as an outgoing call's does (MARGIN_S
    before the deadline); but a write that records an outcome within that
    margin still gets half of what is left."""
    left = remaining_s()
    if left is None:
        return default_s
    return min(default_s, max(left - MARGIN_S, left / 2))


# PostgreSQL


class _PostgresDialect(PGDialect_psycopg):
    """psycopg, with BEGIN sent by us (the driver is in autocommit mode, so
    it sends none of its own) the moment a transaction begins, carrying the
    caller's deadline as the transaction's statement_timeout in the same
    round trip. Sent at once, BEGIN also finds a pooled connection that the
    database dropped (a restart, a crash) before any statement of the
    transaction has run; _transaction() then begins again on a fresh one.
    That is pool_pre_ping's check without its round trip on every checkout."""

    supports_statement_cache = True

    def on_connect(self):
        inherited = super().on_connect()

        def on_connect(dbapi_connection):
            if inherited is not None:
                inherited(dbapi_connection)
            dbapi_connection.autocommit = True

        return on_connect

    def do_begin(self, dbapi_connection):
        timeout_s = _bounded_s(math.inf)
        if timeout_s == math.inf:
            dbapi_connection.execute("BEGIN")
        else:
            # At least 1 ms: 0 would mean no timeout at all.
            dbapi_connection.execute(f"BEGIN; SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")


sa.dialects.registry.register("postgresql.shop_psycopg", __name__, "_PostgresDialect")


def _open_postgres(url: str, pool_size: int) -> Engine:
    engine = sa.create_engine(
        sa.engine.make_url(url).set(drivername="postgresql+shop_psycopg"),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=300,
    )

    @sa.event.listens_for(engine, "do_connect")
    def bounded_connect(_dialect, _record, _cargs, cparams):
        # cparams is this attempt's own copy.
        default_s = float(cparams.get("connect_timeout", POSTGRES_CONNECT_TIMEOUT_S))
        cparams["connect_timeout"] = max(2, int(_bounded_s(default_s)))
        for name, value in POSTGRES_KEEPALIVES.items():
            cparams.setdefault(name, value)

    return engine


# SQLite


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
        driver = connection.connection.driver_connection
        if immediate:
            # Another process's write lock is waited for no longer than the caller's deadline allows.
            busy_ms = max(1, int(_bounded_s(SQLITE_BUSY_TIMEOUT_MS / 1000) * 1000))
            driver.execute(f"PRAGMA busy_timeout={busy_ms}")
            driver.execute("BEGIN IMMEDIATE")
        else:
            driver.execute("BEGIN")

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
        # The turn is waited for no longer than the caller's deadline allows.
        if not self.lock.acquire(timeout=max(0.0, _bounded_s(SQLITE_BUSY_TIMEOUT_MS / 1000))):
            raise _database_locked()
        try:
            if self.connection is None or self.connection.invalidated:
                self.close()
                self.connection = self.engine.connect().execution_options(sqlite_immediate=True)
            with self.connection.begin():
                yield self.connection
        finally:
            self.lock.release()

    def close(self) -> None:
        with self.lock:
            if self.connection is not None:
                self.connection.close()
                self.connection = None


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, _SqliteWriter] = weakref.WeakKeyDictionary()


# Transactions


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on error;
    DatabaseUnavailable when the database is away."""
    writer = _SQLITE_WRITERS.get(engine)
    with _raising_unavailable():
        if writer is not None:
            with writer.transaction() as conn:
                yield conn
        else:
            with _transaction(engine) as conn:
                yield conn


@contextlib.contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: one consistent snapshot; DatabaseUnavailable
    when the database is away."""
    with _raising_unavailable(), _transaction(engine) as conn:
        yield conn


@contextlib.contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    """A pooled connection in a new transaction. A connection found dead at
    BEGIN (a database restart closed it) has run nothing: SQLAlchemy then
    invalidates it and every pooled connection older than it, and the
    transaction begins once more, on a fresh connection."""
    for attempt in (1, 2):
        conn = engine.connect()
        try:
            transaction = conn.begin()
        except BaseException as error:
            conn.close()
            if attempt == 1 and isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
                continue
            raise
        break
    with conn, transaction:
        yield conn


def ping(engine: Engine, timeout_s: float) -> None:
    """One round trip to the database, given timeout_s for all of it;
    raises DatabaseUnavailable if it does not answer."""
    token = deadline_var.set(deadline_from_remaining(timeout_s))
    try:
        with read(engine) as conn:
            conn.exec_driver_sql("SELECT 1")
    finally:
        deadline_var.reset(token)


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
