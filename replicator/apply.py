"""Apply a run of log entries to one target in a single transaction, checkpoint included.

Rows of different tables are independent in the target (no triggers, foreign keys not
enforced while applying), so entries are grouped per table, keeping their order within a
table, and each run of one operation goes to SQLite as one `executemany`.
"""

from __future__ import annotations

import time
from collections import defaultdict

import apsw
import msgspec

from cdc.changelog import LogEntry
from cdc.errors import TargetBusyError, TargetError
from cdc.events import Op, RowChange, SourceMark, SourcePosition, TableSchema
from cdc.plan import Plan
from cdc.sqlconn import write_transaction
from cdc.sqlident import q
from checkpoints import Checkpoint, SourceApplied
from replicator.target import AppliedShape, TargetDB


class ApplyResult(msgspec.Struct):
    events: int
    checkpoint: Checkpoint
    newest_observed_at: float = 0.0


def apply_batch(target: TargetDB, plan: Plan, entries: list[LogEntry],
                old: Checkpoint) -> ApplyResult:
    """Apply `entries` (which start at `old.offset`) and move the checkpoint past them."""
    if not entries:
        return ApplyResult(0, old)
    if entries[0].offset != old.offset:
        raise TargetError(
            f"{target.path}: batch starts at {entries[0].offset}, checkpoint is {old.offset}"
        )
    conn = target.conn
    applied = 0
    newest = 0.0
    try:
        with write_transaction(conn):
            runs: dict[tuple[str, str], list[RowChange]] = defaultdict(list)
            marks: dict[str, SourcePosition] = {}
            for e in entries:
                f = e.frame
                if isinstance(f, RowChange):
                    m = plan.mapping(f.source, f.table)
                    if m is not None and m.target == target.name:
                        runs[(f.source, f.table)].append(f)
                elif isinstance(f, TableSchema):
                    m = plan.mapping(f.source, f.table)
                    if m is not None and m.target == target.name:
                        # Rows queued so far were shaped by the previous schema.
                        applied += _flush(conn, target, runs.pop((f.source, f.table), []))
                        target.apply_schema(f, m)
                elif isinstance(f, SourceMark) and _feeds(plan, f.source, target.name):
                    marks[f.source] = f.position  # only the newest per source matters
            now = time.time()
            for source, p in marks.items():
                target.checkpoints.record_source(
                    SourceApplied(source, p.install_id, p.through_seq, p.events, now)
                )
            for events in runs.values():
                applied += _flush(conn, target, events)
                newest = max(newest, events[-1].observed_at) if events else newest
            cp = target.checkpoints.advance(old, entries[-1].next_offset, applied)
    except apsw.FullError as e:
        raise TargetBusyError(f"{target.path}: disk full while applying: {e}",
                              hint="free space; replication resumes where it stopped") from e
    except apsw.BusyError as e:
        raise TargetBusyError(f"{target.path}: locked by another process: {e}",
                              hint="find who holds the consolidated database open for writing") from e
    except apsw.Error as e:
        raise TargetError(f"{target.path}: apply failed at offset {old.offset}: {e}") from e
    return ApplyResult(applied, cp, newest)


def _feeds(plan: Plan, source: str, target: str) -> bool:
    try:
        return any(m.target == target for m in plan.source(source).tables)
    except KeyError:
        return False


def _flush(conn: apsw.Connection, target: TargetDB, events: list[RowChange]) -> int:
    if not events:
        return 0
    f0 = events[0]
    shape = target.shapes.get((f0.source, f0.table))
    if shape is None:
        raise TargetError(
            f"{target.path}: row of {f0.source}.{f0.table} arrived before its schema"
        )
    i, n = 0, len(events)
    while i < n:
        op = events[i].op
        j = i
        while j < n and events[j].op == op:
            j += 1
        run = events[i:j]
        if op == Op.UPSERT:
            sql, rows = _upsert(shape, run)
        else:
            sql, rows = _delete(shape, run)
        conn.executemany(sql, rows)
        i = j
    return n


def _upsert(shape: AppliedShape, run: list[RowChange]):
    cols = list(shape.columns)
    if not shape.key:
        cols = [shape.rowid_alias, *cols]  # identity is the rowid: keep it
    tag = shape.tag_column is not None
    if tag:
        cols = [shape.tag_column, *cols]
    sql = (
        f"INSERT OR REPLACE INTO {q(shape.target_table)} "
        f"({', '.join(c if c == shape.rowid_alias and not shape.key else q(c) for c in cols)}) "
        f"VALUES ({', '.join('?' * len(cols))})"
    )
    if not shape.key:
        rows = ([*e.key, *e.row] for e in run)
    else:
        rows = (e.row for e in run)
    if tag:
        rows = ([shape.tag, *r] for r in rows)
    return sql, rows


def _delete(shape: AppliedShape, run: list[RowChange]):
    conds = []
    if shape.tag_column is not None:
        conds.append(f"{q(shape.tag_column)} IS ?")
    if shape.key:
        conds += [f"{q(k)} IS ?" for k in shape.key]
    else:
        conds.append(f"{shape.rowid_alias} = ?")
    sql = f"DELETE FROM {q(shape.target_table)} WHERE {' AND '.join(conds)}"
    if shape.tag_column is not None:
        return sql, ([shape.tag, *e.key] for e in run)
    return sql, (e.key for e in run)
