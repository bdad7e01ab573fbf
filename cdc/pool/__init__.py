"""One well-behaved connection pool per database, for the bots (docs/pool.md).

Before consolidation every bot opened its own SQLite files with its own settings (or none:
no busy timeout, so a concurrent commit failed at once). After cutover the bots reach the
consolidated databases through this module instead:

    from cdc import pool
    pool.configure("cdc.toml")            # or set CDC_CONFIG
    with pool.connection("core") as conn:
        conn.execute("INSERT ...")

Per process and database, a `Pool` opens at most `pool.size` connections, lazily, all
configured in one place (`open_pooled`), and lends each to one borrower at a time. A
borrower that finds none free queues (first come, first served) for at most
`pool.checkout_timeout` seconds, then gets `PoolTimeout`. Each process publishes its pools'
figures for `cdc status` (`cdc.pool_metrics`).

Pool connections are the bots' connections: they do not get sqlite-cdc's fence pass
(`cdc.sqlconn.allow_writes`), so a fenced table refuses them like any bot.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import apsw
import msgspec

from cdc.capture.hooks import capture_for
from cdc.config import Config, PoolSettings, load_config
from cdc.errors import CdcError, ConfigError, PoolTimeout
from cdc.pool.opening import open_pooled
from cdc.pool.pooled import PooledConnection
from cdc.pool.stats import PoolMetrics, read_pool_metrics, write_pool_metrics

__all__ = [
    "Pool",
    "PoolMetrics",
    "PoolTimeout",
    "close_all",
    "configure",
    "connection",
    "metrics",
    "open_pooled",
    "read_pool_metrics",
]

log = logging.getLogger(__name__)

CaptureFactory = Callable[[apsw.Connection], object | None]

# Errors after which a connection is not trusted again: it is closed and replaced.
_FATAL = (
    apsw.ConnectionClosedError,
    apsw.CorruptError,
    apsw.NotADBError,
    apsw.IOError,
    apsw.CantOpenError,
)


# -- one database's pool ------------------------------------------------------------------


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


# -- the process's pools, by database name --------------------------------------------------


class _Registry:
    """This process's pools for one configuration, and the writer of its metrics file."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.lock = threading.Lock()
        self.pools: dict[str, Pool] = {}
        self._write_lock = threading.Lock()
        self._last_write = float("-inf")
        self._write_failed = False

    def pool(self, name: str) -> Pool:
        with self.lock:
            p = self.pools.get(name)
            if p is None:
                path, is_target = _locate(self.cfg, name)
                factory = None if is_target else _capture_factory(self.cfg, name)
                p = Pool(name, path, self.cfg.pool, is_target, factory, on_checkin=self.maybe_write)
                self.pools[name] = p
            return p

    def metrics(self) -> list[PoolMetrics]:
        with self.lock:
            pools = sorted(self.pools.values(), key=lambda p: p.name)
        return [p.metrics() for p in pools]

    def maybe_write(self) -> None:
        """Publish the metrics if `metrics_interval` has passed. Called at every check-in;
        a borrower never waits for another thread's write."""
        interval = self.cfg.pool.metrics_interval
        if time.monotonic() - self._last_write < interval:
            return
        if not self._write_lock.acquire(blocking=False):
            return
        try:
            if time.monotonic() - self._last_write >= interval:
                self._write()
        finally:
            self._write_lock.release()

    def write_now(self) -> None:
        with self._write_lock:
            self._write()

    def _write(self) -> None:
        self._last_write = time.monotonic()
        try:
            write_pool_metrics(self.cfg.state_dir, self.metrics())
        except OSError as e:  # metrics must never break a bot's write
            if not self._write_failed:
                log.warning("cannot write pool metrics to %s: %s", self.cfg.state_dir, e)
            self._write_failed = True

    def close(self) -> None:
        """Close every pool, publish their final figures, forget them."""
        with self.lock:
            pools = list(self.pools.values())
        for p in pools:
            p.close()
        self.write_now()
        with self.lock:
            for p in pools:
                if self.pools.get(p.name) is p:
                    del self.pools[p.name]


def _locate(cfg: Config, name: str) -> tuple[str, bool]:
    """(path, is_target) of a target or source name; targets win a name both declare."""
    if name in cfg.targets:
        return cfg.targets[name], True
    from cdc.planning.resolve import (
        expand_sources,  # globs are expanded now: a new file may have come
    )

    for source, path, _required in expand_sources(cfg):
        if source == name:
            return path, False
    known = ", ".join(sorted(cfg.targets))
    raise ConfigError(
        f"{name!r}: no target or source of that name in {cfg.config_path or 'the config'}",
        hint=f"targets: {known}; sources are listed under [[sources]]",
    )


def _capture_factory(cfg: Config, name: str) -> CaptureFactory | None:
    """In-process capture for a source that asks for it (`capture = "hooks"`)."""
    return capture_for(cfg, name)


_state: _Registry | None = None
_state_lock = threading.Lock()
_process_hooks_installed = False
_forked_away: list[_Registry] = []  # a forked child's copy of its parent's pools


def configure(config: str | os.PathLike[str] | Config) -> None:
    """Use this configuration (a `cdc.toml` path or a loaded `Config`) from now on. Pools of
    an earlier configuration are closed (lent connections as they come back)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    global _state
    with _state_lock:
        if _state is not None and _state.cfg == cfg:
            return  # several modules of one bot may each call it at start-up
        old, _state = _state, _Registry(cfg)
        _install_process_hooks()
    if old is not None:
        old.close()


def connection(name: str) -> AbstractContextManager[PooledConnection]:
    """Borrow a connection to a target (`core`, ...) or a legacy source, by its cdc.toml
    name: `with pool.connection("core") as conn: ...`. Unconfigured, the process reads the
    config named by the CDC_CONFIG environment variable."""
    return _registry().pool(name).connection()


def metrics() -> list[PoolMetrics]:
    """This process's pools, one entry per database used so far."""
    st = _state
    return st.metrics() if st is not None else []


def close_all() -> None:
    """Publish the final metrics and close every pool (also run at interpreter exit). The
    configuration stays: a later `connection()` opens new pools."""
    st = _state
    if st is not None:
        st.close()


def _registry() -> _Registry:
    global _state
    st = _state
    if st is not None:
        return st
    with _state_lock:
        if _state is None:
            path = os.environ.get("CDC_CONFIG")
            if not path:
                raise ConfigError(
                    "cdc.pool is not configured",
                    hint="call cdc.pool.configure('cdc.toml') or set CDC_CONFIG",
                )
            _state = _Registry(load_config(path))
            _install_process_hooks()
        return _state


def _install_process_hooks() -> None:
    """At exit: final metrics. After fork: the child starts with no pools (the parent's
    connections must not be used, nor closed, from another process). Installed on first
    use, not at import."""
    global _process_hooks_installed
    if _process_hooks_installed:
        return
    _process_hooks_installed = True
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    try:
        close_all()
    except Exception as e:  # noqa: BLE001 - exiting anyway; say why the figures are missing
        log.warning("closing the connection pools at exit: %s", e)


def _after_fork_in_child() -> None:
    global _state, _state_lock
    _state_lock = threading.Lock()  # it may have been held by a thread of the parent
    if _state is not None:
        # Kept, never closed: closing a copy of a connection that was mid-transaction in
        # the parent could roll back (rewrite) pages the parent is still writing.
        _forked_away.append(_state)
        _state = _Registry(_state.cfg)
