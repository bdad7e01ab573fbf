"""Opening SQLite files the way this tool must: never creating a legacy file by accident.

One small function per connection setting, as apsw's best practice suggests, so every
connection we make is configured the same way. apsw errors are converted to our own
hierarchy here, at the edge.
"""

from __future__ import annotations

import os

import apsw

from cdc.errors import SourceError, TargetError


def open_legacy(path: str, busy_timeout_ms: int = 5000, readonly: bool = False) -> apsw.Connection:
    """Open an existing legacy DB. A missing file is an error, never a new empty database."""
    if not os.path.exists(path):
        raise SourceError(f"{path}: legacy database not found", hint="check `sources` in cdc.toml")
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE
    try:
        conn = apsw.Connection(path, flags=flags)
        set_busy_timeout(conn, busy_timeout_ms)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except apsw.NotADBError as e:
        raise SourceError(f"{path}: not a SQLite database (or corrupt): {e}") from e
    except apsw.CorruptError as e:
        raise SourceError(f"{path}: database is corrupt: {e}") from e
    except apsw.CantOpenError as e:
        raise SourceError(f"{path}: cannot open: {e}") from e
    except apsw.PermissionsError as e:
        raise SourceError(f"{path}: permission denied: {e}") from e
    return conn


def open_target(path: str, busy_timeout_ms: int = 5000) -> apsw.Connection:
    """Open (creating if needed) a consolidated DB: WAL, and FULL sync so that a checkpoint
    that survived a crash never points past a log segment we already deleted."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    try:
        conn = apsw.Connection(path)
        set_busy_timeout(conn, busy_timeout_ms)
        set_wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
    except apsw.Error as e:
        raise TargetError(f"{path}: cannot open target database: {e}") from e
    return conn


def set_busy_timeout(conn: apsw.Connection, ms: int) -> None:
    conn.set_busy_timeout(ms)


def set_wal(conn: apsw.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL").fetchall()


class write_transaction:  # noqa: N801 - used like a function: `with write_transaction(conn):`
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error).

    A deferred transaction that reads first and writes later cannot wait for a busy
    database: when another connection wrote in between, SQLite refuses the upgrade at
    once (SQLITE_BUSY, or BUSY_SNAPSHOT in WAL) without calling the busy handler. Taking
    the write lock up front makes the busy timeout apply, so our short writes queue behind
    a bot's commit instead of failing.
    """

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> apsw.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
