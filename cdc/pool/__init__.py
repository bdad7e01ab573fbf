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
from contextlib import AbstractContextManager

from cdc.config import Config, load_config
from cdc.errors import ConfigError, PoolTimeout
from cdc.pool.lending import (  # noqa: F401 - re-exported: the names cdc.pool always had
    _FATAL,
    CaptureFactory,
    Pool,
    _captured_total,
    _close,
    _Waiter,
)
from cdc.pool.opening import open_pooled
from cdc.pool.pooled import PooledConnection
from cdc.pool.registry import (  # noqa: F401 - re-exported: the names cdc.pool always had
    _capture_factory,
    _locate,
    _Registry,
)
from cdc.pool.stats import PoolMetrics, read_pool_metrics

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


# -- the one registry of this process ------------------------------------------------------


_state: _Registry | None = None
_state_lock = threading.Lock()
_process_hooks_installed = False
_forked_away: list[_Registry] = []  # a forked child's copy of its parent's pools


def configure(config: str | os.PathLike[str] | Config) -> None:
    """Use this configuration (a `cdc.toml` path or a loaded `Config`) from now on. Pools of
    an earlier configuration are closed (lent connections as they come back)."""
    cfg = config if isinstance(config, Config) else load_config(config, postgres=True)
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
            _state = _Registry(load_config(path, postgres=True))
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
