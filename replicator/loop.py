"""The apply loop, shared by the apply worker process and the in-thread mode.

It applies up to the log's durable end (given by the harvesting side), records what it
did for the status, and deletes log segments once every target is durably past them.
Locked or full targets are retried; any other target or log error ends the loop by
raising, because continuing could lose data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cdc.changelog import delete_segments_before
from cdc.config import DaemonSettings
from cdc.plan import Plan
from cdc.status_file import TargetRuntime
from replicator.replicator import Replicator

GC_INTERVAL = 5.0


class ApplyLoop:
    def __init__(
        self,
        plan: Plan,
        log_dir: str,
        settings: DaemonSettings,
        durable_end: Callable[[], int],
        log_first: int | None = None,
        archive_dir: str | None = None,
    ) -> None:
        self.plan = plan
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
        for name, cp in self.replicator.checkpoints.items():
            self.runtime[name].applied, self.runtime[name].offset = cp.events, cp.offset

    def caught_up(self, end: int | None = None) -> bool:
        end = self.durable_end() if end is None else end
        return all(c.offset >= end for c in self.replicator.checkpoints.values())

    def run(self) -> None:
        last_gc = 0.0
        while not self.stop.is_set():
            self.wake.clear()
            end = self.durable_end()
            n = self.replicator.step(end)
            now = time.time()
            for name, rt in self.runtime.items():
                err = self.replicator.errors.get(name)
                rt.last_error = str(err) if err else None
            for name, res in self.replicator.last_results.items():
                rt = self.runtime[name]
                rt.applied, rt.offset = res.checkpoint.events, res.checkpoint.offset
                if res.newest_observed_at:
                    rt.last_lag = now - res.newest_observed_at
            if now - last_gc > GC_INTERVAL:
                delete_segments_before(
                    self.log_dir, self.replicator.durable_min_offset(), self.archive_dir
                )
                last_gc = now
            if self.replicator.errors:
                self.wake.wait(1.0)  # a target is locked or full: retry, don't spin
            elif n == 0 and self.caught_up(end):
                self.wake.wait(self.settings.poll_interval)

    def close(self) -> None:
        self.replicator.close()
