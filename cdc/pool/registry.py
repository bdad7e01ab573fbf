"""This process's pools for one configuration, by database name, and the writer of their
metrics file. Split from `cdc.pool`, which keeps the one registry of the process (and what
happens to it at exit and after fork).

Hook capture (`cdc.capture.hooks`) is imported on first use only: a bot that borrows
connections never loads it unless a source asks for `capture = "hooks"`."""

from __future__ import annotations

import logging
import threading
import time

from cdc.config import Config, expand_sources
from cdc.errors import ConfigError
from cdc.pool.lending import CaptureFactory, Pool
from cdc.pool.recorded import write_recorded
from cdc.pool.stats import PoolMetrics, write_pool_metrics
from cdc.postgres.dsn import is_postgres

log = logging.getLogger("cdc.pool")  # the package's name: where operators look for it


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
                if is_target and is_postgres(path):
                    from cdc.pool.pg_pool import PgPool  # psycopg loaded only for one

                    p = PgPool(name, path, self.cfg.pool, on_checkin=self.maybe_write)
                    self.pools[name] = p
                    return p
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
            if self.cfg.pool.record_queries:
                with self.lock:
                    pools = list(self.pools.values())
                write_recorded(self.cfg.state_dir, [s for p in pools for s in p.recorded()])
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
    for source, path, _required in expand_sources(cfg):  # now: a new file may have come
        if source == name:
            return path, False
    known = ", ".join(sorted(cfg.targets))
    raise ConfigError(
        f"{name!r}: no target or source of that name in {cfg.config_path or 'the config'}",
        hint=f"targets: {known}; sources are listed under [[sources]]",
    )


def _capture_factory(cfg: Config, name: str) -> CaptureFactory | None:
    """In-process capture for a source that asks for it (`capture = "hooks"`). The capture
    code is imported only then."""
    if cfg.capture_of(name) != "hooks":
        return None  # what capture_for answers too, without importing it
    from cdc.capture.hooks import capture_for

    return capture_for(cfg, name)
