"""The apply's own refusal of a cut-over table's legacy side: the second line of defence.

The harvester logs nothing from the legacy side of a cut-over table (`cdc.moved`). A frame
may still come: a log written before that check existed, or a harvester that read the
cutover records a moment before they said "done". The switched bots write that table now,
so a reset would wipe their rows, a schema would reshape it under them, and a row would
overwrite theirs with a frozen image. The apply therefore skips every such frame of a
table whose stage is cut over (`target_is_live`), by name.

Skipped, not stopped: stopping the apply worker (TargetError) would stop every other
table of every target, for good, over one table whose legacy side nobody reads any more.
Instead the refusal is recorded in the target's `_cdc_meta` (key
`kept_out:<source>:<table>`), in the apply transaction that moves the checkpoint past the
frame, so it can never be skipped without a trace; `cdc status` lists it under
`problems` and `kept_out`, and `cdc verify` counts it. A schema frame that changes nothing
(a restarted harvester sends one for every table) is skipped quietly. When the stage is
given back, the harvester resets the table, and that reset clears the record.
"""

from __future__ import annotations

import logging
import os
import time

import apsw
import msgspec

from cdc.capture import triggers as capture
from cdc.events import CopyRange, RowBatch, TableReset, TableSchema, ValueChunk
from cdc.planning.plan import Plan
from cdc.stages.kept_out import KeptOut, RecordWatch, describe, not_moved, read_kept

log = logging.getLogger(__name__)

KEY = "kept_out:"
_WATCH: list[RecordWatch] = []  # the state dir's records, once `watch` was called
_KEPT = msgspec.json.Decoder(KeptOut)


def watch(state_dir: str) -> None:
    """Turn the refusal on (the apply worker, or the daemon's in-thread apply). Other
    users of the apply path (`cdc rebuild`) replay everything."""
    _WATCH[:] = [RecordWatch(state_dir)]


def refuses(f: object, conn: apsw.Connection, target, plan: Plan) -> bool:  # noqa: ANN001
    """True: skip frame `f` (its table is cut over); a change is recorded in the target."""
    if not _WATCH or not isinstance(
        f, RowBatch | TableSchema | TableReset | ValueChunk | CopyRange
    ):
        return False
    m = plan.mapping(f.source, f.table)
    if m is None or m.target != target.name:
        return False
    got = _WATCH[0].get(f.source, f.table)
    if got is None:
        if isinstance(f, TableReset):
            _forget(conn, f.source, f.table)
        return False
    if got[0].state == "fenced" and not isinstance(f, TableReset | TableSchema):
        return False  # the drain: rows logged before the fence are the copy's last ones
    if isinstance(f, TableSchema) and _same(target.shapes.get((f.source, f.table)), f):
        return True
    if isinstance(f, TableSchema) and _widens_nothing(target, m.target_table, f):
        return False  # a column the way back added after the bots' ALTER: recorded only
    _record(conn, target, plan, f, got[0].target, m.target_table)
    return True


def _same(shape, f: TableSchema) -> bool:  # noqa: ANN001 - AppliedShape
    if shape is None or list(f.key) != list(shape.key):
        return False
    if shape.create_sql:
        return shape.create_sql == f.create_sql
    return [c.name for c in f.columns] == list(shape.columns)


def _widens_nothing(target, table: str, f: TableSchema) -> bool:  # noqa: ANN001
    """The live table already has every column of `f` (the harvester lets only such an
    ADD COLUMN through, `cdc.moved`): applying it changes no column of the bots' table."""
    have = {c.lower() for c in target.table_columns(table)}
    return bool(have) and {c.name.lower() for c in f.columns} <= have


def _what(f: object) -> str:
    if isinstance(f, TableReset):
        return f"a reset ({f.reason})"
    if isinstance(f, TableSchema):
        return "a new shape"
    return "rows"


def _has_meta(conn: apsw.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (capture.META,))
    return row.fetchone() is not None


def _record(conn, target, plan: Plan, f, stage: str, target_table: str) -> None:  # noqa: ANN001
    if not _has_meta(conn):  # a target cut over before its capture existed: log only
        log.error("target %s: refused %s of %s.%s", target.name, _what(f), f.source, f.table)
        return
    key = f"{KEY}{f.source}:{f.table}"
    if conn.execute(f"SELECT 1 FROM {capture.META} WHERE k = ?", (key,)).fetchone():
        return
    k = KeptOut(
        f.source,
        f.table,
        plan.source(f.source).path,
        stage,
        target_table,
        f"the change log brought {_what(f)} from its legacy side",
        time.time(),
    )
    conn.execute(
        f"INSERT INTO {capture.META}(k, v) VALUES (?, ?)", (key, msgspec.json.encode(k).decode())
    )
    log.error("target %s: %s", target.name, describe(k))


def _forget(conn: apsw.Connection, source: str, table: str) -> None:
    if _has_meta(conn):
        conn.execute(f"DELETE FROM {capture.META} WHERE k = ?", (f"{KEY}{source}:{table}",))


def read_refusals(path: str) -> list[KeptOut]:
    """The refusals a target records (`cdc status`, `cdc verify`)."""
    if not os.path.exists(path):
        return []
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(2000)
        return refusals_in(conn)
    finally:
        conn.close()


def refusals_in(conn: apsw.Connection) -> list[KeptOut]:
    """`read_refusals` on a target connection already open."""
    try:
        if not _has_meta(conn):
            return []
        rows = conn.execute(
            f"SELECT v FROM {capture.META} WHERE k >= ? AND k < ?", (KEY, KEY[:-1] + ";")
        ).fetchall()
        return [_KEPT.decode(v) for (v,) in rows]
    except (apsw.Error, msgspec.DecodeError):
        return []


def kept_out_now(state_dir: str, plan: Plan) -> list[KeptOut]:
    """Every refusal that holds now, once per table and side: the harvesters' and the way
    back's (`cdc.moved`), those the apply recorded in the targets, and the tables no
    cutover moved that a rule maps into a cut-over target (`not_moved`); only of stages
    whose target is still the live copy (`cdc status`, the metrics, `cdc verify`)."""
    live = RecordWatch(state_dir).tables()
    found = [*read_kept(state_dir), *(r for p in plan.targets.values() for r in read_refusals(p))]
    out: dict[tuple[str, str, str], KeptOut] = {}
    for k in [*(k for k in found if _holds(k, live)), *not_moved(plan, state_dir)]:
        out.setdefault((k.source, k.table, k.side), k)
    return sorted(out.values(), key=lambda k: (k.source, k.table, k.side))


def kept_out_of(state_dir: str, target: str, conn: apsw.Connection) -> list[KeptOut]:
    """`kept_out_now` of one stage not cut over yet, whose target `conn` has open: the
    cutover's look under the fence. Opening each target to read its refusals (a new
    connection parses its whole schema) took 8-18 ms of the corpus's pauses."""
    live = RecordWatch(state_dir).tables()
    found = [*read_kept(state_dir), *refusals_in(conn)]
    out = {(k.source, k.table, k.side): k for k in found if k.target == target and _holds(k, live)}
    return sorted(out.values(), key=lambda k: (k.source, k.table, k.side))


def kept_out_legacy(state_dir: str, target: str) -> list[KeptOut]:
    """`kept_out_of` for a target that keeps no refusals of its own (PostgreSQL): what the
    harvesters recorded."""
    live = RecordWatch(state_dir).tables()
    found = [k for k in read_kept(state_dir) if k.target == target and _holds(k, live)]
    return sorted(
        {(k.source, k.table, k.side): k for k in found}.values(),
        key=lambda k: (k.source, k.table, k.side),
    )


def _holds(k: KeptOut, live: dict) -> bool:
    """A refusal on the way in holds while the stage's target is the live copy; one on
    the way back (`cdc.backflow_kept`) while the rollback window is open."""
    got = live.get((k.source, k.table))
    return got is not None and (k.side == "legacy" or got[0].state in ("done", "rolling_back"))
