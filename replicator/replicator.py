"""Drives apply_batch for every target from its own checkpoint.

Targets advance independently (each has its own checkpoint in its own file), so a target
that is locked or full does not hold the others back. Segments are deleted only once the
slowest target is past them.
"""

from __future__ import annotations

import logging

from cdc.changelog import LogReader
from cdc.config import DaemonSettings
from cdc.errors import TargetBusyError, TargetError
from cdc.plan import Plan
from replicator.apply import ApplyResult, apply_batch
from replicator.target import TargetDB

log = logging.getLogger(__name__)


class Replicator:
    def __init__(self, plan: Plan, log_dir: str, settings: DaemonSettings) -> None:
        self.plan = plan
        self.settings = settings
        self.reader = LogReader(log_dir)
        self.targets: dict[str, TargetDB] = {}
        try:
            for name, path in sorted(plan.targets.items()):
                self.targets[name] = TargetDB(name, path, settings.busy_timeout_ms)
        except Exception:
            self.close()
            raise
        self.checkpoints = {n: t.checkpoints.load() for n, t in self.targets.items()}
        self.last_results: dict[str, ApplyResult] = {}
        self.errors: dict[str, Exception] = {}

    def close(self) -> None:
        for t in self.targets.values():
            t.close()
        self.targets = {}

    def step(self, limit_offset: int | None) -> int:
        """Apply at most one batch per target, never past `limit_offset`; return events applied."""
        total = 0
        cache: dict[int, list] = {}
        for name, target in self.targets.items():
            cp = self.checkpoints[name]
            if limit_offset is not None and cp.offset >= limit_offset:
                continue
            entries = cache.get(cp.offset)
            if entries is None:
                entries = self.reader.read(
                    cp.offset, limit_offset, max_frames=self.settings.apply_batch
                )
                cache[cp.offset] = entries
            if not entries:
                continue
            try:
                res = apply_batch(target, self.plan, entries, cp)
            except TargetBusyError as e:
                # Nothing was committed; the other targets go on, this one retries later.
                self.errors[name] = e
                log.warning("target %s: %s", name, e, extra={"target": name, "offset": cp.offset})
                continue
            self.errors.pop(name, None)
            self.checkpoints[name] = res.checkpoint
            self.last_results[name] = res
            total += res.events
        return total

    def check_against_log(self, log_first: int, log_end: int) -> None:
        """Refuse to run when a checkpoint is outside the log (state dir reset, wrong log)."""
        for name, cp in self.checkpoints.items():
            if cp.offset > log_end:
                raise TargetError(
                    f"{self.targets[name].path}: checkpoint {cp.offset} is past the end of the "
                    f"change log ({log_end}): the state dir was reset or belongs to another setup",
                    hint="restore the state dir, or rebuild this target from a fresh snapshot",
                )
            if cp.offset < log_first:
                raise TargetError(
                    f"{self.targets[name].path}: checkpoint {cp.offset} is before the oldest "
                    f"log segment ({log_first}): changes it needs were deleted",
                    hint="rebuild this target from a fresh snapshot",
                )

    def durable_min_offset(self) -> int:
        """The lowest checkpoint, after making every target's commits durable.

        Targets commit with synchronous=NORMAL; a segment may only be deleted once the
        checkpoints past it can no longer be rolled back by a power loss.
        """
        low = min((c.offset for c in self.checkpoints.values()), default=0)
        for t in self.targets.values():
            t.checkpoints.make_durable()
        return low
