"""Our own connections to a PostgreSQL target, and its errors as ours.

Our connections mark their session (`way_back.mark_ours`): their writes pass a rollback's
fences and are not captured as the bots' writes are."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cdc.errors import TargetBusyError, TargetError
from cdc.postgres import way_back
from cdc.postgres.dsn import redacted


def connect(dsn: str, autocommit: bool = False):  # noqa: ANN201 - a psycopg connection
    """A connection of ours: its writes pass the fences and are not captured."""
    import psycopg

    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise TargetBusyError(f"cannot connect to the PostgreSQL target: {e}") from e
    way_back.mark_ours(conn)
    conn.autocommit = autocommit
    return conn


@contextmanager
def translated(where: str) -> Iterator[None]:
    """psycopg's errors as ours: a lost or locked server is retried, anything else named."""
    import psycopg

    try:
        yield
    except psycopg.OperationalError as e:
        raise TargetBusyError(f"{redacted(where)}: {e}") from e
    except psycopg.Error as e:
        raise TargetError(f"{redacted(where)}: {e}") from e


def pg_install_id(dsn: str) -> str:
    with connect(dsn, autocommit=True) as conn:
        return way_back.install_id(conn) or ""
