"""Drives apply_batch for every target from its own checkpoint.

Targets advance independently (each has its own checkpoint in its own file), so a target
that is locked or full does not hold the others back. Segments are deleted only once the
slowest target is past them.
"""

from __future__ import annotations

import logging

import apsw

from cdc.changelog.segments import LogReader
from cdc.config import DaemonSettings
from cdc.errors import TargetBusyError, TargetError
from cdc.planning.plan import Plan
from cdc.postgres.dsn import is_postgres
from checkpoints.store import Checkpoint
from replicator.apply import ApplyResult, apply_batch
from replicator.pg_apply import PgTarget
from replicator.target import TargetDB

log = logging.getLogger(__name__)


class Replicator:
    def __init__(self, plan: Plan, log_dir: str, settings: DaemonSettings) -> None:
        self.plan = plan
        self.settings = settings
        self.reader = LogReader(log_dir)
        self.targets: dict[str, TargetDB | PgTarget] = {}
        try:
            for name, path in sorted(plan.targets.items()):
                self.targets[name] = (
                    PgTarget(name, path)
                    if is_postgres(path)
                    else TargetDB(name, path, settings.busy_timeout_ms)
                )
        except Exception:
            self.close()
            raise
        self.checkpoints = {n: _load(t) for n, t in self.targets.items()}
        self.last_results: dict[str, ApplyResult] = {}
        self.errors: dict[str, Exception] = {}
        self.durable: dict[str, int] = {}  # per target: the last checkpoint known durable

    def close(self) -> None:
        for t in self.targets.values():
            t.close()
        self.targets = {}

    def step(self, limit_offset: int | None) -> int:
        """Apply at most one batch per target, never past `limit_offset`; return events applied."""
        total = 0
        cache: dict[int, list] = {}

        def more(offset: int) -> list:  # the rest of a streamed value (apply_batch)
            return self.reader.read(offset, limit_offset, max_frames=self.settings.apply_batch)

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
                if isinstance(target, PgTarget):
                    moved = target.apply(self.plan, entries, cp)
                    res = ApplyResult(moved.events - cp.events, moved)
                else:
                    res = apply_batch(target, self.plan, entries, cp, more)
            except TargetBusyError as e:
                # Nothing was committed; the other targets go on, this one retries later.
                if str(self.errors.get(name)) != str(e):  # said once, not at every retry
                    log.warning(
                        "target %s: %s", name, e, extra={"target": name, "offset": cp.offset}
                    )
                self.errors[name] = e
                if isinstance(e.__cause__, apsw.FullError) and isinstance(target, TargetDB):
                    _give_back_wal(target)
                continue
            if self.errors.pop(name, None) is not None:
                log.info("target %s: applying again", name, extra={"target": name})
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
        checkpoints past it can no longer be rolled back by a power loss. A target that
        cannot take the fsyncing commit now (its disk is full, or it is locked) counts
        with the last checkpoint proven durable (0 before the first): its segments stay.
        """
        for name, t in self.targets.items():
            offset = self.checkpoints[name].offset
            if isinstance(t, PgTarget):  # committed is durable there (synchronous_commit)
                self.durable[name] = offset
                continue
            try:
                t.checkpoints.make_durable()
            except (apsw.FullError, apsw.BusyError) as e:
                log.warning(
                    "target %s: cannot make its checkpoint durable now (%s); the log "
                    "segments it may need are kept",
                    name,
                    e,
                    extra={"target": name},
                )
                continue
            self.durable[name] = offset
        return min((self.durable.get(n, 0) for n in self.checkpoints), default=0)


def _load(t: TargetDB | PgTarget) -> Checkpoint:
    return t.load() if isinstance(t, PgTarget) else t.checkpoints.load()


def _give_back_wal(target) -> None:  # noqa: ANN001 - replicator.target.TargetDB
    """A full disk: the target's WAL keeps the size of its largest run of commits between
    checkpoints. Checkpoint it whole and truncate it, so the retry has that room (it cannot
    while a reader still needs old pages: then the next retry tries again)."""
    try:
        target.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except apsw.Error as e:
        log.debug("target %s: WAL checkpoint on a full disk: %s", target.name, e)
