"""The bots' pool for a PostgreSQL target (issue 19): `psycopg_pool`, with our metrics.

After a stage moves to PostgreSQL, `pool.connection("core")` lends a psycopg connection
from a `psycopg_pool.ConnectionPool` (a well-kept pool: connection checks, reconnects,
fair queueing; ours for SQLite exists because no such pool knows SQLite's locking). The
block commits when it ends normally and rolls back on an exception, as psycopg's own pool
does. What `cdc status` shows is the same `PoolMetrics` a SQLite pool publishes: the
pool's own counters (`get_stats`), and ours for what it does not count: how long a
connection was held, and the writes a rollback's fence refused (a stale bot).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgspec

from cdc.config import PoolSettings
from cdc.errors import FENCE_PREFIX, PoolTimeout
from cdc.pool.stats import PoolMetrics
from cdc.postgres.dsn import redacted


class PgPool:
    """One PostgreSQL target's connections in this process (the interface of `Pool`)."""

    def __init__(
        self,
        name: str,
        dsn: str,
        settings: PoolSettings,
        *,
        on_checkin: Callable[[], None] | None = None,
    ) -> None:
        from psycopg_pool import ConnectionPool

        self.name, self.path, self.settings = name, redacted(dsn), settings
        self._on_checkin = on_checkin
        self._pool = ConnectionPool(
            dsn,
            min_size=0,
            max_size=settings.size,
            timeout=settings.checkout_timeout,
            open=True,
            name=f"cdc-{name}",
        )
        self._lock = threading.Lock()
        self._lent: dict[int, float] = {}
        self._m = PoolMetrics(name, self.path, os.getpid(), settings.size, created_at=time.time())

    @contextmanager
    def connection(self) -> Iterator[object]:
        from psycopg_pool import PoolTimeout as PgTimeout

        try:
            cm = self._pool.connection()
            conn = cm.__enter__()
        except PgTimeout as e:
            raise PoolTimeout(
                f"{self.name}: no connection came free within "
                f"{self.settings.checkout_timeout:g}s ({self.settings.size} in use)",
                hint="a borrower holds its connection too long, or raise pool.size",
            ) from e
        with self._lock:
            self._lent[id(conn)] = time.monotonic()
        exc: BaseException | None = None
        try:
            yield conn
        except BaseException as e:
            exc = e
            raise
        finally:
            try:
                cm.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
            finally:
                self._checked_in(conn, exc)

    def _checked_in(self, conn: object, exc: BaseException | None) -> None:
        with self._lock:
            held = time.monotonic() - self._lent.pop(id(conn))
            m = self._m
            m.longest_hold_seconds = max(m.longest_hold_seconds, held)
            if exc is not None:
                m.errors += 1
                m.last_error = f"{type(exc).__name__}: {exc}"
                if str(exc).startswith(FENCE_PREFIX):
                    m.fenced += 1
        if self._on_checkin is not None:
            self._on_checkin()

    def metrics(self) -> PoolMetrics:
        s = self._pool.get_stats()
        with self._lock:
            now = time.monotonic()
            size, free = s.get("pool_size", 0), s.get("pool_available", 0)
            return msgspec.structs.replace(
                self._m,
                open=size,
                idle=free,
                in_use=size - free,
                checkouts=s.get("requests_num", 0),
                waits=s.get("requests_queued", 0),
                wait_seconds_total=s.get("requests_wait_ms", 0) / 1000.0,
                timeouts=s.get("requests_errors", 0),
                replaced=s.get("connections_lost", 0) + s.get("returns_bad", 0),
                current_longest_hold_seconds=now - min(self._lent.values()) if self._lent else 0.0,
                updated_at=time.time(),
            )

    def recorded(self) -> list:
        return []  # statement recording is SQLite's (apsw's trace hooks) for now

    def close(self) -> None:
        self._pool.close()
