"""plumbing.db: transactions on the driver's connection, SQLite's single
writer; a database that is away (locked, down, restarting) answering
DatabaseUnavailable, and no wait on it outliving the caller's deadline."""

import contextlib
import sqlite3
import threading

import grpc
import psycopg
import pytest
import sqlalchemy as sa

from plumbing import db, deadlines, migrations
from plumbing.errors import DatabaseUnavailable
from tests import harness
from tests.harness import eventually

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
    migrations.migrate(engine, metadata, (lambda conn: metadata.create_all(conn),))
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


# Group commit: turns queued behind one share its COMMIT


def _rows(engine) -> set[str]:
    # Another connection: what is committed, nothing less.
    with engine.connect() as other:
        return set(other.execute(sa.select(counters.c.name)).scalars())


def _group_behind_a_held_turn(engine, bodies):
    """One turn held open while a thread per body queues behind it, then let
    go. Answers each thread's outcome ("ok" or its error) with the rows
    committed when its write returned, and the COMMITs the writer sent."""
    writer = db._database(engine).writer
    commits, outcomes = [], {}
    holding, release = threading.Event(), threading.Event()

    def held():
        with db.write(engine) as conn:
            conn.driver_connection.set_trace_callback(lambda sql: sql == "COMMIT" and commits.append(sql))
            conn.execute(counters.insert().values(name="held", value=0))
            holding.set()
            release.wait()
        outcomes["held"] = ("ok", _rows(engine))

    def queued(name, body):
        try:
            with db.write(engine) as conn:
                body(conn, name)
            outcomes[name] = ("ok", _rows(engine))
        except Exception as error:
            outcomes[name] = (error, _rows(engine))

    threads = [threading.Thread(target=held)]
    threads[0].start()
    holding.wait()
    for name, body in bodies.items():
        threads.append(threading.Thread(target=queued, args=(name, body)))
        threads[-1].start()
    eventually(lambda: writer._queued == len(bodies))
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    return outcomes, commits


def _insert(conn, name):
    conn.execute(counters.insert().values(name=name, value=1))


def test_writes_queued_behind_one_share_its_commit_and_none_returns_before_it(engine):
    outcomes, commits = _group_behind_a_held_turn(engine, {name: _insert for name in ("a", "b", "c")})
    assert commits == ["COMMIT"]
    everything = {"held", "a", "b", "c"}
    # Each write returned durable: its row, and its group's, committed.
    assert outcomes == {name: ("ok", everything) for name in everything}


def test_a_write_that_raises_in_a_group_rolls_back_alone(engine):
    def refused(conn, name):
        _insert(conn, name)
        raise RuntimeError("refused half-way")

    outcomes, commits = _group_behind_a_held_turn(engine, {"a": _insert, "refused": refused, "c": _insert})
    assert commits == ["COMMIT"]
    assert isinstance(outcomes["refused"][0], RuntimeError)
    assert _rows(engine) == {"held", "a", "c"}
    assert outcomes["a"] == outcomes["c"] == ("ok", {"held", "a", "c"})


def test_a_group_left_open_for_a_thread_that_gave_up_is_committed_by_its_own_turn(engine):
    writer = db._database(engine).writer
    # As if a thread queued for the turn and gave up (its deadline) just as
    # this turn ended: no turn follows to commit the group.
    writer._queued += 1
    try:
        with db.write(engine) as conn:
            _insert(conn, "alone")
        assert _rows(engine) == {"alone"}
    finally:
        writer._queued -= 1


def test_a_transaction_s_cursor_is_closed_before_its_connection_passes_to_another_thread(engine):
    # Let go of later, a sqlite3 cursor resets its cached statement under
    # whichever thread runs that statement by then ("bad parameter or other
    # API misuse" in the middle of another thread's executemany).
    with db.write(engine) as written:
        written.execute(counters.insert().values(name="n", value=1))
    with db.read(engine) as read:
        read.execute(sa.select(counters.c.value))
    for tx in (written, read):
        with pytest.raises(sqlite3.ProgrammingError, match="closed cursor"):
            tx.execute(sa.select(counters.c.value))


def test_a_failed_group_commit_answers_each_of_its_writes_by_its_cause():
    from plumbing.sqlite_writer import CommitFailed

    def failed_commit(cause: Exception) -> CommitFailed:
        try:
            raise CommitFailed() from cause
        except CommitFailed as failed:
            return failed

    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
    assert isinstance(db.unavailable(failed_commit(locked)), DatabaseUnavailable)
    # Not a transient failure (a full disk, a bug): not UNAVAILABLE either.
    assert db.unavailable(failed_commit(sqlite3.DatabaseError("disk I/O error"))) is None


# A database that is away


@contextlib.contextmanager
def serving_a_call_with(timeout_s: float):
    """As the server interceptor does for a call with this much time left."""
    token = deadlines.deadline_var.set(deadlines.deadline_from_remaining(timeout_s))
    try:
        yield
    finally:
        deadlines.deadline_var.reset(token)


def test_a_write_waiting_past_its_deadline_for_another_process_s_lock_is_unavailable(engine, tmp_path):
    with harness.write_lock_held_by_another_process(f"{tmp_path}/db.sqlite"):
        with serving_a_call_with(0.5), pytest.raises(DatabaseUnavailable) as raised:
            with db.write(engine) as conn:
                conn.execute(counters.insert().values(name="n", value=1))
    assert (raised.value.code, raised.value.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    assert "locked" in raised.value.message
    # The lock gone, writes go through on the same connection.
    with db.write(engine) as conn:
        conn.execute(counters.insert().values(name="n", value=1))
    assert _value(engine) == 1


def test_a_write_queued_past_its_deadline_behind_another_of_this_process_is_unavailable(engine):
    holding, release = threading.Event(), threading.Event()

    def hold_the_writer():
        with db.write(engine):
            holding.set()
            release.wait()

    holder = threading.Thread(target=hold_the_writer)
    holder.start()
    try:
        holding.wait()
        with serving_a_call_with(0.3), pytest.raises(DatabaseUnavailable) as raised:
            with db.write(engine):
                pass
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        release.set()
        holder.join()


@pytest.mark.parametrize(
    "error, code",
    [
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), "UNAVAILABLE"),
        (psycopg.errors.CrashShutdown("terminating connection because of crash of another server process"), "UNAVAILABLE"),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), "UNAVAILABLE"),
        (psycopg.OperationalError("connection failed: Connection refused"), "UNAVAILABLE"),
        (psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"), "UNAVAILABLE"),
        (psycopg.errors.TooManyConnections("sorry, too many clients already"), "UNAVAILABLE"),
        (psycopg.errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"), "UNAVAILABLE"),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), "DEADLINE_EXCEEDED"),
        (psycopg.errors.UniqueViolation("duplicate key value"), None),
        (psycopg.errors.UndefinedTable('relation "orders" does not exist'), None),
        (ValueError("a bug"), None),
    ],
)
def test_transient_database_errors_are_retryable_statuses_and_bugs_are_not(error, code):
    wrapped = sa.exc.DBAPIError.instance("SELECT 1", None, error, psycopg.Error) if isinstance(error, psycopg.Error) else error
    for raised in {error, wrapped}:
        translated = db.unavailable(raised)
        assert (translated.code.name if translated else None) == code, raised
        if translated is not None:
            # The driver's text names hosts and ports: it goes to the log, not to callers.
            assert str(error) not in translated.message



def _sqlite_error(code: int, text: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(text)
    error.sqlite_errorcode, error.sqlite_errorname = code, "?"
    return error


@pytest.mark.parametrize(
    "error, code",
    [
        (_sqlite_error(sqlite3.SQLITE_CANTOPEN, "unable to open database file"), "UNAVAILABLE"),
        (_sqlite_error(sqlite3.SQLITE_READONLY, "attempt to write a readonly database"), "UNAVAILABLE"),
        (_sqlite_error(sqlite3.SQLITE_IOERR | (3 << 8), "disk I/O error"), "UNAVAILABLE"),  # an extended code
        (_sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full"), "UNAVAILABLE"),
        (_sqlite_error(sqlite3.SQLITE_BUSY, "database is locked"), "UNAVAILABLE"),
        (_sqlite_error(sqlite3.SQLITE_ERROR, "no such table: orders"), None),
    ],
)
def test_a_sqlite_file_that_cannot_be_opened_or_written_is_unavailable_not_a_bug(error, code):
    wrapped = sa.exc.OperationalError("INSERT ...", None, error)
    for raised in (error, wrapped):
        translated = db.unavailable(raised)
        assert (translated.code.name if translated else None) == code


def test_a_write_connection_that_met_a_read_only_file_is_opened_anew(engine):
    # SQLite opens a file it may not write read-only and keeps it so; a
    # query_only connection fails writes the same way (SQLITE_READONLY).
    with db.write(engine) as conn:
        conn.execute(counters.insert().values(name="n", value=1))
    with pytest.raises(DatabaseUnavailable) as raised, db.write(engine) as conn:
        conn.driver_connection.execute("PRAGMA query_only=ON")
        conn.execute(counters.update().values(value=2))
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    # The file is writable (it always was here): the next write reopens and succeeds, no restart.
    with db.write(engine) as conn:
        conn.execute(counters.update().values(value=3))
    assert _value(engine) == 3


def test_the_probe_says_unavailable_while_the_sqlite_file_may_not_be_written(engine, monkeypatch):
    db.ping(engine, 5)
    path = engine.url.database
    real_access = db.os.access
    monkeypatch.setattr(db.os, "access", lambda name, mode: name != path and real_access(name, mode))
    with pytest.raises(DatabaseUnavailable) as raised:
        db.ping(engine, 5)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "cannot be opened or written" in raised.value.message
    monkeypatch.setattr(db.os, "access", real_access)
    db.ping(engine, 5)


# PostgreSQL, on a cluster of the test's own


@pytest.fixture
def pg_engine(private_postgres):
    engine = db.open_engine(private_postgres.new_database("db_test"), pool_size=4)
    migrations.migrate(engine, metadata, (lambda conn: metadata.create_all(conn),))
    with db.write(engine) as conn:
        conn.execute(counters.insert().values(name="n", value=0))
    yield engine
    engine.dispose()


def _add_one(engine) -> None:
    with db.write(engine) as conn:
        conn.execute(counters.update().values(value=counters.c.value + 1))


def test_pooled_connections_a_restart_dropped_are_replaced_before_any_statement_runs(pg_engine, private_postgres):
    pooled = [pg_engine.connect() for _ in range(4)]
    for conn in pooled:
        conn.exec_driver_sql("SELECT 1")
        conn.close()
    assert pg_engine.pool.checkedin() == 4
    private_postgres.restart()  # every pooled connection is terminated
    for _ in range(4):
        _add_one(pg_engine)
    assert _value(pg_engine) == 4


def test_a_restart_in_the_middle_of_a_transaction_is_unavailable_and_commits_nothing(pg_engine, private_postgres):
    with pytest.raises(DatabaseUnavailable) as raised:
        with db.write(pg_engine) as conn:
            conn.execute(counters.update().values(value=100))
            private_postgres.restart()
            conn.execute(counters.update().values(value=200))
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert _value(pg_engine) == 0


def test_a_database_that_is_down_is_unavailable_until_it_returns(pg_engine, private_postgres):
    private_postgres.stop("immediate")
    with pytest.raises(DatabaseUnavailable) as raised:
        _add_one(pg_engine)
    assert (raised.value.code, raised.value.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    assert str(private_postgres.port) not in raised.value.message
    with pytest.raises(DatabaseUnavailable):
        db.ping(pg_engine, 1.0)
    private_postgres.start()
    db.ping(pg_engine, 5.0)
    _add_one(pg_engine)
    assert _value(pg_engine) == 1


def _statement_timeout_ms(engine) -> int:
    with db.read(engine) as conn:
        return int(conn.execute(sa.text("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")).scalar_one())


def test_the_statement_timeout_is_the_time_the_callers_deadline_leaves(pg_engine):
    assert _statement_timeout_ms(pg_engine) == 0  # no caller, no deadline: the server's own setting
    with serving_a_call_with(5.0):
        assert 0 < _statement_timeout_ms(pg_engine) <= 5000
    assert _statement_timeout_ms(pg_engine) == 0  # SET LOCAL: it ended with its transaction


def test_a_table_locked_past_what_the_call_can_wait_is_unavailable_not_slow(pg_engine):
    # API.md: a database "locked past its timeout" answers 503 UNAVAILABLE.
    with pg_engine.connect() as holder:
        holder.exec_driver_sql("LOCK TABLE counters IN ACCESS EXCLUSIVE MODE")
        with serving_a_call_with(1.0), pytest.raises(DatabaseUnavailable) as raised:
            _value(pg_engine)
        holder.rollback()
    assert (raised.value.code, raised.value.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    assert "locked" in raised.value.message
    assert _value(pg_engine) == 0


def test_a_statement_outliving_the_callers_deadline_is_cut_off_as_deadline_exceeded(pg_engine):
    with serving_a_call_with(0.5), pytest.raises(DatabaseUnavailable) as raised:
        with db.read(pg_engine) as conn:
            conn.execute(sa.text("SELECT pg_sleep(60)"))
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

