"""Opening a pool connection: every setting the bots used to pick for themselves, in one
place (`open_pooled`), one small function each."""

from __future__ import annotations

import os
import time

import apsw

from cdc.config import PoolSettings
from cdc.errors import ConfigError, SourceError, TargetError
from cdc.sqlconn import create_private

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def _set_busy_timeout(conn: apsw.Connection, ms: int) -> None:
    """SQLite's own busy handler: a bot meeting another writer's lock waits instead of
    failing at once. (The daemon polls faster with `cdc.sqlconn.BusyWait`, for its lag; a
    bot does not need a Python callback on every retry.)"""
    conn.set_busy_timeout(ms)


def _set_foreign_keys(conn: apsw.Connection, on: bool) -> None:
    conn.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def _set_synchronous(conn: apsw.Connection, level: str) -> None:
    level = level.upper()
    if level not in _SYNCHRONOUS:  # never pasted into SQL unchecked
        raise ConfigError(f"pool synchronous {level!r}: use OFF, NORMAL, FULL or EXTRA")
    conn.execute(f"PRAGMA synchronous={level}")


def _set_wal(conn: apsw.Connection, path: str, busy_timeout_ms: int) -> None:
    """WAL, switched only if not already on. The switch needs the database to itself, and
    SQLite reports a concurrent switch (several borrowers or bots opening a new target at
    once) as busy without calling the busy handler, so it is retried here."""
    if conn.execute("PRAGMA journal_mode").fetchall()[0][0].lower() == "wal":
        return
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
            break
        except apsw.BusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
    if str(mode).lower() != "wal":
        raise TargetError(f"{path}: journal mode stays {mode!r}, WAL expected")


def open_pooled(path: str, settings: PoolSettings, is_target: bool) -> apsw.Connection:
    """Open and configure one raw connection: the only place pool connections are made.

    A target (consolidated database) is created if missing and put in WAL with
    `settings.synchronous`. A legacy file must exist (opened without SQLITE_OPEN_CREATE, so
    a wrong path never becomes a new empty database) and keeps the journal mode its bots
    chose, with `settings.legacy_synchronous`.
    """
    if is_target:
        try:
            create_private(path)  # 0600 in 0700 folders, like the daemon's (cdc.sqlconn)
        except OSError as e:
            raise TargetError(f"{path}: cannot create target database: {e.strerror or e}") from e
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    else:
        if not os.path.exists(path):
            raise SourceError(
                f"{path}: legacy database not found", hint="check `sources` in cdc.toml"
            )
        flags = apsw.SQLITE_OPEN_READWRITE
    error = TargetError if is_target else SourceError
    try:
        conn = apsw.Connection(path, flags=flags)
    except apsw.Error as e:
        raise error(f"{path}: cannot open: {e}") from e
    try:
        _set_busy_timeout(conn, settings.busy_timeout_ms)
        _set_foreign_keys(conn, settings.foreign_keys)
        if is_target:
            _set_wal(conn, path, settings.busy_timeout_ms)
            _set_synchronous(conn, settings.synchronous)
        else:
            _set_synchronous(conn, settings.legacy_synchronous)
    except BaseException as e:
        conn.close()
        if isinstance(e, apsw.Error):
            raise error(f"{path}: cannot configure connection: {e}") from e
        raise
    return conn
