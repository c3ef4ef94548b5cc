"""A PostgreSQL cluster of a test's own (initdb in a temp dir, on a free
port), so that a test may restart it, crash it and start it again without
touching the server other tests share.

initdb and the server refuse to run as root: as root, the cluster runs as
the `postgres` user (else `nobody`, through setpriv), which owns the temp
dir. Without the binaries a test skips, or fails under REQUIRE_POSTGRES=1
(as CI sets).
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

from launcher import databases
from launcher.stack import free_port_base

BIN_DIR_PATTERNS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin")


def find_bin_dir() -> str | None:
    """The directory holding initdb and pg_ctl: on PATH, else the newest of
    the usual install places."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return os.path.dirname(os.path.realpath(on_path))
    candidates = [d for pattern in BIN_DIR_PATTERNS for d in glob.glob(pattern)]
    found = [d for d in candidates if os.path.exists(os.path.join(d, "initdb"))]
    return sorted(found, key=_version_key)[-1] if found else None


def _version_key(path: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in path.replace("/", ".").split("."))


def require_bin_dir() -> str:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
    return bin_dir


def _unavailable(why: str):
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL required: {why}")
    pytest.skip(why)


@dataclass
class PrivatePostgres:
    bin_dir: str
    data_dir: str
    port: int
    # The user the server runs as (None: the current one).
    user: str | None

    @classmethod
    def create(cls) -> "PrivatePostgres":
        bin_dir = require_bin_dir()
        user = None
        if os.geteuid() == 0:
            user = next((name for name in ("postgres", "nobody") if _user_exists(name)), None)
            if user is None or shutil.which("setpriv") is None:
                _unavailable("running as root, PostgreSQL needs an unprivileged user and setpriv (util-linux)")
        # Not under pytest's tmp_path: its parents are private to root.
        base = tempfile.mkdtemp(prefix="shop-pg-")
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(base, entry.pw_uid, entry.pw_gid)
        cluster = cls(bin_dir, os.path.join(base, "data"), free_port_base(), user)
        made = cluster._run("initdb", "-D", cluster.data_dir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if made.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            raise RuntimeError(f"initdb failed:\n{made.stdout}\n{made.stderr}")
        with open(os.path.join(cluster.data_dir, "postgresql.conf"), "a") as conf:
            conf.write(
                f"port = {cluster.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{base}'\n"
                "max_connections = 200\n"
                "shared_buffers = 16MB\n"
                # A test's data is thrown away: no need to reach the disk.
                "fsync = off\n"
                "full_page_writes = off\n"
            )
        return cluster

    @property
    def base_dir(self) -> str:
        return os.path.dirname(self.data_dir)

    @property
    def log_path(self) -> str:
        return os.path.join(self.base_dir, "server.log")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        self._pg_ctl("start", "-w", "-t", "60", "-l", self.log_path)

    def restart(self) -> None:
        """A clean restart: sessions are terminated (admin shutdown), then it starts again."""
        self._pg_ctl("restart", "-m", "fast", "-w", "-t", "60", "-l", self.log_path)

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: no shutdown checkpoint, recovery at the next start."""
        self._pg_ctl("stop", "-m", mode, "-w", "-t", "60")

    def running(self) -> bool:
        return self._pg_ctl_status() == 0

    def new_database(self, prefix: str) -> str:
        """The URL of a new empty database."""
        name = databases.unique_name(prefix)
        databases.create_databases(self.url(), [name])
        return self.url(name)

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        result = self._run("pg_ctl", "-D", self.data_dir, *args)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def _pg_ctl_status(self) -> int:
        return self._run("pg_ctl", "-D", self.data_dir, "status").returncode

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        command = [os.path.join(self.bin_dir, program), *args]
        if self.user is not None:
            # setpriv, not subprocess's user=: changing user makes subprocess
            # fork() instead of vfork(), and gRPC's fork handlers in a test
            # process with calls in flight crash the child.
            entry = pwd.getpwnam(self.user)
            command = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *command]
        return subprocess.run(
            command,
            cwd=self.base_dir if os.path.isdir(self.base_dir) else "/",
            capture_output=True,
            text=True,
            timeout=120,
        )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
