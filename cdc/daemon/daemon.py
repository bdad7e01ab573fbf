"""The daemon: harvest loop and apply loop in one process, woken by file events.

Two threads share one `LogWriter`: the harvester appends whole batches, the applier
reads only up to the writer's durable end. Wake-ups come from watchdog (inotify) events on
the legacy files and their -wal/-journal companions, with a polling fallback, so an idle
daemon costs nothing and a busy one reacts within milliseconds. A source that fails
(locked, vanished) is backed off and reported, without stopping the others; a damaged log
or a target that refuses writes stops the daemon, because continuing could lose data.
Operators steer it live through control files (`cdc.controls`, docs/controls.md), which the
main thread polls: paused sources are not touched, throttled ones are paced, a panic stops it.

Schema drift is followed live (docs/architecture.md, "Schema drift"): a changed table shape
goes into the log before rows of that shape; a table that appears and a rule maps makes the
daemon start over in-process with a new plan (`run_daemon`), which installs capture on it
and snapshots it; one no rule maps is named and left alone while the rest runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import apsw

from cdc.capture.harvester import Harvester
from cdc.changelog.segments import LogWriter
from cdc.config import Config
from cdc.control import repair_requests as repair
from cdc.control.controls import ControlWatcher, describe, panic_error
from cdc.control.pacing import Pacer, TimedWriter
from cdc.daemon.backflow_thread import BackflowThread
from cdc.daemon.file_wakes import watch_files
from cdc.daemon.lifecycle import announce_stop, announce_up
from cdc.daemon.new_tables import NewTables
from cdc.errors import CdcError, DaemonError, LogCorruptError, PanicStop, SourceError, TargetError
from cdc.fsutil import makedirs_private
from cdc.planning.plan import Plan
from cdc.planning.resolve import LOCKED_START_WAIT, daemon_plan, excluded_by_rule
from cdc.stages import kept_out as moved
from cdc.stages import kept_out_apply as moved_apply
from cdc.stages.record import capture_removed_by_finalize, finalized_sources
from cdc.status_file import (
    BackflowRuntime,
    DaemonStatus,
    SourceRuntime,
    TargetRuntime,
    write_status,
)
from replicator.loop import ApplyLoop
from replicator.worker import WorkerHandle, read_apply_status

log = logging.getLogger(__name__)

REPAIR_POLL = 0.25  # seconds between looks for repair requests, per source


def lock_state_dir(state_dir: str) -> int:
    """Hold an exclusive lock for the daemon's lifetime: one writer per log, ever."""
    makedirs_private(state_dir)  # every folder it creates on the way is 0700 too
    fd = os.open(os.path.join(state_dir, "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise DaemonError(
            f"{state_dir}: another cdc daemon{pid} is running on this state dir",
            hint=f"stop it first{f' (kill -TERM {holder})' if pid else ''}, "
            "or watch it with `cdc status`",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Daemon:
    def __init__(
        self, cfg: Config, plan: Plan | None = None, stop_event: threading.Event | None = None
    ) -> None:
        self.cfg = cfg
        self.settings = cfg.daemon
        # A panic file left in place means a human stopped the migration on purpose: it
        # stays stopped, before anything is locked or opened, until `cdc resume --panic`.
        self.control_watch = ControlWatcher(cfg.state_dir)
        self.controls = self.control_watch.current()
        if self.controls.panic:
            raise panic_error(self.controls)
        # Given by the CLI, which installs its signal handlers before the (slow) start, so
        # a SIGTERM that arrives while sources open still ends in a clean stop. The threads
        # wait on our own event: stopping to start over with a new plan is not a SIGTERM.
        self.requested_stop = stop_event or threading.Event()
        self.stop_event = threading.Event()
        self.replan = False  # stopped to start over: a new table is mapped (`run_daemon`)
        self.apply_wake = threading.Event()
        self.fatal: CdcError | None = None
        self._lock_fd = lock_state_dir(cfg.state_dir)
        self.new_tables = NewTables(cfg)
        self.plan = self.new_tables.keep_new_out(plan or daemon_plan(cfg, self.requested_stop))
        for source, table in self.plan.unmapped:
            log.warning(
                "table %s of source %s is matched by no rule: it is not captured "
                "(map it to a target or exclude it; `cdc status` lists it)",
                table,
                source,
                extra={"source": source, "table": table},
            )
        self.writer = LogWriter(cfg.log_dir, self.settings.segment_bytes)
        self.harvesters: list[Harvester] = []
        self.runtime: dict[str, SourceRuntime] = {}
        self._open_sources()
        self.wakes = {h.plan.name: threading.Event() for h in self.harvesters}
        self.worker: WorkerHandle | None = None
        self.applier: ApplyLoop | None = None
        if self.settings.apply_worker:
            self.worker = WorkerHandle(cfg, self.plan, self.writer.end_offset)
        else:
            moved_apply.watch(cfg.state_dir)  # the apply's own refusal (cdc.moved_apply)
            self.applier = ApplyLoop(
                self.plan,
                cfg.log_dir,
                self.settings,
                lambda: self.writer.end_offset,
                archive_dir=cfg.log_archive_dir if cfg.log.retention == "archive" else None,
                controls=lambda: self.controls,
            )
        self.started_at = time.time()
        self.metrics_url: str | None = None  # where `cdc run --metrics-addr` serves, if it does
        self._observer = None
        self._released: set[str] = set()  # harvest threads done for good (finalized source)
        self.backflow: dict[str, BackflowRuntime] = {}

    def _open_sources(self) -> None:
        """A harvester per source that has tables and is not finalized, opened."""
        released = finalized_sources(self.cfg.state_dir)
        for sp in self.plan.sources:
            if not sp.tables or sp.name in released:
                continue
            h = Harvester(sp, self.writer, self.settings)
            h.keep_out = moved.KeepOut(self.cfg.state_dir, sp.name, sp.path)
            self._open_patiently(h)
            self.harvesters.append(h)
            self.runtime[sp.name] = SourceRuntime(
                path=sp.path,
                through_seq=h.position.through_seq,
                snapshot=h.snapshot_state(),
                capture=sp.capture,
            )

    def _open_patiently(self, h: Harvester) -> None:
        """Open a source, waiting out a bot's long write transaction (see `daemon_plan`)."""
        deadline = time.monotonic() + LOCKED_START_WAIT
        said = False
        while True:
            try:
                return h.open()
            except apsw.BusyError as e:
                h.close()
                if time.monotonic() > deadline or self.requested_stop.is_set():
                    raise SourceError(
                        f"{h.plan.path}: stayed locked while the daemon started: {e}",
                        hint="a bot holds a write transaction that long; start again once it ends",
                    ) from e
                if not said:
                    log.warning("source %s is locked by another process: waiting", h.plan.name)
                    said = True
                self.requested_stop.wait(0.5)

    # -- threads ---------------------------------------------------------------------------
    def _harvest_loop(self, h: Harvester) -> None:
        """One thread per source: a bot holding one file's lock delays only that file.

        It obeys the source's controls: while paused it does not touch the file at all (no
        harvest, snapshot chunk, trim or repair), and a throttle paces it (`Pacer`)."""
        name = h.plan.name
        rt = self.runtime[name]
        wake = self.wakes[name]
        pacer = Pacer(self.settings)
        h.writer = timed = TimedWriter(self.writer)
        next_repair_look = 0.0
        failing = False  # the last pass failed (said once in the log)
        while not self.stop_event.is_set():
            wake.clear()
            pause = self.settings.poll_interval
            ctl = self.controls
            if name in ctl.paused_harvest:
                self.stop_event.wait(pause)  # not `wake`: the bots' writes must not spin us
                continue
            pacer.use(ctl.throttles.get(name))
            delay = pacer.delay()
            if delay:
                self.stop_event.wait(delay)
                continue
            try:
                if time.monotonic() >= next_repair_look:
                    next_repair_look = time.monotonic() + REPAIR_POLL
                    self._serve_repairs(h)
                busy = self._harvest_step(h, rt, pacer, timed)
                if failing:
                    log.info("source %s: harvesting again", name)
                    failing = False
                rt.last_error = h.trim_error  # a full legacy disk stops only the trim
                if busy:
                    continue
            except apsw.BusyError:
                pause = 0.05  # a bot held the lock past our busy timeout: retry soon
            except LogCorruptError as e:
                return self._die(e)
            except (CdcError, apsw.Error, OSError) as e:
                if name in finalized_sources(self.cfg.state_dir):
                    log.info("source %s: finalized (archived, capture removed); done", name)
                    rt.snapshot, rt.last_error = "finalized", None
                    self._released.add(threading.current_thread().name)
                    h.close()  # let go of the file: it is the archive's original now
                    return
                msg = f"{type(e).__name__}: {e}"
                if capture_removed_by_finalize(self.cfg.state_dir, h.plan, e):
                    msg = "capture removed by `cdc finalize`: waiting for it to finish"
                    if msg != rt.last_error:
                        log.info("source %s: %s", name, msg)
                elif msg != rt.last_error:  # once per failure, not at every retry
                    log.error("source %s: %s", name, e)
                rt.last_error, failing = msg, True
                rt.errors += 1
                # Back off for real: file events (the bots' writes, or the journal of our
                # own failed write) must not turn the retry into a busy loop.
                self.stop_event.wait(1.0)
                continue
            wake.wait(pause)

    def _harvest_step(
        self, h: Harvester, rt: SourceRuntime, pacer: Pacer, timed: TimedWriter
    ) -> bool:
        """One harvest and, while the snapshot runs, one chunk, each in the batch size the
        pacer allows and timed without the log append. True: there is more to do now."""
        h.settings = pacer.settings()
        before, timed.seconds, t = h.position.through_seq, 0.0, time.monotonic()
        began = time.time()  # a change captured after this may not be in `res`
        res = h.harvest()
        pacer.done(
            "harvest",
            res.through_seq - before,
            h.settings.harvest_batch,
            time.monotonic() - t - timed.seconds,
        )
        if not res.full:  # the pass read the capture table to its end
            rt.heartbeat_at = began
        rt.harvested += res.events
        rt.through_seq = res.through_seq
        rt.hook_rows, rt.foreign_rows = h.hook_rows, h.foreign_rows
        if h.lost or rt.lost_tables:
            rt.lost_tables = {
                t: why
                for t, why in h.lost.items()
                if not excluded_by_rule(self.cfg, h.plan.name, t)
            }
        busy = res.full
        if h.snapshot_pending:
            busy = True
            if not pacer.delay():
                h.settings = pacer.settings()
                timed.seconds, t = 0.0, time.monotonic()
                rows = h.snapshot_chunk()
                spent = time.monotonic() - t - timed.seconds
                pacer.done("snapshot", rows, h.settings.snapshot_chunk, spent)
                rt.snapshot_rows += rows
        rt.snapshot_done = not h.snapshot_pending
        rt.snapshot = h.snapshot_state()
        if res.events or busy:
            self.apply_wake.set()
        return busy

    def _serve_repairs(self, h: Harvester) -> None:
        for req in repair.pending(self.cfg.state_dir, h.plan.name):
            try:
                n = h.resync(req.table, req.keys)
                done = repair.RepairDone(req.id, self.writer.end_offset, n, time.time())
            except CdcError as e:
                done = repair.RepairDone(req.id, 0, 0, time.time(), error=str(e))
            repair.complete(self.cfg.state_dir, done)
            self.apply_wake.set()

    def _apply_loop(self) -> None:
        """In-thread mode: apply here. Worker mode: feed the worker the durable end."""
        if self.applier is not None:
            self.applier.stop = self.stop_event
            self.applier.wake = self.apply_wake
            try:
                self.applier.run()
            except (TargetError, LogCorruptError, PanicStop, apsw.Error) as e:
                self._die(e)
            return
        while not self.stop_event.is_set():
            self.apply_wake.clear()
            self.worker.advance(self.writer.end_offset)
            if not self.worker.alive():
                return self._die(self.worker.failure())
            self.apply_wake.wait(0.2)

    def _backflow_loop(self) -> None:
        """The rollback window (`BackflowThread`); it never stops forward replication."""
        BackflowThread(self.cfg, self.plan, self.stop_event, self.backflow).run()

    def target_offsets(self) -> dict[str, int]:
        """Each target's checkpoint, read from the target files (for tests and benchmarks)."""
        from checkpoints.store import read_checkpoint

        return {n: read_checkpoint(p) for n, p in self.plan.targets.items()}

    def _status_loop(self) -> None:
        while not self.stop_event.wait(0.5):
            self.write_status()

    def _guard(self, loop, *args) -> None:  # noqa: ANN001
        """A bug in a loop stops the daemon with its message instead of a silent dead thread."""
        try:
            loop(*args)
        except Exception as e:  # noqa: BLE001 - reported as the daemon's fatal error
            log.exception("worker %s crashed", loop.__name__)
            self._die(e)

    def _poll_controls(self) -> None:
        """The main thread's look at the control folder; the other threads read
        `self.controls` (one reference, swapped whole)."""
        ctl = self.control_watch.current()
        if ctl != self.controls:
            log.warning("controls now: %s", "; ".join(describe(ctl)) or "none")
            self.controls = ctl
        if ctl.panic:
            self._die(panic_error(ctl))

    def _consider_new_tables(self) -> None:
        """Start over when a bot created a table the rules map (`NewTables`)."""
        if self.new_tables.replan_needed(self.harvesters, self.plan):
            self.replan = True
            self.stop_event.set()

    def _die(self, e: Exception) -> None:
        log.critical("stopping: %s", e)
        self.fatal = e if isinstance(e, CdcError) else DaemonError(f"{type(e).__name__}: {e}")
        self.stop_event.set()

    # -- lifecycle -------------------------------------------------------------------------
    def write_status(self, state: str = "running") -> None:
        try:
            self._write_status(state)
        except OSError as e:  # a full state disk must not kill replication by itself
            log.warning("cannot write the status file: %s", e)

    def _write_status(self, state: str) -> None:
        if self.applier is not None:
            targets = dict(self.applier.runtime)
        else:
            ws = read_apply_status(self.cfg.state_dir)
            targets = dict(ws.targets) if ws and ws.pid == self.worker.proc.pid else {}
        for name, path in self.plan.targets.items():
            targets.setdefault(name, TargetRuntime(path=path))
        write_status(
            self.cfg.state_dir,
            DaemonStatus(
                pid=os.getpid(),
                state=state,
                started_at=self.started_at,
                updated_at=time.time(),
                log_end=self.writer.end_offset,
                sources=dict(self.runtime),
                targets=targets,
                backflow=dict(self.backflow),
                error=str(self.fatal) if self.fatal else None,
            ),
        )

    def _watch(self) -> None:
        if self.settings.watch:
            self._observer = watch_files(
                {h.plan.path: self.wakes[h.plan.name] for h in self.harvesters}
            )

    def _verifier_threads(self) -> list[threading.Thread]:
        if not self.cfg.verify.continuous:
            return []
        from verifier.continuous import ContinuousVerifier

        v = ContinuousVerifier(self.cfg, self.plan, self.stop_event)
        return [threading.Thread(target=self._guard, args=(v.run,), name="verify", daemon=True)]

    def run(self, install_signals: bool = True) -> int:
        """Run until SIGINT/SIGTERM or a fatal error; return the process exit code."""
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop_event.set())
        self._watch()
        if self.controls.active:  # a restarted daemon that looks idle should say why
            log.warning("controls in force: %s", "; ".join(describe(self.controls)))
        threads = (
            [
                threading.Thread(
                    target=self._guard, args=(self._apply_loop,), name="apply", daemon=True
                )
            ]
            + [
                threading.Thread(
                    target=self._guard,
                    args=(self._harvest_loop, h),
                    name=f"harvest-{h.plan.name}",
                    daemon=True,
                )
                for h in self.harvesters
            ]
            + [
                threading.Thread(
                    target=self._guard, args=(self._backflow_loop,), name="backflow", daemon=True
                )
            ]
            + self._verifier_threads()
            + [
                threading.Thread(
                    target=self._guard, args=(self._status_loop,), name="status", daemon=True
                )
            ]
        )
        for t in threads:
            t.start()
        announce_up(len(self.harvesters), self.plan.targets, self.cfg.state_dir, self.metrics_url)
        while not self.stop_event.wait(0.2):
            if self.requested_stop.is_set():
                self.stop_event.set()
                break
            self._poll_controls()
            self._consider_new_tables()
            if self.stop_event.is_set():
                break  # stopping (a thread's fatal error): threads end, none "died"
            if not all(t.is_alive() or t.name in self._released for t in threads[:-1]):
                self._die(DaemonError("a worker thread died unexpectedly"))
        for ev in self.wakes.values():
            ev.set()
        self.apply_wake.set()
        for t in threads:
            t.join(timeout=30)
        self.close()
        code = self.fatal.exit_code if self.fatal else 0
        announce_stop(
            code, self.started_at, self.fatal, self.replan and not self.requested_stop.is_set()
        )
        return code

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        for h in self.harvesters:
            h.close()
        if self.worker is not None:
            self.worker.advance(self.writer.end_offset)
            self.worker.stop()
        if self.applier is not None:
            self.applier.close()
        failed = self.fatal is not None and not isinstance(self.fatal, PanicStop)
        again = self.replan and not failed and not self.requested_stop.is_set()
        # Starting over to capture a new table: not "stopped" (the process goes on), nor
        # "running" (its figures are the old daemon's: a caller waiting for "synced" would
        # take them for the new one's).
        self.write_status("restarting" if again else "failed" if failed else "stopped")
        self.writer.close()
        os.close(self._lock_fd)


def run_daemon(
    cfg: Config,
    stop_event: threading.Event,
    on_start: Callable[[Daemon], object] | None = None,
) -> tuple[Daemon, int]:
    """Run daemons until one stops for good; returns the last one and its exit code.

    A daemon that found a newly mapped table stops all its threads (its harvests, the
    apply worker) cleanly and a new one starts with the plan resolved again: its harvester
    installs capture on the new table in one short transaction and snapshots it, so every
    row the bot wrote before that is copied, and every later one captured."""
    while True:
        daemon = Daemon(cfg, stop_event=stop_event)
        if on_start is not None:
            on_start(daemon)
        code = daemon.run(install_signals=False)
        if not daemon.replan or daemon.fatal is not None or stop_event.is_set():
            return daemon, code
