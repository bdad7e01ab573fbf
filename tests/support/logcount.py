"""What the retained log holds, counted the way the targets' checkpoints count: the proof
of "nothing applied twice" that the crash, disk-full and soak runs share."""

from __future__ import annotations

from typing import NamedTuple

from cdc.changelog.retained import RetainedLog
from cdc.config import Config
from cdc.events import CopyRange, RowBatch
from cdc.planning.plan import Plan


class LogCount(NamedTuple):
    events: int  # row events and copied ranges' rows, every source
    per_target: dict[str, int]  # the same, of the tables each target is fed
    repeats: list[tuple[str, str, int]]  # (source, table, seq) harvested a second time


def count_log(conf: Config, plan: Plan) -> LogCount:
    """Counts from offset 0 (the archive must hold the whole history). A range copied by
    reference counts its `rows`, as the apply does (`replicator.apply._copy`)."""
    last: dict[tuple[str, str], int] = {}
    per_target = dict.fromkeys(plan.targets, 0)
    events, repeats = 0, []
    for batch in RetainedLog.of(conf).batches(0):
        for e in batch:
            f = e.frame
            if isinstance(f, CopyRange):
                n = f.rows
            elif isinstance(f, RowBatch):
                n = len(f.events)
                for ev in f.events:
                    if ev.seq:  # stream events: each source sequence is harvested once
                        k = (f.source, f.table)
                        if ev.seq <= last.get(k, 0):
                            repeats.append((*k, ev.seq))
                        last[k] = max(ev.seq, last.get(k, 0))
            else:
                continue
            events += n
            m = plan.mapping(f.source, f.table)
            if m is not None:
                per_target[m.target] += n
    return LogCount(events, per_target, repeats)
