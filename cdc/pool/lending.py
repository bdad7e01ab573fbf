"""One database's pool: at most `size` connections, each lent to one borrower at a time.

Split from `cdc.pool`, which keeps the process's pools by name and re-exports `Pool`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import apsw
import msgspec

from cdc.config import PoolSettings
from cdc.errors import CdcError, PoolTimeout
from cdc.pool.opening import open_pooled
from cdc.pool.pooled import PooledConnection
from cdc.pool.recorded import RecordedStatement, Recorder
from cdc.pool.stats import PoolMetrics

log = logging.getLogger("cdc.pool")  # the package's name: where operators look for it

CaptureFactory = Callable[[apsw.Connection], object | None]

# Errors after which a connection is not trusted again: it is closed and replaced.
_FATAL = (
    apsw.ConnectionClosedError,
    apsw.CorruptError,
    apsw.NotADBError,
    apsw.IOError,
    apsw.CantOpenError,
)


class _Waiter:
    """A borrower queued for a connection. Check-in hands it one directly (or a free slot to
    open one), so a newcomer can never take it first and nobody waits out of turn."""

    __slots__ = ("cond", "conn", "may_open")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.conn: PooledConnection | None = None
        self.may_open = False


class Pool:
    """At most `settings.size` connections to one database, each lent to one borrower at a
    time. Thread-safe; every figure in `metrics()` is updated under the pool's lock."""

    def __init__(
        self,
        name: str,
        path: str,
        settings: PoolSettings,
        is_target: bool,
        capture_factory: CaptureFactory | None = None,
        *,
        on_checkin: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.settings = settings
        self.is_target = is_target
        self._capture_factory = capture_factory
        self._on_checkin = on_checkin
        self._lock = threading.Lock()
        self._idle: list[PooledConnection] = []  # newest last: the warmest cache is reused
        self._lent: dict[int, float] = {}  # id(connection) -> monotonic time lent
        self._opening = 0  # slots taken by borrowers opening a connection now
        self._handed = 0  # connections handed to a waiter that has not woken up yet
        self._captured_seen: dict[int, int] = {}  # id(connection) -> its capture's count
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        self._m = PoolMetrics(
            name,
            path,
            os.getpid(),
            settings.size,
            created_at=time.time(),
            kind="target" if is_target else "legacy",
        )
        self._recorder = (  # statements and their latency (pool.record_queries)
            Recorder(name, self._m.kind, path) if settings.record_queries else None
        )

    @contextmanager
    def connection(self) -> Iterator[PooledConnection]:
        """Borrow a connection for the `with` block. It comes back on exit however the block
        ends: a transaction left open is rolled back, an exception is counted, a broken
        connection is replaced."""
        conn = self._checkout()
        try:
            yield conn
        except BaseException as e:
            self._checkin(conn, e)
            raise
        self._checkin(conn, None)

    def metrics(self) -> PoolMetrics:
        """A consistent copy of this pool's figures."""
        with self._lock:
            now = time.monotonic()
            m = msgspec.structs.replace(
                self._m,
                open=len(self._idle) + len(self._lent) + self._handed,
                idle=len(self._idle),
                in_use=len(self._lent) + self._handed,
                current_longest_hold_seconds=now - min(self._lent.values()) if self._lent else 0.0,
                updated_at=time.time(),
                extra=dict(self._m.extra),
            )
        return m

    def recorded(self) -> list[RecordedStatement]:
        """The statements this pool's connections ran, when `pool.record_queries` is on."""
        return self._recorder.statements() if self._recorder is not None else []

    def close(self) -> None:
        """Close the idle connections now and each lent one when it comes back; queued
        borrowers get an error."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            for w in self._waiters:
                w.cond.notify()
        for conn in idle:
            _close(conn)

    # -- lending --------------------------------------------------------------------------

    def _checkout(self) -> PooledConnection:
        start = time.monotonic()
        with self._lock:
            conn, may_open, waited = self._acquire_locked(start)
            if conn is not None:
                return self._lend_locked(conn, start, waited)
        try:
            conn = self._open()
        except BaseException as e:
            with self._lock:
                self._opening -= 1
                self._m.errors += 1
                self._m.last_error = f"open failed: {e}"
                self._give_slot_locked()
            raise
        with self._lock:
            self._opening -= 1
            return self._lend_locked(conn, start, waited)

    def _acquire_locked(self, start: float) -> tuple[PooledConnection | None, bool, bool]:
        """(idle connection, or None with a slot to open one; whether the borrower waited)."""
        if self._closed:
            raise CdcError(f"{self.name}: the connection pool is closed")
        if not self._waiters:  # those already queued go first
            if self._idle:
                return self._idle.pop(), False, False
            if self._count_locked() < self.settings.size:
                self._opening += 1
                return None, True, False
        w = _Waiter(self._lock)
        self._waiters.append(w)
        deadline = start + self.settings.checkout_timeout
        try:
            while w.conn is None and not w.may_open and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                w.cond.wait(remaining)
        except BaseException:  # e.g. KeyboardInterrupt: pass on what was handed to us
            self._abandon_locked(w)
            raise
        if w.conn is not None:  # handed over, maybe just as time ran out
            self._handed -= 1  # and lent by the caller under this same lock hold
            return w.conn, False, True
        if w.may_open:
            return None, True, True
        self._waiters.remove(w)
        if self._closed:
            raise CdcError(f"{self.name}: the connection pool was closed while waiting")
        self._m.timeouts += 1
        raise PoolTimeout(
            f"{self.name}: no free connection after {self.settings.checkout_timeout:g} s "
            f"(all {self.settings.size} lent out)",
            hint="hold connections for shorter (see the longest hold in `cdc status`) or "
            "raise pool.size / pool.checkout_timeout in cdc.toml",
        )

    def _abandon_locked(self, w: _Waiter) -> None:
        if w.conn is not None:
            self._handed -= 1
            self._give_connection_locked(w.conn)
        elif w.may_open:
            self._opening -= 1
            self._give_slot_locked()
        else:
            self._waiters.remove(w)

    def _lend_locked(self, conn: PooledConnection, start: float, waited: bool) -> PooledConnection:
        key = id(conn)
        if key in self._lent:  # cannot happen: the one rule this class exists for
            raise CdcError(f"{self.name}: connection lent twice (pool bug)")
        now = time.monotonic()
        self._lent[key] = now
        m = self._m
        m.checkouts += 1
        if waited:
            m.waits += 1
            m.wait_seconds_total += now - start
            m.wait_seconds_max = max(m.wait_seconds_max, now - start)
        return conn

    def _open(self) -> PooledConnection:
        raw = open_pooled(self.path, self.settings, self.is_target)
        if self._recorder is not None:  # after the settings: their PRAGMAs are not the bot's
            self._recorder.attach(raw)
        try:
            capture = self._capture_factory(raw) if self._capture_factory else None
        except BaseException:
            raw.close()
            raise
        if capture is not None:
            with self._lock:
                self._m.hooks = True
        log.debug("pool %s: opened a connection to %s", self.name, self.path)
        return PooledConnection(raw, capture)

    def _checkin(self, conn: PooledConnection, exc: BaseException | None) -> None:
        problem = f"{type(exc).__name__}: {exc}" if exc is not None else None
        broken = isinstance(exc, _FATAL)
        captured: int | None = None
        if not broken:
            try:
                left = conn.reset_for_reuse()
                problem = problem or left
                if conn.raw.txn_state() != apsw.SQLITE_TXN_NONE:
                    # A cursor kept past the block still reads: it holds a read lock (and a
                    # rollback-journal file's writers wait on it). Only closing ends it.
                    problem = problem or "an unfinished query was left open; connection closed"
                    broken = True
                captured = _captured_total(conn)
            except apsw.Error as e:
                problem = problem or f"reset failed: {e}"
                broken = True
        if broken:
            _close(conn)
        now = time.monotonic()
        with self._lock:
            held = now - self._lent.pop(id(conn))
            m = self._m
            m.longest_hold_seconds = max(m.longest_hold_seconds, held)
            m.fenced, conn.fenced = m.fenced + conn.fenced, 0
            if captured is not None:  # a hooks capture counts the capture rows it wrote
                new = captured - self._captured_seen.get(id(conn), 0)
                self._captured_seen[id(conn)] = captured
                m.extra["changes_captured"] = m.extra.get("changes_captured", 0) + new
            if problem is not None:
                m.errors += 1
                m.last_error = problem
            if broken:
                m.replaced += 1
                self._captured_seen.pop(id(conn), None)
                self._give_slot_locked()
            elif self._closed:
                self._captured_seen.pop(id(conn), None)
                _close(conn)  # quick: an idle connection with nothing pending
            else:
                self._give_connection_locked(conn)
        if problem is not None:  # the borrower sees its own exception: only the rest is news
            level = logging.DEBUG if exc is not None and not broken else logging.WARNING
            log.log(level, "pool %s (%s): %s", self.name, self.path, problem)
        if self._on_checkin is not None:
            self._on_checkin()

    def _count_locked(self) -> int:
        """Connections open or being opened: never more than `size`."""
        return len(self._idle) + len(self._lent) + self._handed + self._opening

    def _give_connection_locked(self, conn: PooledConnection) -> None:
        if self._waiters:
            w = self._waiters.popleft()
            w.conn = conn
            self._handed += 1
            w.cond.notify()
        else:
            self._idle.append(conn)

    def _give_slot_locked(self) -> None:
        """A connection was closed (or never opened): the oldest waiter may open one."""
        if self._waiters and not self._closed and self._count_locked() < self.settings.size:
            w = self._waiters.popleft()
            self._opening += 1
            w.may_open = True
            w.cond.notify()


def _captured_total(conn: PooledConnection) -> int | None:
    """Capture rows this connection's capture has written so far (`cdc.hooks` counts them in
    `changes`), read at check-in while the borrower still has it; None without one."""
    total = getattr(conn.capture, "changes", None)
    return total if isinstance(total, int) else None


def _close(conn: PooledConnection) -> None:
    try:
        conn.raw.close(True)  # force: also ends cursors a borrower kept
    except apsw.Error as e:
        log.debug("closing a pooled connection: %s", e)
