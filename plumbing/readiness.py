"""A service's readiness follows its database.

At start the service serves health as NOT_SERVING while it connects and
migrates, retrying with backoff until the database answers (a log line at
failed attempts 1, 2, 4, 8 ...: a database away for an hour is a dozen
lines, not thousands); it never exits because its database is down. Once ready,
a probe watches the database: unreachable for longer than
UNREACHABLE_AFTER_S, the service turns NOT_SERVING (clients' health checking
routes around it to a replica that can serve), and SERVING at the probe's
first answer.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator

from sqlalchemy.engine import Engine

from plumbing import db
from plumbing.errors import DatabaseUnavailable

log = logging.getLogger("plumbing.readiness")

# What health checks are told while a service waits (the gateway's /ready shows it).
WAITING_FOR_DATABASE = "waiting for its database"

# Retries at start: 0.25, 0.5, 1, 2, 2 ... s, so a service answers within
# about RETRY_MAX_S (and one connection) of its database returning.
RETRY_INITIAL_S = 0.25
RETRY_MAX_S = 2.0
# Once ready: a probe every PROBE_INTERVAL_S, each given PROBE_TIMEOUT_S.
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
# A blip (one dropped connection, a fast restart) does not flap readiness;
# a database away for longer than this does.
UNREACHABLE_AFTER_S = 3.0


def retry_delays() -> Iterator[float]:
    delay = RETRY_INITIAL_S
    while True:
        yield delay
        delay = min(delay * 2, RETRY_MAX_S)


class DatabaseReadiness:
    """`prepare` makes the database ready for the service (migrations and
    seed, run by every replica, applied once under their lock)."""

    def __init__(self, engine: Engine, prepare: Callable[[], None]):
        self.engine = engine
        self.prepare = prepare
        # Set once prepare has succeeded: calls may reach the store.
        self.prepared = threading.Event()

    def wait_until_prepared(self, stopping: threading.Event) -> bool:
        """Run prepare until it succeeds, retrying while the database is
        away; False if `stopping` is set first. Any other failure (a bug in
        a migration) is raised: retrying would not help."""
        delays = retry_delays()
        attempt = 0
        while not stopping.is_set():
            attempt += 1
            try:
                # The probe first: a SQLite file that answers but may not be
                # written is not ready either (prepare may have nothing to write).
                db.ping(self.engine, PROBE_TIMEOUT_S)
                self.prepare()
            except DatabaseUnavailable as error:
                delay = next(delays)
                if attempt & (attempt - 1) == 0:  # attempts 1, 2, 4, 8 ...: ever fewer lines
                    log.warning(
                        "database not ready; retrying",
                        extra={"attempt": attempt, "retry_in_s": delay, "cause": db.describe(error)},
                    )
                stopping.wait(delay)
                continue
            log.info("database ready", extra={"attempts": attempt})
            self.prepared.set()
            return True
        return False

    def watch(self, stopping: threading.Event, set_serving: Callable[[bool, str], None]) -> None:
        """Probe the database until `stopping`; set_serving(False, why) once
        it has failed every probe for UNREACHABLE_AFTER_S, set_serving(True,
        "") at its first answer after that."""
        serving = True
        failing_since: float | None = None
        while not stopping.wait(PROBE_INTERVAL_S):
            try:
                db.ping(self.engine, PROBE_TIMEOUT_S)
            except Exception as error:  # noqa: BLE001 - whatever stops the probe, the database is not answering
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if serving and now - failing_since >= UNREACHABLE_AFTER_S:
                    serving = False
                    set_serving(False, WAITING_FOR_DATABASE)
                    log.warning(
                        "database unreachable; not serving until it answers",
                        extra={"unreachable_for_s": round(now - failing_since, 1), "cause": db.describe(error)},
                    )
                continue
            failing_since = None
            if not serving:
                serving = True
                set_serving(True, "")
                log.info("database answers again; serving")
