"""What a service's DATABASE_URL may be: sqlite:///path/to.db (the
default, under DATA_DIR) or postgresql://... (psycopg 3), checked before
anything opens it, so a process refuses a URL it cannot use at start."""

import os
import pathlib

import sqlalchemy as sa

ACCEPTED = "use sqlite:///path/to.db or postgresql://user:password@host/database"


def normalise_url(url: str) -> str:
    """postgresql://... means psycopg 3 here."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def usable_url(url: str) -> str:
    """`url` as db.open_engine opens it, an SQLite file's folder made if
    missing. Raises ValueError, never quoting the URL (it may hold a
    password), for one it cannot use."""
    url = normalise_url(url.strip())
    try:
        parsed = sa.engine.make_url(url)
        parsed.port  # noqa: B018 - raises for a port that is not a number
    except (ValueError, sa.exc.ArgumentError):
        raise ValueError(f"not a database URL: {ACCEPTED}") from None
    if parsed.drivername == "postgresql+psycopg":
        return url
    if parsed.drivername.partition("+")[0] != "sqlite":
        raise ValueError(f"a {parsed.drivername}:// URL is not supported: {ACCEPTED}")
    if not parsed.database or parsed.database == ":memory:":
        raise ValueError("SQLite needs a file (sqlite:///path/to.db): every replica thread shares it")
    folder = pathlib.Path(parsed.database).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        why = None if os.access(folder, os.W_OK | os.X_OK) else "not writable"
    except OSError as error:
        why = error.strerror or str(error)
    if why:
        raise ValueError(
            f"the folder {str(folder)!r} cannot be created or written ({why}): "
            "name one this process can create and write"
        )
    return url
