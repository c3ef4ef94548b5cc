"""make run's supervision: every process of the shop kept running as
Kubernetes would keep it.

An exit that make run did not ask for (a crash, a SIGKILL, a SIGTERM from
elsewhere) is reported and the process started again after a backoff
(0.5 s doubling to 10 s, reset once it has stayed up STAYED_UP_S), while
the others keep serving. A process that fails before it ever answered (a
port in use, a refused setting) stops make run with its error instead: a
restart would fail the same way. Stopping is graceful: SIGTERM, a drain,
then SIGKILL for what outlives STOP_TIMEOUT_S.
"""

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from launcher.plan import ProcessSpec
from launcher.probes import probe

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
# A process up this long is well again: its next restart waits FIRST_BACKOFF_S.
STAYED_UP_S = 30.0
# Exits in a row, each before STAYED_UP_S, that make a crash loop.
CRASH_LOOP_EXITS = 3
# The lines of a process's output kept to show when it fails.
TAIL_LINES = 20
FIRST_START_TAIL_LINES = 5
POLL_S = 0.1
# A process's output is passed on this often at most, whole lines at a time:
# one line per request would otherwise wake make run once per request, a
# context switch away from the shop's own work on a small machine.
PASS_ON_EVERY_S = 0.05
PROBE_EVERY_S = 0.25
STOP_TIMEOUT_S = 20.0


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Backoff:
    """How long to wait before a restart: FIRST_BACKOFF_S, doubling each time
    up to MAX_BACKOFF_S, until reset()."""

    def __init__(self):
        self.next_s = FIRST_BACKOFF_S

    def take(self) -> float:
        delay = self.next_s
        self.next_s = min(self.next_s * 2, MAX_BACKOFF_S)
        return delay

    def reset(self) -> None:
        self.next_s = FIRST_BACKOFF_S


@dataclass
class Supervised:
    """One process of the shop, across its restarts."""

    spec: ProcessSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    # It has answered since this start; ever_answered: since make run began.
    answered: bool = False
    ever_answered: bool = False
    next_probe: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    quick_exits: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None


class FirstStartFailed(Exception):
    """A process failed before it ever answered: make run stops."""


class Supervisor:
    """Runs the processes of `specs`: passes their output on to `logs`, says
    what happens on `out`, restarts what exits unasked."""

    def __init__(self, specs: list[ProcessSpec], out=sys.stdout, logs=sys.stderr, cwd: str | None = None):
        self.processes = [Supervised(spec) for spec in specs]
        self.out = out
        self.logs = logs
        self.cwd = cwd
        self.stopping = threading.Event()
        self._output_lock = threading.Lock()

    def say(self, text: str) -> None:
        self._write(self.out, f"[make run] {text}")

    def _write(self, stream, line: str) -> None:
        # One write per line, under one lock: on a terminal the processes'
        # lines and make run's own never run into each other.
        with self._output_lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except OSError:
                # The terminal is gone (a hang-up): nowhere to say it, and
                # stopping the processes must go on.
                pass

    # Starting and watching

    def _spawn(self, process: Supervised) -> None:
        spec = process.spec
        # A session of its own: a terminal's Ctrl-C reaches make run alone,
        # which stops everything in order; and what a process leaves behind
        # (workers) can be killed with its group, as a container's would be.
        process.proc = subprocess.Popen(
            [sys.executable, "-m", spec.module],
            env=spec.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.started_at = time.monotonic()
        process.answered = False
        process.next_probe = 0.0
        process.restart_at = None
        process.reader = threading.Thread(
            target=self._pass_on, args=(process, process.proc.stdout), name=f"logs-{spec.name}", daemon=True
        )
        process.reader.start()

    def _pass_on(self, process: Supervised, stream) -> None:
        """Copy a process's output to `logs`, whole lines at a time, keeping its tail."""
        fd, pending = stream.fileno(), b""
        with stream:
            while chunk := os.read(fd, 1 << 16):
                complete, newline, pending = (pending + chunk).rpartition(b"\n")
                if newline:
                    self._pass_lines(process, complete)
                time.sleep(PASS_ON_EVERY_S)
            if pending:
                self._pass_lines(process, pending)

    def _pass_lines(self, process: Supervised, raw: bytes) -> None:
        lines = raw.decode("utf-8", errors="replace").split("\n")
        process.tail.extend(lines)
        self._write(self.logs, "\n".join(lines))

    @staticmethod
    def _exited(proc: subprocess.Popen, block: bool = False) -> int | None:
        """Its exit status if it has exited (waiting for that if `block`),
        after killing what it left in its group: looked at without reaping
        it first, so that the group's id cannot have been reused."""
        if hasattr(os, "waitid"):
            flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
            try:
                if os.waitid(os.P_PID, proc.pid, flags) is None:
                    return None
            except ChildProcessError:
                return proc.wait()  # reaped already
        elif (proc.wait() if block else proc.poll()) is None:
            # No waitid (macOS before Python 3.13): reaped first, then its group.
            return None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.wait()

    def start(self) -> None:
        for process in self.processes:
            self._spawn(process)

    def pids(self) -> dict[str, int]:
        return {p.spec.name: p.proc.pid for p in self.processes if p.proc is not None}

    def watch_once(self) -> None:
        """One look at every process: exits, answers, restarts due."""
        now = time.monotonic()
        for process in self.processes:
            if process.proc is None:
                if process.restart_at is not None and now >= process.restart_at and not self.stopping.is_set():
                    self._spawn(process)
                    process.restarts += 1
                    self.say(f"{process.spec.name} started again (pid {process.proc.pid}, restart {process.restarts})")
                continue
            returncode = self._exited(process.proc)
            if returncode is not None:
                self._on_exit(process, returncode, now)
            elif not process.answered and now >= process.next_probe:
                process.next_probe = now + PROBE_EVERY_S
                if probe(process.spec) is not None:
                    process.answered = True
                    if process.ever_answered:
                        self.say(f"{process.spec.name} is back (pid {process.proc.pid})")
                    process.ever_answered = True

    def _on_exit(self, process: Supervised, returncode: int, now: float) -> None:
        spec = process.spec
        process.proc = None
        if process.reader is not None:
            process.reader.join(timeout=2)  # the rest of its output, for its tail
        if not process.ever_answered:
            tail = list(process.tail)[-FIRST_START_TAIL_LINES:]
            raise FirstStartFailed(
                f"{spec.name} {describe_exit(returncode)} before it started serving"
                + ("; its last lines:\n" + "\n".join(f"    {line}" for line in tail) if tail else "")
            )
        lived_s = now - process.started_at
        if lived_s >= STAYED_UP_S:
            process.backoff.reset()
            process.quick_exits = 0
        else:
            process.quick_exits += 1
        delay = process.backoff.take()
        process.restart_at = now + delay
        self.say(f"{spec.name} {describe_exit(returncode)} after {lived_s:.1f} s; restarting it in {delay:g} s")
        if process.quick_exits >= CRASH_LOOP_EXITS:
            tail = list(process.tail)
            self.say(
                f"{spec.name} is crash-looping ({process.quick_exits} exits in a row, each within "
                f"{STAYED_UP_S:g} s of its start)"
                + ("; its last lines:\n" + "\n".join(f"    {line}" for line in tail) if tail else "; it printed nothing")
            )

    def all_answered(self) -> bool:
        return all(p.answered for p in self.processes)

    # Stopping

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every process (each drains), wait, kill what outlives it."""
        self.stopping.set()
        running = [p for p in self.processes if p.proc is not None]
        # os.kill, not Popen.send_signal: that would reap an exited process
        # before _exited could kill what it left in its group.
        for process in running:
            os.kill(process.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while running and time.monotonic() < deadline:
            running = [p for p in running if self._exited(p.proc) is None]
            time.sleep(POLL_S)
        for process in running:
            self.say(f"{process.spec.name} did not stop within {timeout_s:g} s of SIGTERM; killing it")
            os.kill(process.proc.pid, signal.SIGKILL)
            self._exited(process.proc, block=True)
        for process in self.processes:
            if process.reader is not None:
                process.reader.join(timeout=2)
