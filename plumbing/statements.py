"""SQLAlchemy Core statements run on the driver's own cursor (sqlite3,
psycopg): each compiled once per shape (Plan), with SQLAlchemy's own type
conversions, inside the transactions plumbing.db opens. SQLAlchemy's
per-execution work cost ten times the statement on the stores' hot paths."""

import logging
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.sql.compiler import Compiled as SQLCompiled

log = logging.getLogger("plumbing.db")


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
class Plan:
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
    def of(cls, statement, dialect, keys: list[str] | None, params: dict | None) -> "Plan":
        compiled = statement.compile(dialect=dialect, column_keys=keys)
        expanding = any(bind.expanding for bind in compiled.binds.values())
        named = compiled.positiontup is None
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        names = list(compiled.construct_params(params)) if named else compiled.positiontup
        binds = tuple(
            (name, by_name[name].type.dialect_impl(dialect).bind_processor(dialect) if name in by_name else None)
            for name in names
        )
        columns = list(getattr(statement, "exported_columns", ()))
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

    def __init__(self, plans: "Plans", driver_connection):
        self.dialect = plans.dialect
        self.driver_connection = driver_connection
        self._plans = plans
        self._cursor = driver_connection.cursor()

    def execute(self, statement, params: dict | list[dict] | None = None) -> Rows:
        many = isinstance(params, list)
        first = params[0] if many else params
        plan = self._plans.plan(statement, first)
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

    def close(self) -> None:
        """Done with the cursor, while the connection is still this
        transaction's: a sqlite3 cursor let go of later, by the garbage
        collector in this thread, resets its cached statement - under
        whichever thread is running that same statement by then."""
        self._cursor.close()


class Plans:
    """The plans of one database's statements: statement -> {parameter
    names -> plan}. A statement built per call drops out with it."""

    def __init__(self, dialect):
        self.dialect = dialect
        self._plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def plan(self, statement, params: dict | None) -> Plan:
        keys = tuple(params) if params else ()
        try:
            return self._plans[statement][keys]
        except KeyError:
            pass
        plan = Plan.of(statement, self.dialect, list(keys) or None, params)
        self._plans.setdefault(statement, {})[keys] = plan
        return plan
