"""Apply a run of log entries to one target in a single transaction, checkpoint included.

Rows of different tables are independent in the target (no triggers, foreign keys not
enforced while applying), so row batches are grouped per table, keeping their order within
a table. Inside one `RowBatch` each key appears once and every image is from one consistent
cut, so its deletes and its upserts each go to SQLite as one `executemany`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import apsw
import msgspec

from cdc import exact_text
from cdc.capture import triggers as capture
from cdc.changelog.segments import LogEntry
from cdc.errors import TargetBusyError, TargetError
from cdc.events import (
    CopyRange,
    Op,
    RowBatch,
    RowEvent,
    SourceMark,
    SourcePosition,
    StreamedRowBatch,
    TableReset,
    TableSchema,
    ValueChunk,
)
from cdc.faults import crash_point
from cdc.planning import ddl
from cdc.planning.plan import Plan
from cdc.sqlconn import write_transaction
from cdc.sqlident import q
from cdc.stages import kept_out_apply as moved_apply
from checkpoints import Checkpoint, SourceApplied
from replicator.copy_range import copy, maps_here, stage_copies
from replicator.target import AppliedShape, TargetDB


class ApplyResult(msgspec.Struct):
    events: int
    checkpoint: Checkpoint
    newest_observed_at: float = 0.0


def apply_batch(
    target: TargetDB,
    plan: Plan,
    entries: list[LogEntry],
    old: Checkpoint,
    more: Callable[[int], list[LogEntry]] | None = None,
) -> ApplyResult:
    """Apply `entries` (which start at `old.offset`) and move the checkpoint past them.

    `more(offset)` reads the log on from `offset`: when `entries` end inside a streamed
    value, the transaction reads on to the value's last chunk, so that one incremental-I/O
    handle writes the whole value (a handle per transaction would walk the value's
    overflow pages from its start every time: quadratic). Only a value's chunks are read
    on; they are applied as they are read, so memory stays at one read's worth."""
    if not entries:
        return ApplyResult(0, old)
    if entries[0].offset != old.offset:
        raise TargetError(
            f"{target.path}: batch starts at {entries[0].offset}, checkpoint is {old.offset}"
        )
    try:
        staged = stage_copies(target, plan, entries, more)
        try:
            return _apply_committed(target, plan, entries, old, more, staged)
        finally:
            if target.legacy is not None:
                target.legacy.drop_staged()
    except apsw.FullError as e:
        raise TargetBusyError(
            f"{target.path}: disk full while applying: {e}",
            hint="free space; replication resumes where it stopped",
        ) from e
    except apsw.BusyError as e:
        raise TargetBusyError(
            f"{target.path}: locked by another process: {e}",
            hint="find who holds the consolidated database open for writing",
        ) from e
    except apsw.Error as e:
        raise TargetError(f"{target.path}: apply failed at offset {old.offset}: {e}") from e


def _apply_committed(
    target: TargetDB,
    plan: Plan,
    entries: list[LogEntry],
    old: Checkpoint,
    more: Callable[[int], list[LogEntry]] | None,
    staged: dict[int, str | None],
) -> ApplyResult:
    """The rows, the sources' marks and the checkpoint commit together, so a crash
    anywhere leaves the target either before the batch or after all of it."""
    conn = target.conn
    applied = 0
    with write_transaction(conn):
        own_from = capture.top_seq(conn)  # see the end of the transaction
        runs: dict[tuple[str, str], list[RowBatch]] = defaultdict(list)
        marks: dict[str, SourcePosition] = {}
        end = old.offset
        try:
            for e in _read_on(entries, more, target):
                end = e.next_offset
                applied += _apply_frame(e.frame, conn, target, plan, runs, marks, staged)
        finally:
            target.close_value()  # before COMMIT or ROLLBACK
        rebuilds = _record_marks(target, marks)
        flushed, newest = _flush_runs(conn, target, runs)
        applied += flushed
        _rebuild_fts(conn, target, plan, rebuilds)
        if own_from is not None:
            # A cut-over (or rolled-back) stage's target tables are captured for the way
            # back (`cdc.backflow`): what we wrote is not the bots' and must not go back.
            capture.drop_own_changes(conn, own_from)
        crash_point("apply")
        cp = target.checkpoints.advance(old, end, applied)
        crash_point("checkpoint")
    crash_point("committed")
    return ApplyResult(applied, cp, newest)


def _record_marks(target: TargetDB, marks: dict[str, SourcePosition]) -> list[tuple[str, str]]:
    """Returns the tables whose initial copy completed in this batch: the moment to
    create their deferred indexes (`TargetDB.create_deferred_indexes`) and rebuild their
    full-text indexes, once."""
    now = time.time()
    rebuilds: list[tuple[str, str]] = []
    for source, p in marks.items():
        target.checkpoints.record_source(
            SourceApplied(source, p.install_id, p.through_seq, p.events, now)
        )
        fresh = target.checkpoints.record_snapshots_done(
            source, [c.table for c in p.snapshots if c.done]
        )
        for t in fresh:
            target.create_deferred_indexes(source, t)
        rebuilds += [(source, t) for t in fresh]
    return rebuilds


def _flush_runs(
    conn: apsw.Connection, target: TargetDB, runs: dict[tuple[str, str], list[RowBatch]]
) -> tuple[int, float]:
    """Returns the events written and the newest observation among them, for the lag."""
    applied = 0
    newest = 0.0
    for batches in runs.values():
        applied += _flush(conn, target, batches)
        newest = max(newest, batches[-1].observed_at)
    return applied, newest


def _rebuild_fts(
    conn: apsw.Connection, target: TargetDB, plan: Plan, rebuilds: list[tuple[str, str]]
) -> None:
    """An FTS table over external content does not see the rows written to its content
    table (the target has no triggers): once the initial copy is complete, index it from
    scratch."""
    for source, table in rebuilds:
        for fm in ddl.fts_of(plan, source, table):
            if fm.target == target.name and target.table_columns(fm.target_table):
                conn.execute(ddl.fts_rebuild(fm))


def _apply_frame(
    f: object,
    conn: apsw.Connection,
    target: TargetDB,
    plan: Plan,
    runs: dict[tuple[str, str], list[RowBatch]],
    marks: dict[str, SourcePosition],
    staged: dict[int, str | None],
) -> int:
    """One frame of `apply_batch`: rows are queued per table (`runs`), written when
    something must follow them (a schema change, a reset, a streamed value's chunk) or at
    the end. Returns the events written now."""
    if moved_apply.refuses(f, conn, target, plan):
        return 0  # a cut-over table's legacy side: skipped and recorded, by name
    applied = 0
    if isinstance(f, RowBatch):
        m = plan.mapping(f.source, f.table)
        if m is not None and m.target == target.name:
            runs[(f.source, f.table)].append(f)
    elif isinstance(f, TableSchema):
        m = plan.mapping(f.source, f.table)
        if m is not None and m.target == target.name:
            # Rows queued so far were shaped by the previous schema.
            applied += _flush(conn, target, runs.pop((f.source, f.table), []))
            target.close_value()
            target.apply_schema(f, m, plan)
    elif isinstance(f, TableReset):
        m = plan.mapping(f.source, f.table)
        if m is not None and m.target == target.name:
            applied += _flush(conn, target, runs.pop((f.source, f.table), []))
            target.close_value()
            _reset(conn, target, f)
    elif isinstance(f, ValueChunk):
        m = plan.mapping(f.source, f.table)
        if m is not None and m.target == target.name:
            # Its row (a zeroblob so far) may still be queued: write it first.
            applied += _flush(conn, target, runs.pop((f.source, f.table), []))
            target.write_chunk(f)
    elif isinstance(f, CopyRange):
        if maps_here(plan, f, target):
            applied += _flush(conn, target, runs.pop((f.source, f.table), []))
            target.close_value()
            applied += copy(conn, target, f, staged, runs, upsert_sql)
    elif isinstance(f, SourceMark) and _feeds(plan, f.source, target.name):
        marks[f.source] = f.position  # only the newest per source matters
    return applied


def _read_on(
    entries: list[LogEntry], more: Callable[[int], list[LogEntry]] | None, target: TargetDB
) -> Iterator[LogEntry]:
    """`entries`, then, while a streamed value is half written, the log after them up to
    the value's end (not further: a copied range after it was not staged)."""
    yield from entries
    while entries and more is not None and target.value_open():
        entries = more(entries[-1].next_offset)
        for e in entries:
            yield e
            if not target.value_open():
                return


def _feeds(plan: Plan, source: str, target: str) -> bool:
    try:
        return any(m.target == target for m in plan.source(source).tables)
    except KeyError:
        return False


def _reset(conn: apsw.Connection, target: TargetDB, f: TableReset) -> None:
    """Forget this source table's rows (only this source's, in a merged table), and that
    its initial copy was complete: a fresh copy follows, and until its mark says done the
    verifier must see a table being copied, not one missing rows."""
    target.checkpoints.forget_snapshot(f.source, f.table)
    shape = target.shapes.get((f.source, f.table))
    if shape is None:
        return  # nothing of it was ever applied here
    table = q(shape.target_table)
    if shape.tag_column is None:
        conn.execute(f"DELETE FROM {table}")
    else:
        conn.execute(f"DELETE FROM {table} WHERE {q(shape.tag_column)} IS ?", (shape.tag,))


def _flush(conn: apsw.Connection, target: TargetDB, batches: list[RowBatch]) -> int:
    if not batches:
        return 0
    b0 = batches[0]
    shape = target.shapes.get((b0.source, b0.table))
    if shape is None:
        raise TargetError(f"{target.path}: row of {b0.source}.{b0.table} arrived before its schema")
    key = (b0.source, b0.table)
    stmts = target.statements.get(key)
    if stmts is None:
        stmts = target.statements[key] = statements(shape)
    upsert_sql, delete_sql = stmts
    target.close_value()  # these rows may include the one being streamed into
    n = 0
    width = len(shape.key)
    for b in batches:
        events = _zeroblobs(b) if isinstance(b, StreamedRowBatch) else b.events
        nulls = [e for e in events if len(e.key) > width] if width else []
        if nulls:  # rows whose key holds a NULL carry their rowid (`capture.key_exprs`)
            events = [e for e in events if len(e.key) == width]
        ups, dels = _split(shape, events)
        # a row holding a TEXT that is not valid UTF-8 is bound with CAST (cdc.exact_text)
        if dels:
            exact_text.executemany(conn, delete_sql, dels)
            every = every_spelling_sql(shape)
            wide = [e.key for e in events if e.op is Op.DELETE and e.every_spelling]
            if every and wide:
                tag = [shape.tag] if shape.tag_column is not None else []
                exact_text.executemany(conn, every, [[*tag, *k] for k in wide])
        if nulls and shape.tag_column is not None:
            raise TargetError(
                f"{target.path}: {b.source}.{b.table} has a row whose key holds NULL "
                f"(rowid {nulls[0].key[-1]}): rows of a merged table are told apart by "
                "their key",
                hint="give the legacy key NOT NULL and fix those rows, or copy the table "
                "instead of merging it",
            )
        if nulls:
            write_null_key_rows(conn, shape, nulls)
        if ups:
            respell = respell_sql(shape)
            if respell:
                keys = [[shape.tag, *e.key] for e in events if e.op is not Op.DELETE]
                exact_text.executemany(conn, respell, keys)
            exact_text.executemany(conn, upsert_sql, ups)
        n += len(b.events)
    return n


def write_null_key_rows(conn: apsw.Connection, shape: AppliedShape, events) -> None:  # noqa: ANN001
    """Write the rows whose key holds a NULL (their key ends with their rowid) at that
    rowid, which tells them apart (NULL equals nothing, so a key cannot); the other side
    keeps them at the same rowids. A row with a key that happens to sit at that rowid is
    moved out of the way first: its key identifies it, not its rowid. Not for a merged
    table (its rows of several sources share one rowid space)."""
    t, rowid = q(shape.target_table), shape.rowid_alias
    has_null = " OR ".join(f"{q(k)} IS NULL" for k in shape.key)
    dels = [[e.key[-1]] for e in events if e.op is Op.DELETE]
    ups = [e for e in events if e.op is not Op.DELETE]
    if dels:
        conn.executemany(f"DELETE FROM {t} WHERE {rowid} = ?1 AND ({has_null})", dels)
    if not ups:
        return
    conn.executemany(
        f"UPDATE {t} SET {rowid} = (SELECT max({rowid}) FROM {t}) + 1 "
        f"WHERE {rowid} = ?1 AND NOT ({has_null})",
        [[e.key[-1]] for e in ups],
    )
    cols = [rowid, *(q(c) for c in shape.columns)]
    sql = f"INSERT OR REPLACE INTO {t} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    exact_text.executemany(conn, sql, [[e.key[-1], *e.row] for e in ups])


def _zeroblobs(b: StreamedRowBatch) -> list[RowEvent]:
    """The events of `b` with a zeroblob of the right size bound for each streamed value:
    SQLite reserves the space without anyone holding the bytes, and the `ValueChunk`
    frames that follow fill it in (`TargetDB.write_chunk`)."""
    events = list(b.events)
    for sv in b.streamed:
        e = events[sv.event]
        row = list(e.row)
        row[sv.column] = apsw.zeroblob(sv.size)
        events[sv.event] = RowEvent(e.op, e.seq, e.key, row)
    return events


def statements(shape: AppliedShape) -> tuple[str, str]:
    """The INSERT OR REPLACE and DELETE for one applied shape (the target caches them)."""
    cols = [q(c) for c in shape.columns]
    conds = []
    if shape.tag_column is not None:
        conds.append(f"{q(shape.tag_column)} IS ?1")
    if shape.key:
        # Exactly this key, not one equal to it under the column's collation: the delete
        # of the old spelling 'Alpha' may be applied after the image of 'ALPHA'.
        first = len(conds) + 1
        conds += [capture.same(q(k), f"?{i}") for i, k in enumerate(shape.key, first)]
    else:
        cols = [shape.rowid_alias, *cols]  # identity is the rowid: keep it
        conds.append(f"{shape.rowid_alias} = ?{len(conds) + 1}")
    if shape.tag_column is not None:
        cols = [q(shape.tag_column), *cols]
    head, conflict = _upsert_clauses(shape, cols)
    values = f"VALUES ({', '.join('?' * len(cols))})"
    table = q(shape.target_table)
    return f"{head} {values}{conflict}", f"DELETE FROM {table} WHERE {' AND '.join(conds)}"


def upsert_columns(shape: AppliedShape) -> list[str]:
    """The columns an upsert of `shape` binds, in order: the tag, the rowid where it is
    the identity, the row image's columns."""
    cols = [q(c) for c in shape.columns]
    if not shape.key:
        cols = [shape.rowid_alias, *cols]
    if shape.tag_column is not None:
        cols = [q(shape.tag_column), *cols]
    return cols


def upsert_sql(shape: AppliedShape, rows: str) -> str:
    """The upsert of `statements` with `rows` (a `SELECT ... WHERE ...`: SQLite needs the
    WHERE to tell the upsert's ON from a join's) in place of its VALUES."""
    head, conflict = _upsert_clauses(shape, upsert_columns(shape))
    return f"{head} {rows}{conflict}"


def _upsert_clauses(shape: AppliedShape, cols: list[str]) -> tuple[str, str]:
    """`INSERT ... INTO table (cols)` and the conflict clause after the rows."""
    table = q(shape.target_table)
    if shape.key and not shape.other_unique:
        # Only the key can conflict: an upsert updates in place, about 1.7x faster than
        # REPLACE's delete + insert (bench/README.md).
        keys = [q(k) for k in ([shape.tag_column] if shape.tag_column else []) + shape.key]
        # An equal key may be spelled differently now ('Alpha' -> 'ALPHA', 1 -> 1.0):
        # write it too, unless it is the rowid alias (integers: equal means identical).
        fixed = keys if shape.rowid_key else keys[:1] if shape.tag_column else []
        rest = [c for c in cols if c not in fixed]
        action = ", ".join(f"{c} = excluded.{c}" for c in rest) if rest else None
        return f"INSERT INTO {table} ({', '.join(cols)})", (
            f" ON CONFLICT ({', '.join(keys)}) "
            + (f"DO UPDATE SET {action}" if action else "DO NOTHING")
        )
    # REPLACE also removes a row holding one of our UNIQUE values: a stale image whose
    # own newer event comes later in the log.
    return f"INSERT OR REPLACE INTO {table} ({', '.join(cols)})", ""


def every_spelling_sql(shape: AppliedShape) -> str | None:
    """The delete of every row whose key equals the event's under the legacy key's own
    comparison (`RowEvent.every_spelling`: the legacy table held none of them). A copied
    table's key compares as the legacy one does (same definition); a merged member's under
    its legacy collations. None where equal keys are identical (the rowid alias)."""
    if not shape.key or shape.rowid_key:
        return None
    keys = [q(k) for k in shape.key]
    if shape.tag_column is None:
        conds = [f"{k} = ?{i}" for i, k in enumerate(keys, 1)]
    else:
        colls = shape.key_collations or ["BINARY"] * len(keys)
        conds = [f"{q(shape.tag_column)} IS ?1"] + [
            f"{k} = ?{i} COLLATE {q(c)}"
            for i, (k, c) in enumerate(zip(keys, colls, strict=True), 2)
        ]
    return f"DELETE FROM {q(shape.target_table)} WHERE {' AND '.join(conds)}"


def respell_sql(shape: AppliedShape) -> str | None:
    """For a merged member whose legacy key has a collation: delete the member's rows
    whose key equals the incoming one under that collation but is spelled otherwise. The
    legacy `REPLACE` of 'a' by 'A' under NOCASE deletes 'a' without a trigger, and the
    merged key (BINARY: its members may differ) would keep both. Right in any batch:
    the image of 'A' was read when the legacy table held 'A', so no other spelling of it,
    and a later spelling comes with its own, later event (F3, docs/fuzzing.md)."""
    colls = shape.key_collations
    if shape.tag_column is None or not colls:
        return None
    keys = [q(k) for k in shape.key]
    numbered = list(enumerate(zip(keys, colls, strict=True), 2))
    equal = " AND ".join(f"{k} = ?{i} COLLATE {q(c)}" for i, (k, c) in numbered)
    exact = " AND ".join(capture.same(k, f"?{i}") for i, (k, _) in numbered)
    return (
        f"DELETE FROM {q(shape.target_table)} WHERE {q(shape.tag_column)} IS ?1 "
        f"AND {equal} AND NOT ({exact})"
    )


def _split(shape: AppliedShape, events) -> tuple[list, list]:
    """Bind lists for the upserts and the deletes of one batch (lists: executemany then
    iterates in C instead of calling back into a generator for every row)."""
    delete = Op.DELETE
    tag = shape.tag
    if shape.tag_column is not None:
        dels = [[tag, *e.key] for e in events if e.op is delete]
        if shape.key:
            ups = [[tag, *e.row] for e in events if e.op is not delete]
        else:
            ups = [[tag, *e.key, *e.row] for e in events if e.op is not delete]
        return ups, dels
    dels = [e.key for e in events if e.op is delete]
    if shape.key:
        ups = [e.row for e in events if e.op is not delete]
    else:
        ups = [[*e.key, *e.row] for e in events if e.op is not delete]
    return ups, dels
