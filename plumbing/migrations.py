"""Schema migrations of a service's database: versioned steps applied once,
under a lock, so replicas starting together do them once; and the one kind
of step an upgrade of an existing database needs (adding nullable columns).
"""

import zlib
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from plumbing import db


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
    with (
        db.raising_unavailable(),
        engine.connect().execution_options(sqlite_immediate=True) as conn,
        conn.begin(),
    ):
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
