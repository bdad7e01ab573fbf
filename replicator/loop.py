"""The apply loop, shared by the apply worker process and the in-thread mode.

It applies up to the log's durable end (given by the harvesting side), records what it
did for the status, and deletes log segments once every target is durably past them.
Locked or full targets are retried; any other target or log error ends the loop by
raising, because continuing could lose data. It obeys the live controls
(docs/controls.md): a paused target is skipped (its checkpoint stays the lowest, so the
segments it still needs are kept), and a panic stop ends the loop with `PanicStop`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cdc.changelog.segments import delete_segments_before
from cdc.config import DaemonSettings
from cdc.control.controls import Controls, panic_error
from cdc.planning.plan import Plan
from cdc.status_file import TargetRuntime
from replicator.replicator import Replicator

log = logging.getLogger(__name__)

GC_INTERVAL = 5.0
RETRY_AFTER = 1.0  # seconds a locked or full target rests before it is tried again


class ApplyLoop:
    def __init__(
        self,
        plan: Plan,
        log_dir: str,
        settings: DaemonSettings,
        durable_end: Callable[[], int],
        log_first: int | None = None,
        archive_dir: str | None = None,
        controls: Callable[[], Controls] = Controls,
    ) -> None:
        self.plan = plan
        self.controls = controls  # polled once per step (cheap: `cdc.controls.ControlWatcher`)
        self.log_dir = log_dir
        self.archive_dir = archive_dir  # `[log] retention = "archive"`: keep applied segments
        self.settings = settings
        self.durable_end = durable_end
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.replicator = Replicator(plan, log_dir, settings)
        first = self.replicator.reader.first_offset() if log_first is None else log_first
        self.replicator.check_against_log(first, durable_end())
        self.runtime = {n: TargetRuntime(path=p) for n, p in plan.targets.items()}
        self.retry_at: dict[str, float] = {}  # locked or full targets: next try (monotonic)
        for name, cp in self.replicator.checkpoints.items():
            self.runtime[name].applied, self.runtime[name].offset = cp.events, cp.offset

    def caught_up(self, end: int | None = None, skip: frozenset[str] = frozenset()) -> bool:
        end = self.durable_end() if end is None else end
        return all(c.offset >= end for n, c in self.replicator.checkpoints.items() if n not in skip)

    def _step(self, end: int, paused: frozenset[str]) -> int:
        """One replicator step over the targets not paused. The replicator steps every
        target it holds, so the paused ones are held out for this step only; their
        checkpoints stay in, which keeps their segments and makes them durable at GC."""
        if not paused:
            return self.replicator.step(end)
        every = self.replicator.targets
        self.replicator.targets = {n: t for n, t in every.items() if n not in paused}
        try:
            return self.replicator.step(end)
        finally:
            self.replicator.targets = every

    def run(self) -> None:
        last_gc = 0.0
        while not self.stop.is_set():
            self.wake.clear()
            ctl = self.controls()
            if ctl.panic:
                raise panic_error(ctl)
            paused = frozenset(ctl.paused_apply)
            now = time.monotonic()
            resting = frozenset(t for t, at in self.retry_at.items() if at > now)
            end = self.durable_end()
            n = self._step(end, paused | resting)
            for name in self.replicator.errors.keys() - paused - resting:
                # Failed now: it rests, however often new log data wakes us meanwhile.
                self.retry_at[name] = time.monotonic() + RETRY_AFTER
            now = time.time()
            for name, rt in self.runtime.items():
                err = self.replicator.errors.get(name)
                rt.last_error = str(err) if err else None
            for name, res in self.replicator.last_results.items():
                rt = self.runtime[name]
                rt.applied, rt.offset = res.checkpoint.events, res.checkpoint.offset
                if res.newest_observed_at:  # harvest-to-apply delay of this batch, once
                    rt.last_lag = now - res.newest_observed_at
            self.replicator.last_results.clear()
            if now - last_gc > GC_INTERVAL:
                try:
                    delete_segments_before(
                        self.log_dir, self.replicator.durable_min_offset(), self.archive_dir
                    )
                except OSError as e:
                    # The archive's disk is full (retention = "archive"): the applied
                    # segments stay in the log, and are moved once there is room.
                    log.warning("change log: cannot retire applied segments now: %s", e)
                last_gc = now
            if n:
                continue  # more may be waiting; a resting target does not slow the others
            if self.replicator.errors:
                self.wake.wait(RETRY_AFTER)  # a target is locked or full: retry, don't spin
            elif self.caught_up(end, paused):
                self.wake.wait(self.settings.poll_interval)

    def close(self) -> None:
        self.replicator.close()
