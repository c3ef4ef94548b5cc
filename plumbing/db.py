"""Storage plumbing on SQLAlchemy Core: one engine per service database,
embedded SQLite by default, PostgreSQL when replicas share state.

Tables, statements and migrations (plumbing/migrations.py) are SQLAlchemy Core; the stores' reads and
writes (db.read, db.write) run those statements on the driver's own
connection, each compiled once (plumbing/statements.py), because SQLAlchemy's
per-execution work cost ten times the statements on the hot paths.

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
import logging
import math
import os
import sqlite3
import weakref
from collections.abc import Iterator

import grpc
import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Engine

from plumbing import deadlines
from plumbing.database_url import usable_url
from plumbing.deadlines import deadline_from_remaining, deadline_var, remaining_s
from plumbing.errors import DatabaseUnavailable, database_unavailable
from plumbing.sqlite_writer import CommitFailed, SqliteWriter, WriterBusy, is_file_error
from plumbing.statements import Plans, Tx

log = logging.getLogger("plumbing.db")

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
# A lock waited for past the lock_timeout set just inside it: locked, not slow.
_LOCK_NOT_AVAILABLE = "55P03"
# How much sooner than the statement a wait for a lock gives up.
LOCK_TIMEOUT_MARGIN_MS = 100
_SQLITE_LOCK_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def open_engine(url: str, pool_size: int = 10) -> Engine:
    url = usable_url(url)
    if url.startswith("sqlite"):
        return _open_sqlite(url, pool_size)
    return _open_postgres(url, pool_size)


# Errors


def unavailable(error: BaseException) -> DatabaseUnavailable | None:
    """What a transient database failure answers (UNAVAILABLE; DEADLINE_EXCEEDED
    for a statement cut off at the caller's deadline), or None when `error`
    is not one (a bug, a constraint: INTERNAL is right for those)."""
    if isinstance(error, DatabaseUnavailable):
        return error
    if isinstance(error, CommitFailed):
        # The group COMMIT that held this write failed in another turn: its cause says how.
        error = error.__cause__
    orig = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    if isinstance(orig, psycopg.Error):
        sqlstate = orig.sqlstate
        if sqlstate == _QUERY_CANCELED:
            return database_unavailable(
                "the service's database did not answer within the call's deadline", grpc.StatusCode.DEADLINE_EXCEEDED
            )
        if sqlstate == _LOCK_NOT_AVAILABLE:
            return _database_locked()
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
    if is_file_error(orig):
        return _database_inaccessible()
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


def _database_inaccessible() -> DatabaseUnavailable:
    return database_unavailable("the service's database cannot be opened or written; retry shortly")


def _database_locked() -> DatabaseUnavailable:
    return database_unavailable(
        "the service's database is locked by another writer for longer than this call could wait; retry shortly"
    )


@contextlib.contextmanager
def raising_unavailable() -> Iterator[None]:
    """A transient database failure inside, raised as DatabaseUnavailable."""
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
    return min(default_s, max(left - deadlines.MARGIN_S, left / 2))


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
        _begin_postgres(dbapi_connection)


def _begin_postgres(dbapi_connection) -> None:
    timeout_s = _bounded_s(math.inf)
    if timeout_s == math.inf:
        dbapi_connection.execute("BEGIN")
    else:
        # At least 1 ms: 0 would mean no timeout at all. A wait for a lock
        # gives up a little sooner, so a database locked past what the call
        # can wait answers UNAVAILABLE (locked), not DEADLINE_EXCEEDED (slow).
        statement_ms = max(1, int(timeout_s * 1000))
        lock_ms = max(1, statement_ms - LOCK_TIMEOUT_MARGIN_MS)
        dbapi_connection.execute(
            f"BEGIN; SET LOCAL statement_timeout = {statement_ms}; SET LOCAL lock_timeout = {lock_ms}"
        )


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
        _begin_sqlite(driver, immediate)

    @sa.event.listens_for(engine, "engine_disposed")
    def on_dispose(_engine):
        _database(engine).writer.close()

    return engine


def _begin_sqlite_write(driver_connection) -> None:
    _begin_sqlite(driver_connection, immediate=True)


def _begin_sqlite(driver_connection, immediate: bool) -> None:
    if immediate:
        # Another process's write lock is waited for no longer than the caller's deadline allows.
        busy_ms = max(1, int(_bounded_s(SQLITE_BUSY_TIMEOUT_MS / 1000) * 1000))
        driver_connection.execute(f"PRAGMA busy_timeout={busy_ms}")
        driver_connection.execute("BEGIN IMMEDIATE")
    else:
        driver_connection.execute("BEGIN")


class _Database:
    """Per engine: its statements' plans, and on SQLite the one write connection."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self.plans = Plans(engine.dialect)
        self.writer = SqliteWriter(engine, self.plans) if self.sqlite else None


_DATABASES: weakref.WeakKeyDictionary[Engine, _Database] = weakref.WeakKeyDictionary()


def _database(engine: Engine) -> _Database:
    database = _DATABASES.get(engine)
    if database is None:
        database = _DATABASES.setdefault(engine, _Database(engine))
    return database


# Transactions


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Tx]:
    """A write transaction: durable when the block ends, rolled back if it
    raises; DatabaseUnavailable when the database is away. On SQLite it is
    a turn of the process's one write connection (plumbing/sqlite_writer.py),
    committed with the turns queued behind it."""
    database = _database(engine)
    with raising_unavailable():
        if database.writer is None:
            with _transaction(engine, database) as tx:
                yield tx
            return
        try:
            # The turn is waited for no longer than the caller's deadline allows.
            with database.writer.turn(
                max(0.0, _bounded_s(SQLITE_BUSY_TIMEOUT_MS / 1000)), _begin_sqlite_write
            ) as tx:
                yield tx
        except WriterBusy:
            raise _database_locked() from None


@contextlib.contextmanager
def read(engine: Engine) -> Iterator[Tx]:
    """A read-only transaction: one consistent snapshot; DatabaseUnavailable
    when the database is away."""
    database = _database(engine)
    with raising_unavailable(), _transaction(engine, database) as tx:
        yield tx


@contextlib.contextmanager
def _transaction(engine: Engine, database: "_Database") -> Iterator[Tx]:
    """A pooled connection in a new transaction. A PostgreSQL connection
    found dead at BEGIN (a database restart closed it) has run nothing: it
    and the pooled connections beside it are dropped, and the transaction
    begins once more, on a fresh connection."""
    for attempt in (1, 2):
        connection = engine.raw_connection()
        driver = connection.driver_connection
        try:
            if database.sqlite:
                _begin_sqlite(driver, immediate=False)
            else:
                _begin_postgres(driver)
        except BaseException as error:
            if attempt == 1 and not database.sqlite and isinstance(error, psycopg.OperationalError):
                connection.invalidate(error)
                # The database restarted: every pooled connection is as dead.
                engine.dispose()
                continue
            connection.close()
            raise
        break
    try:
        with _committed(database, driver) as tx:
            yield tx
    except BaseException as error:
        if unavailable(error) is not None:
            connection.invalidate(error)
        raise
    finally:
        connection.close()


@contextlib.contextmanager
def _committed(database: "_Database", driver_connection) -> Iterator[Tx]:
    """The transaction begun on `driver_connection`, committed when the block
    ends, rolled back if it raises. (Both drivers leave transactions to us:
    SQLite's with isolation_level None, psycopg's in autocommit mode.)"""
    tx = Tx(database.plans, driver_connection)
    try:
        try:
            yield tx
        finally:
            tx.close()
    except BaseException:
        with contextlib.suppress(Exception):
            driver_connection.execute("ROLLBACK")
        raise
    driver_connection.execute("COMMIT")


def ping(engine: Engine, timeout_s: float) -> None:
    """One round trip to the database, given timeout_s for all of it;
    raises DatabaseUnavailable if it does not answer."""
    token = deadline_var.set(deadline_from_remaining(timeout_s))
    try:
        with read(engine) as tx:
            tx.execute(_SELECT_1)
    finally:
        deadline_var.reset(token)
    database = _database(engine)
    if database.sqlite and not _writable(engine.url.database):
        database.writer.reopen()
        raise _database_inaccessible()


def _writable(path: str) -> bool:
    """A SQLite file answers reads when it may not be written (SQLite opens
    it read-only), so the probe asks the file system too: the database and
    its WAL and shared-memory files, those that exist."""
    return all(
        os.access(name, os.W_OK) for name in (path, f"{path}-wal", f"{path}-shm") if os.path.exists(name)
    )


_SELECT_1 = sa.text("SELECT 1")


def insert_if_absent(conn: Tx, table: sa.Table, values: dict) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: True if this call inserted the row.

    The building block of idempotent writes: whoever inserts the row owns the
    work; a repeat, or a concurrent duplicate on another replica, finds it.
    (RETURNING rather than rowcount, which psycopg reports as -1 here.)
    """
    return insert_returning_key(conn, table, values) is not None


def insert_returning_key(conn: Tx, table: sa.Table, values: dict) -> sa.Row | None:
    """insert_if_absent, answering the inserted row's primary key (None if
    the row was there already)."""
    return conn.execute(_insert_if_absent(conn.dialect.name, table), values).first()


@functools.cache
def _insert_if_absent(dialect_name: str, table: sa.Table) -> sa.Insert:
    # Built once per table: the columns come from each call's parameters, and
    # SQLAlchemy's compiled cache keys on them.
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
