"""The daemon: harvest loop and apply loop in one process, woken by file events.

Two threads share one `LogWriter`: the harvester appends whole batches, the applier
reads only up to the writer's durable end. Wake-ups come from watchdog (inotify) events on
the legacy files and their -wal/-journal companions, with a polling fallback, so an idle
daemon costs nothing and a busy one reacts within milliseconds. A source that fails
(locked, vanished) is backed off and reported, without stopping the others; a damaged log
or a target that refuses writes stops the daemon, because continuing could lose data.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time

import apsw
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from cdc.changelog import LogWriter
from cdc.config import Config
from cdc.errors import CdcError, DaemonError, LogCorruptError, TargetError
from cdc.harvester import Harvester
from cdc.plan import Plan, resolve_plan
from cdc.status_file import DaemonStatus, SourceRuntime, TargetRuntime, write_status
from replicator import Replicator

log = logging.getLogger(__name__)


class _Wake(FileSystemEventHandler):
    def __init__(self, paths: set[str], event: threading.Event) -> None:
        self.paths = paths
        self.event = event

    def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's type
        if event.src_path in self.paths:
            self.event.set()


def lock_state_dir(state_dir: str) -> int:
    """Hold an exclusive lock for the daemon's lifetime: one writer per log, ever."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonError(
            f"{state_dir}: another cdc daemon is running on this state dir",
            hint="stop it first (or use `cdc status` to watch it)",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Daemon:
    def __init__(self, cfg: Config, plan: Plan | None = None) -> None:
        self.cfg = cfg
        self.settings = cfg.daemon
        self.stop_event = threading.Event()
        self.harvest_wake = threading.Event()
        self.apply_wake = threading.Event()
        self.fatal: CdcError | None = None
        self._lock_fd = lock_state_dir(cfg.state_dir)
        self.plan = plan or resolve_plan(cfg)
        self.writer = LogWriter(cfg.log_dir, self.settings.segment_bytes)
        self.harvesters: list[Harvester] = []
        self.runtime: dict[str, SourceRuntime] = {}
        for sp in self.plan.sources:
            if not sp.tables:
                continue
            h = Harvester(sp, self.writer, self.settings)
            h.open()
            self.harvesters.append(h)
            self.runtime[sp.name] = SourceRuntime(
                path=sp.path, through_seq=h.position.through_seq, snapshot=h.snapshot_state()
            )
        self.replicator = Replicator(self.plan, cfg.log_dir, self.settings)
        self.target_runtime = {n: TargetRuntime(path=p) for n, p in self.plan.targets.items()}
        self.started_at = time.time()
        self._observer = None

    # -- threads ---------------------------------------------------------------------------
    def _harvest_loop(self) -> None:
        backoff: dict[str, float] = {}
        while not self.stop_event.is_set():
            self.harvest_wake.clear()
            busy = False
            for h in self.harvesters:
                name = h.plan.name
                if backoff.get(name, 0) > time.monotonic():
                    continue
                rt = self.runtime[name]
                try:
                    res = h.harvest()
                    rt.harvested += res.events
                    rt.through_seq = res.through_seq
                    busy |= res.events >= self.settings.harvest_batch
                    if h.snapshot_pending:
                        rt.snapshot_rows += h.snapshot_chunk()
                        busy = True
                    rt.snapshot_done = not h.snapshot_pending
                    rt.snapshot = h.snapshot_state()
                    if res.events or busy:
                        self.apply_wake.set()
                    rt.last_error = None
                    backoff.pop(name, None)
                except apsw.BusyError:
                    backoff[name] = time.monotonic() + 0.05  # a bot holds the lock: retry soon
                except LogCorruptError as e:
                    return self._die(e)
                except (CdcError, apsw.Error, OSError) as e:
                    rt.last_error = f"{type(e).__name__}: {e}"
                    rt.errors += 1
                    log.error("source %s: %s", name, e)
                    backoff[name] = time.monotonic() + 1.0
            if not busy:
                self.harvest_wake.wait(self.settings.poll_interval)

    def _apply_loop(self) -> None:
        last_gc = 0.0
        while not self.stop_event.is_set():
            self.apply_wake.clear()
            try:
                n = self.replicator.step(self.writer.end_offset)
            except (TargetError, LogCorruptError, apsw.Error) as e:
                return self._die(e)
            now = time.time()
            for name, res in self.replicator.last_results.items():
                rt = self.target_runtime[name]
                rt.applied = res.checkpoint.events
                rt.offset = res.checkpoint.offset
                if res.newest_observed_at:
                    rt.last_lag = now - res.newest_observed_at
            if now - last_gc > 5:
                self.writer.delete_segments_before(self.replicator.min_offset())
                last_gc = now
            if n == 0 and all(
                c.offset >= self.writer.end_offset for c in self.replicator.checkpoints.values()
            ):
                self.apply_wake.wait(self.settings.poll_interval)

    def _status_loop(self) -> None:
        while not self.stop_event.wait(0.5):
            self.write_status()

    def _guard(self, loop) -> None:  # noqa: ANN001
        """A bug in a loop stops the daemon with its message instead of a silent dead thread."""
        try:
            loop()
        except Exception as e:  # noqa: BLE001 - reported as the daemon's fatal error
            log.exception("worker %s crashed", loop.__name__)
            self._die(e)

    def _die(self, e: Exception) -> None:
        log.critical("stopping: %s", e)
        self.fatal = e if isinstance(e, CdcError) else DaemonError(f"{type(e).__name__}: {e}")
        self.stop_event.set()

    # -- lifecycle -------------------------------------------------------------------------
    def write_status(self, state: str = "running") -> None:
        write_status(
            self.cfg.state_dir,
            DaemonStatus(
                pid=os.getpid(),
                state=state,
                started_at=self.started_at,
                updated_at=time.time(),
                log_end=self.writer.end_offset,
                sources=dict(self.runtime),
                targets=dict(self.target_runtime),
                error=str(self.fatal) if self.fatal else None,
            ),
        )

    def _watch(self) -> None:
        if not self.settings.watch:
            return
        paths: dict[str, set[str]] = {}
        for h in self.harvesters:
            p = os.path.abspath(h.plan.path)
            paths.setdefault(os.path.dirname(p), set()).update(
                {p, p + "-wal", p + "-journal"}
            )
        self._observer = Observer()
        for d, ps in paths.items():
            self._observer.schedule(_Wake(ps, self.harvest_wake), d, recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def run(self, install_signals: bool = True) -> int:
        """Run until SIGINT/SIGTERM or a fatal error; return the process exit code."""
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop_event.set())
        self._watch()
        threads = [
            threading.Thread(target=self._guard, args=(loop,), name=loop.__name__, daemon=True)
            for loop in (self._harvest_loop, self._apply_loop, self._status_loop)
        ]
        for t in threads:
            t.start()
        log.info("daemon running: %d sources, %d targets", len(self.harvesters),
                 len(self.replicator.targets))
        while not self.stop_event.wait(0.2):
            if not all(t.is_alive() for t in threads[:2]):
                self._die(DaemonError("a worker thread died unexpectedly"))
        self.harvest_wake.set()
        self.apply_wake.set()
        for t in threads:
            t.join(timeout=30)
        self.close()
        return self.fatal.exit_code if self.fatal else 0

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self.write_status("failed" if self.fatal else "stopped")
        for h in self.harvesters:
            h.close()
        self.replicator.close()
        self.writer.close()
        os.close(self._lock_fd)
