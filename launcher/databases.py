"""The PostgreSQL databases a run of the shop needs, made and dropped on a
server reached through its admin database (POSTGRES_URL): make
run-replicated's, a benchmark's, a test's."""

import contextlib
import uuid
from collections.abc import Iterator, Sequence

import psycopg

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def database_url(admin_url: str, name: str) -> str:
    """The URL of database `name` on the server of `admin_url`."""
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


def create_databases(admin_url: str, names: Sequence[str], reset: bool = False) -> None:
    """Create the databases that do not exist (all of them, dropped first, if `reset`)."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        if reset:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in names:
            if name not in existing:
                conn.execute(f'CREATE DATABASE "{name}"')


def drop_databases(admin_url: str, names: Sequence[str]) -> None:
    """Drop the databases, whoever is still connected to them."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def unique_name(prefix: str) -> str:
    """A database name no other run takes: `prefix` and random hex."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def fresh_databases(admin_url: str, prefix: str, services: Sequence[str]) -> Iterator[dict[str, str]]:
    """An empty database per service for one run, dropped afterwards:
    {"INVENTORY_DATABASE_URL": ..., ...}, the settings make run hands on."""
    suffix = uuid.uuid4().hex[:10]
    names = {service: f"{prefix}_{service}_{suffix}" for service in services}
    create_databases(admin_url, list(names.values()))
    try:
        yield {f"{service.upper()}_DATABASE_URL": database_url(admin_url, name) for service, name in names.items()}
    finally:
        drop_databases(admin_url, list(names.values()))
