"""Storage plumbing on SQLAlchemy Core: one engine per service database,
embedded SQLite by default, PostgreSQL when replicas share state.

Tables, statements and migrations are SQLAlchemy Core; the stores' reads and
writes (db.read, db.write) run those statements on the driver's own
connection, each compiled once (Tx, below), because SQLAlchemy's
per-execution work cost ten times the statements on the hot paths.

SQLite runs in WAL mode with synchronous=FULL (a confirmed order survives a
power loss), a busy timeout, and BEGIN IMMEDIATE for every write transaction:
a deferred transaction's later lock upgrade fails at once, ignoring the busy
timeout. PostgreSQL runs Read Committed, which re-checks a conditional
UPDATE's WHERE after waiting for a row lock.
"""

import contextlib
import functools
import logging
import os
import pathlib
import threading
import weakref
import zlib
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.compiler import Compiled as SQLCompiled

SQLITE_BUSY_TIMEOUT_MS = 30_000

log = logging.getLogger("plumbing.db")


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

    @sa.event.listens_for(engine, "engine_disposed")
    def on_dispose(_engine):
        _database(engine).close_writer()

    return engine


class Rows:
    """A statement's rows, fetched, and its row count: the part of
    SQLAlchemy's Result the stores use."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list, rowcount: int):
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator:
        return iter(self._rows)

    def first(self):
        return self._rows[0] if self._rows else None

    def one(self):
        if len(self._rows) != 1:
            raise sa.exc.NoResultFound() if not self._rows else sa.exc.MultipleResultsFound()
        return self._rows[0]

    def all(self) -> list:
        return list(self._rows)

    def scalar_one(self):
        return self.one()[0]

    def scalars(self) -> list:
        return [row[0] for row in self._rows]


@dataclass(frozen=True)
class _Plan:
    """A statement compiled for one dialect: its SQL, how to turn the
    caller's parameters into the driver's, and its rows into named tuples
    with SQLAlchemy's own type conversions (SQLite's timestamps are text)."""

    compiled: SQLCompiled
    sql: str
    # (bind name, bind processor or None), in the driver's parameter order.
    binds: tuple[tuple[str, Callable | None], ...]
    named: bool
    # An IN (:list): its placeholders are written out for each call's list.
    expanding: bool
    row: type | None
    result_processors: tuple[Callable | None, ...] | None

    @classmethod
    def of(cls, statement, dialect, keys: list[str] | None, params: dict | None) -> "_Plan":
        compiled = statement.compile(dialect=dialect, column_keys=keys)
        expanding = any(bind.expanding for bind in compiled.binds.values())
        named = compiled.positiontup is None
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        names = list(compiled.construct_params(params)) if named else compiled.positiontup
        binds = tuple(
            (name, by_name[name].type.dialect_impl(dialect).bind_processor(dialect) if name in by_name else None)
            for name in names
        )
        columns = list(statement.exported_columns) if isinstance(statement, sa.sql.base.Executable) else []
        row = processors = None
        if columns:
            row = namedtuple("Row", [c.key for c in columns], rename=True)
            processors = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
            if not any(processors):
                processors = None
        return cls(compiled, compiled.string, binds, named, expanding, row, processors)

    def sql_and_arguments(self, params: dict | None):
        """The SQL to send and the driver's parameters for it."""
        if self.expanding:
            state = self.compiled.construct_expanded_state(params)
            processors, values = state.processors, state.parameters
            pairs = ((name, processors.get(name)) for name in (state.positiontup or values))
            arguments = [(p(values[n]) if p else values[n]) for n, p in pairs]
            return state.statement, (dict(zip(values, arguments, strict=True)) if self.named else arguments)
        values = self.compiled.construct_params(params)
        if self.named:
            return self.sql, {name: (p(values[name]) if p else values[name]) for name, p in self.binds}
        return self.sql, [p(values[name]) if p else values[name] for name, p in self.binds]

    def rows(self, cursor) -> Rows:
        if cursor.description is None:
            return Rows([], cursor.rowcount)
        fetched = cursor.fetchall()
        if self.row is None or len(cursor.description) != len(self.row._fields):
            return Rows(fetched, cursor.rowcount)
        make, processors = self.row._make, self.result_processors
        if processors is None:
            return Rows([make(r) for r in fetched], cursor.rowcount)
        return Rows(
            [make(p(v) if p else v for p, v in zip(processors, r, strict=True)) for r in fetched],
            cursor.rowcount,
        )


class Tx:
    """One transaction on the driver's own connection. Statements are
    SQLAlchemy Core, compiled once per shape and run straight on the
    driver's cursor: SQLAlchemy's per-execution and per-transaction work
    cost ten times the statement itself on these hot paths (a product read:
    228 us against 15 us)."""

    def __init__(self, database: "_Database", driver_connection):
        self.dialect = database.dialect
        self.driver_connection = driver_connection
        self._database = database
        self._cursor = driver_connection.cursor()

    def execute(self, statement, params: dict | list[dict] | None = None) -> Rows:
        many = isinstance(params, list)
        first = params[0] if many else params
        plan = self._database.plan(statement, first)
        if many:
            sql = plan.sql
            arguments = [plan.sql_and_arguments(p)[1] for p in params]
        else:
            sql, arguments = plan.sql_and_arguments(params)
        if log.isEnabledFor(logging.DEBUG):
            # As SQLAlchemy's echo would: the statement and its parameters.
            log.debug("sql", extra={"sql": sql, "parameters": arguments})
        if many:
            self._cursor.executemany(sql, arguments)
            return Rows([], self._cursor.rowcount)
        self._cursor.execute(sql, arguments)
        return plan.rows(self._cursor)


class _Database:
    """Per engine: the compiled plans, and on SQLite the one write connection."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect
        self.sqlite = engine.dialect.name == "sqlite"
        # statement -> {parameter names -> plan}; statements built per call
        # drop out with their statement.
        self._plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # SQLite has one writer at a time, so a process keeps one connection
        # for its writes and its threads queue for it here, each handed the
        # turn the moment the last one commits. Left to SQLite's busy handler
        # they would sleep and poll (1, 2, 5 ... 100 ms), leaving the write
        # lock idle between turns. Other processes on the same file still
        # wait in the busy timeout.
        self.writer_lock = threading.RLock()
        self._writer = None
        self._writer_pid = None

    def plan(self, statement, params: dict | None) -> _Plan:
        keys = tuple(params) if params else ()
        try:
            return self._plans[statement][keys]
        except KeyError:
            pass
        plan = _Plan.of(statement, self.dialect, list(keys) or None, params)
        self._plans.setdefault(statement, {})[keys] = plan
        return plan

    def writer(self):
        """The SQLite write connection (opened again after a fork or a dispose)."""
        if self._writer is None or self._writer_pid != os.getpid():
            self._writer, self._writer_pid = self.engine.raw_connection(), os.getpid()
        return self._writer

    def close_writer(self) -> None:
        with self.writer_lock:
            if self._writer is not None and self._writer_pid == os.getpid():
                # Closed for good, not handed back to the pool being disposed of.
                self._writer.invalidate()
            self._writer = None


_DATABASES: weakref.WeakKeyDictionary[Engine, _Database] = weakref.WeakKeyDictionary()


def _database(engine: Engine) -> _Database:
    database = _DATABASES.get(engine)
    if database is None:
        database = _DATABASES.setdefault(engine, _Database(engine))
    return database


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Tx]:
    """A write transaction: committed on success, rolled back on error."""
    database = _database(engine)
    if database.sqlite:
        if not database.writer_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise TimeoutError("no turn to write within the busy timeout")
        try:
            connection = database.writer().driver_connection
            if connection.in_transaction:
                # Reentrant lock, so this fails at once instead of waiting on itself.
                raise RuntimeError("a write transaction is open in this thread already: writes do not nest")
            with _transaction(database, connection, "BEGIN IMMEDIATE") as tx:
                yield tx
        finally:
            database.writer_lock.release()
        return
    with contextlib.closing(engine.raw_connection()) as connection:
        with _transaction(database, connection.driver_connection, None) as tx:
            yield tx


@contextlib.contextmanager
def read(engine: Engine) -> Iterator[Tx]:
    """A read-only transaction: one consistent snapshot."""
    database = _database(engine)
    with contextlib.closing(engine.raw_connection()) as connection:
        with _transaction(database, connection.driver_connection, "BEGIN" if database.sqlite else None) as tx:
            yield tx


@contextlib.contextmanager
def _transaction(database: _Database, driver_connection, begin: str | None) -> Iterator[Tx]:
    # SQLite's driver leaves transactions to us (isolation_level None);
    # psycopg opens one at the first statement.
    if begin:
        driver_connection.execute(begin)
    try:
        yield Tx(database, driver_connection)
    except BaseException:
        driver_connection.rollback()
        raise
    driver_connection.commit()


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
    with engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
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


def add_missing_columns(conn: Connection, table: sa.Table, *names: str) -> None:
    """ALTER TABLE ... ADD COLUMN for each named (nullable) column of `table`
    that the database's table lacks. A migration that adds columns with it
    upgrades a database made before them, and passes over a new one, whose
    first migration (create_all) made them already."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(table.name)}
    quote = conn.dialect.identifier_preparer.quote
    for name in names:
        column = table.c[name]
        if not column.nullable or column.server_default is not None:
            raise ValueError(f"{table.name}.{name}: only nullable columns without a default are added here")
        if name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(name)} {kind}"))
