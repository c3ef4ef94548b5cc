"""A process's one SQLite write connection, and its group commit.

SQLite has one writer at a time, so a process keeps one connection for its
writes and its threads queue for it here, each handed the turn the moment
the last one is done (left to SQLite's busy handler they would sleep and
poll, 1, 2, 5 ... 100 ms, leaving the write lock idle between turns; other
processes on the same file still wait in the busy timeout).

While threads queue, consecutive turns share one transaction and one COMMIT,
so one fsync makes several writes durable: the COMMIT's fsync was most of a
turn, and under load the order service's threads queued behind it (a turn
held the lock 1.4 ms, 0.9 of them committing; threads waited 15 ms for
theirs). Each turn runs in a savepoint of its own, so a turn that raises
rolls back alone; a turn whose writes are done waits for the COMMIT that
includes them, so no write is answered before it is durable; and the last
turn of a group - the one no other thread is queued behind - commits.
"""

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator

from plumbing.statements import Plans, Tx

# Turns sharing one COMMIT at most: a bound on how long the first one waits.
MAX_GROUP = 16
# A turn waiting for its group's COMMIT looks this often for a group that
# no turn will commit (its last queued thread gave up waiting for the
# lock), and commits it itself.
GROUP_CHECK_S = 0.05


# Failures of the file rather than of a statement: it cannot be opened or
# written (its permissions, a read-only or full disk, an I/O error).
FILE_ERROR_CODES = frozenset(
    {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL}
)


def is_file_error(error: BaseException | None) -> bool:
    """Whether `error` (a driver's, or one wrapping it) is a failure of the
    database file: transient, as an outage is."""
    orig = getattr(error, "orig", error)
    return isinstance(orig, sqlite3.Error) and (getattr(orig, "sqlite_errorcode", 0) & 0xFF) in FILE_ERROR_CODES


class WriterBusy(Exception):
    """The turn did not come within the time the caller could wait."""


class CommitFailed(Exception):
    """The COMMIT of the group this turn's writes were in failed (its cause):
    none of them is stored."""


class _Group:
    """Turns sharing one transaction, committed together."""

    def __init__(self):
        self.turns = 0
        self.done = threading.Event()
        self.error: BaseException | None = None


class SqliteWriter:
    """The write connection of one engine in this process (opened again
    after a fork or a close), handed to one thread at a time."""

    def __init__(self, engine, plans: Plans):
        self.engine = engine
        self.plans = plans
        self.lock = threading.RLock()
        self._connection = None
        self._pid = None
        self._group: _Group | None = None
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._holder: int | None = None
        # Set when a write met a failure of the file. SQLite opens a file it
        # may not write read-only and keeps it so, and the pool may hold
        # more connections opened then: before the next group the pool is
        # replaced (engine_disposed closes this connection), so writes work
        # again once the file can be written.
        self._reopen = False

    def _driver(self):
        if self._reopen and self._group is None:
            self._reopen = False
            self.engine.dispose(close=False)
        if self._connection is None or self._pid != os.getpid():
            self._connection, self._pid = self.engine.raw_connection(), os.getpid()
            self._group = None
        return self._connection.driver_connection

    def reopen(self) -> None:
        """Open the connections anew before the next group: the file could
        not be written, and connections opened meanwhile are read-only."""
        self._reopen = True

    def close(self) -> None:
        with self.lock:
            if self._connection is not None and self._pid == os.getpid():
                if self._group is not None:
                    self._end_group(self._connection.driver_connection)
                # Closed for good, not handed back to the pool being disposed of.
                self._connection.invalidate()
            self._connection = None

    @contextlib.contextmanager
    def turn(self, wait_s: float, begin: Callable) -> Iterator[Tx]:
        """One write transaction, durable when the block ends; rolled back
        (alone) if it raises. Waits at most wait_s for the turn (WriterBusy);
        `begin` starts a transaction on the driver's connection."""
        if self._holder == threading.get_ident():
            # The lock is reentrant, so this fails at once instead of waiting on itself.
            raise RuntimeError("a write transaction is open in this thread already: writes do not nest")
        with self._queued_lock:
            self._queued += 1
        try:
            acquired = self.lock.acquire(timeout=wait_s)
        finally:
            with self._queued_lock:
                self._queued -= 1
        if not acquired:
            raise WriterBusy()
        failure = None
        try:
            self._holder = threading.get_ident()
            connection = self._driver()
            if self._group is None:
                begin(connection)
                self._group = _Group()
            group = self._group
            connection.execute("SAVEPOINT turn")
            tx = Tx(self.plans, connection)
            try:
                try:
                    yield tx
                finally:
                    tx.close()
                connection.execute("RELEASE turn")
            except BaseException as error:
                failure = error
                self._reopen = self._reopen or is_file_error(error)
                self._roll_back_turn(connection, group, error)
            group.turns += 1
            if self._group is group and (not self._queued or group.turns >= MAX_GROUP):
                self._end_group(connection)
        finally:
            self._holder = None
            self.lock.release()
        if failure is not None:
            raise failure
        self._await(group)

    def _roll_back_turn(self, connection, group: _Group, error: BaseException) -> None:
        """This turn's writes undone, the group's others kept; or, when
        SQLite rolled back the whole transaction itself (an I/O error, a full
        disk), the group failed."""
        try:
            if connection.in_transaction:
                connection.execute("ROLLBACK TO turn")
                connection.execute("RELEASE turn")
                return
        except Exception as rollback_error:
            error = rollback_error
        self._fail_group(connection, group, error)

    def _end_group(self, connection) -> None:
        """COMMIT the open group (the caller holds the lock)."""
        group, self._group = self._group, None
        try:
            connection.execute("COMMIT")
        except BaseException as error:
            self._fail_group(connection, group, error)
            return
        group.done.set()

    def _fail_group(self, connection, group: _Group, error: BaseException) -> None:
        self._reopen = self._reopen or is_file_error(error)
        if self._group is group:
            self._group = None
        with contextlib.suppress(Exception):
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        group.error = error
        group.done.set()

    def _await(self, group: _Group) -> None:
        """Until the group's COMMIT; committing it here if no turn will."""
        while not group.done.wait(GROUP_CHECK_S):
            with self.lock:
                if self._group is group:
                    self._end_group(self._driver())
        if group.error is not None:
            raise CommitFailed() from group.error
