"""Shared fixtures: a fresh database per service per test, on SQLite and (when
reachable) PostgreSQL, and services started in-process on port 0.

Set REQUIRE_POSTGRES=1 (as .ci/run does) to fail instead of skipping when
PostgreSQL is not reachable at TEST_POSTGRES_URL.
"""

import os

import psycopg
import pytest

from launcher import databases, stack

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_reachable() -> bool:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def pytest_configure(config):
    """Each pytest-xdist worker picks free ports from a slice of its own, so
    two workers never hand out the same one before either has bound it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        index, count = int(worker[2:]), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        low, high = stack.PORT_RANGE
        width = (high - low) // count
        stack.PORT_RANGE = (low + index * width, low + (index + 1) * width)


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path, monkeypatch):
    """Every test's default DATA_DIR is its own: a service configured from the
    environment never opens (nor makes) the checkout's ./data, make run's."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    return _postgres_reachable()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, postgres_available):
    """A factory: database_url("inventory") -> a URL to an empty database of
    its own. Parametrized, so every test using it runs on both backends."""
    created: list[str] = []
    if request.param == "postgresql" and not postgres_available:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required but not reachable at {POSTGRES_ADMIN_URL}")
        pytest.skip("PostgreSQL not reachable")

    def make(name: str) -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path}/{name}.db"
        dbname = databases.unique_name(f"shop_test_{name}")
        databases.create_databases(POSTGRES_ADMIN_URL, [dbname])
        created.append(dbname)
        return databases.database_url(POSTGRES_ADMIN_URL, dbname)

    yield make
    if created:
        databases.drop_databases(POSTGRES_ADMIN_URL, created)


@pytest.fixture
def sqlite_url(tmp_path):
    """Like database_url, SQLite only: for tests about SQLite files themselves."""
    return lambda name: f"sqlite:///{tmp_path}/{name}.db"


@pytest.fixture
def shop(database_url, sqlite_url):
    """All three services in-process: orders on both backends (inventory's
    and payment's own suites cover theirs, so they run on SQLite here)."""
    from tests import harness

    shop = harness.OrderShop.start(database_url, sqlite_url)
    yield shop
    shop.stop()


@pytest.fixture
def inventory(sqlite_url):
    """The inventory service alone, in-process, on SQLite."""
    from tests import harness

    running = harness.run_inventory(sqlite_url("inventory"))
    yield running
    running.stop()


@pytest.fixture
def backends(sqlite_url):
    """Inventory and payment in-process, and a scripted order service, for the gateway."""
    from tests.test_gateway_support import running_backends

    with running_backends(sqlite_url) as running:
        yield running


@pytest.fixture
def client(backends):
    """Flask's test client of a gateway in front of `backends`."""
    from tests.test_gateway_support import make_client

    return make_client(backends)


@pytest.fixture
def orders(backends):
    return backends.scripted_orders


@pytest.fixture(scope="session")
def _private_postgres_cluster():
    from tests.private_postgres import PrivatePostgres

    cluster = PrivatePostgres.create()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def private_postgres(_private_postgres_cluster):
    """A PostgreSQL cluster of the tests' own (initdb on a free port), which
    a test may restart, crash or stop: it is running again after each test.
    Skips without the server binaries (fails under REQUIRE_POSTGRES=1)."""
    yield _private_postgres_cluster
    if not _private_postgres_cluster.running():
        _private_postgres_cluster.start()
