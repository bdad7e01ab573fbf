"""Cut-over tables whose legacy side changed: kept out of their target, and named.

Once a stage is cut over, its target is the live copy the switched bots write. The legacy
table is fenced, so no row of it can change, but a DDL still can, and DROP fires no
trigger. Left to the ordinary drift handling (docs/architecture.md, 5b), a stale process's
DROP + CREATE would reset the target table and wipe the bots' rows; a new column, a
renamed one, a unique index or a VACUUM of a keyless table would reset or reshape it under
them. So from the cutover until the stage is given back (rolled back, aborted), nothing
from a moved table's legacy side reaches its target: the harvester logs no reset, schema,
snapshot or row of it (its capture rows go with the trim), and it is named in the log at
ERROR, by `cdc status`, the metrics and `cdc verify`.

The refusals are kept in `state_dir/kept-out/<source>.json`: some changes cannot be seen
again later (a VACUUM: the mark goes back for the other tables of the file) and an
operator must be told across restarts. A table given back is reset and copied afresh,
since its legacy file is the live copy again and may differ in any of these ways.

A re-created legacy table has lost its fence with the DROP: it is fenced again, so the
stale bot that made it is told where the table lives now instead of writing into a copy
nobody reads (its rows would be kept out anyway).
"""

from __future__ import annotations

import logging
import os
import time

import apsw
import msgspec

from cdc import shapes
from cdc.capture import fence
from cdc.capture import triggers as capture
from cdc.errors import CdcError
from cdc.fsutil import makedirs_private, safe_component
from cdc.inventory import TableInfo, table_info
from cdc.planning.plan import Plan
from cdc.stages.record import CUTOVER_DIR, CutoverRecord, CutoverTable, read_records
from cdc.status_file import read_json, write_json_atomic

log = logging.getLogger(__name__)

KEPT_DIR = "kept-out"
COLUMN_ADDED = "a column was added"
FENCE_REMOVED = "its fence was removed"
REFENCE_RETRY = 5.0  # seconds between tries to fence a re-created table again


class KeptOut(msgspec.Struct):
    """One cut-over table whose other side changed after the cutover."""

    source: str
    table: str
    path: str  # the file that changed (legacy; the target's for the way back)
    target: str
    target_table: str
    reason: str
    since: float
    side: str = "legacy"  # "legacy": refused on the way in; "target": on the way back


def target_is_live(rec: CutoverRecord) -> bool:
    """The stage's target is the live copy: cut over, finalized, or rolling back before
    the legacy fences are lifted (after that the legacy files are the live copy again)."""
    if rec.state in ("done", "finalized"):
        return True
    return rec.state == "rolling_back" and not (rec.rollback and rec.rollback.unfencing)


def legacy_frozen(rec: CutoverRecord) -> bool:
    """No DDL or reset of the legacy side may reach the target: from the fence on. While a
    cutover is fenced (draining, verifying) the legacy tables must hold still exactly as
    after the cut; a reset logged then would copy a stale process's re-created table over
    the rows being proven, and the cutover would prove the wrong copy equal. Kept out
    instead, the table differs and the cutover refuses to finish, naming it."""
    return rec.state == "fenced" or target_is_live(rec)


class RecordWatch:
    """The cut-over tables, read again only when the records folder changes (a record is
    replaced by a rename, which touches the folder): cheap enough to ask per frame."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._stamp: int | None = None
        self._tables: dict[tuple[str, str], tuple[CutoverRecord, CutoverTable]] = {}

    def tables(self) -> dict[tuple[str, str], tuple[CutoverRecord, CutoverTable]]:
        try:
            stamp = os.stat(os.path.join(self.state_dir, CUTOVER_DIR)).st_mtime_ns
        except FileNotFoundError:
            stamp = 0
        # a folder changed twice within the clock's grain keeps its stamp: read a young
        # one again every time
        if stamp != self._stamp or time.time_ns() - stamp < 2_000_000_000:
            self._tables = {
                (t.source, t.table): (r, t)
                for r in read_records(self.state_dir)
                if legacy_frozen(r)
                for t in r.tables
            }
            self._stamp = stamp
        return self._tables

    def get(self, source: str, table: str) -> tuple[CutoverRecord, CutoverTable] | None:
        return self.tables().get((source, table))


def not_moved(plan: Plan, state_dir: str) -> list[KeptOut]:
    """Tables a rule maps into a cut-over target that its cutover did not move: created
    in a legacy file since (a stale process's CREATE, or the new name of a RENAME) or
    mapped since. Copied in, they would land in the live file beside the switched bots'
    tables, and one of the same name would be wiped; so they are kept out too, by name,
    for as long as the stage's target is the live copy."""
    recs = [r for r in read_records(state_dir) if target_is_live(r)]
    moved = {(t.source, t.table) for r in recs for t in r.tables}
    live = {r.target for r in recs}
    return [
        KeptOut(
            m.source,
            m.table,
            sp.path,
            m.target,
            m.target_table,
            "created or mapped since the cutover",
            0.0,
        )
        for sp in plan.sources
        for m in sp.tables
        if m.target in live and (m.source, m.table) not in moved
    ]


def without(plan: Plan, kept: list[KeptOut]) -> Plan:
    """`plan` less the tables of `kept` (what the daemon captures and applies)."""
    if not kept:
        return plan
    out = {(k.source, k.table) for k in kept}
    return msgspec.structs.replace(
        plan,
        sources=[
            msgspec.structs.replace(
                sp, tables=[m for m in sp.tables if (m.source, m.table) not in out]
            )
            for sp in plan.sources
        ],
    )


def kept_path(state_dir: str, name: str) -> str:
    if not safe_component(name):
        raise CdcError(f"{name!r} cannot name a file of {KEPT_DIR}/")
    return os.path.join(state_dir, KEPT_DIR, f"{name}.json")


def read_kept(state_dir: str) -> list[KeptOut]:
    """Every refusal recorded (by the harvesters and the way back), stale ones included."""
    d = os.path.join(state_dir, KEPT_DIR)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    out: list[KeptOut] = []
    for n in names:
        out += (read_json(os.path.join(d, n), dict[str, KeptOut]) or {}).values()
    return out


def save_kept(state_dir: str, name: str, kept: dict[str, KeptOut]) -> None:
    path = kept_path(state_dir, name)
    makedirs_private(os.path.dirname(path))
    write_json_atomic(path, kept)


def describe(k: KeptOut) -> str:
    """One line for `cdc status`, the log and `cdc verify`: the file and the table."""
    if k.side == "target":
        return (
            f"table {k.target_table!r} of {k.path} (stage {k.target}, rolling back): "
            f"{k.reason} while fenced; its changes are kept out of {k.source}'s table "
            f"{k.table!r}, which the rollback's verification will find different"
        )
    return (
        f"table {k.table!r} of source {k.source!r} ({k.path}), whose stage {k.target} is cut "
        f"over: {k.reason}; kept out of {k.target}'s table {k.target_table!r}, the live copy "
        "the switched bots write (find the stale process; see `cdc docs runbook`)"
    )


def legacy_change(
    conn: apsw.Connection,
    tid: int,
    name: str,
    on: str | None,
    triggers: dict[str, str],
    shape: TableInfo | str,
    vacuumed: bool,
) -> str | None:
    """What a DDL changed in a cut-over legacy table since its last logged `shape` (its
    info, or its mark in the log), or None. Only what would reach the target counts: a
    plain index does not."""
    if on is None or on.lower() != name.lower():
        return "dropped and created again"
    fenced = triggers.get(fence.trigger_names(tid)[0])
    if fenced is None or fenced.lower() != name.lower():
        return FENCE_REMOVED
    info = table_info(conn, name)
    why = shapes.recopy_reason(shape, info)
    mark = shapes.mark(shape) if isinstance(shape, TableInfo) else shape
    if why is None and mark and int(mark.split(":")[0]) < len(info.column_names):
        why = COLUMN_ADDED
    if why is None and vacuumed and not info.key:
        why = "a VACUUM gave its rows new rowids"
    return why


class KeepOut:
    """One harvester's cut-over tables (`cdc.harvester` calls it at each look at the
    schema and after each harvest)."""

    def __init__(self, state_dir: str, source: str, path: str) -> None:
        self.state_dir, self.source, self.path = state_dir, source, path
        self.watch = RecordWatch(state_dir)
        self.kept: dict[str, KeptOut] = (
            read_json(kept_path(state_dir, source), dict[str, KeptOut]) or {}
        )
        self._refence_at = 0.0
        self._dirty = False  # tables given back, not yet saved

    def is_kept(self, table: str) -> bool:
        return table in self.kept

    def refuse(self, table: str, reason: str) -> bool:
        """Keep `table` out if its stage is cut over (True); durable before we go on. A
        finalized stage's legacy file is being replaced by its guard (`cdc finalize`),
        which looks like a drop: kept out quietly, the harvest of it is about to end."""
        got = self.watch.get(self.source, table)
        if got is None:
            return False
        rec, t = got
        if table in self.kept or rec.state == "finalized":
            return True
        k = KeptOut(self.source, table, self.path, rec.target, t.target_table, reason, time.time())
        self.kept[table] = k
        save_kept(self.state_dir, self.source, self.kept)
        log.error(
            "source %s: %s",
            self.source,
            describe(k),
            extra={"source": self.source, "table": table},
        )
        return True

    def at_start(
        self, lacking: list[str], moved: dict[str, str], present: list[str]
    ) -> tuple[list[str], dict[str, str]]:
        """What a starting harvester may reset: not a cut-over table (refused instead),
        and a table given back since it was kept out is reset whatever it looks like."""
        for t in list(self.kept):
            if self.watch.get(self.source, t) is None:
                if t in present:
                    moved.setdefault(t, "given back after its legacy side changed while cut over")
                del self.kept[t]
                self._dirty = True
        lacking = [t for t in lacking if not self.refuse(t, "dropped and created again")]
        moved = {t: why for t, why in moved.items() if not self.refuse(t, why)}
        return lacking, moved

    def look(self, h, tid: int, name: str, on, triggers, vacuumed: bool) -> bool:  # noqa: ANN001
        """At a look at the schema: True when `name` is kept out (the harvester then does
        nothing with it). A table given back is forgotten here and handled as one
        dropped and created again: reset, copied afresh."""
        if name in self.kept and self.watch.get(self.source, name) is None:
            self.give_back(h, name)
            return False
        got = self.watch.get(self.source, name)
        if got is None:
            return False
        stage = got[0]  # read once: the records may change between two reads
        h.lost.pop(name, None)
        fenced = triggers.get(fence.trigger_names(tid)[0])
        if name in self.kept or (on is None and fenced and fenced.lower() == name.lower()):
            return True  # kept out; or its capture taken off by `cdc finalize` (fences stay)
        shape = h.infos.get(name) or next(
            (c.shape for c in h.position.snapshots if c.table == name), ""
        )
        why = legacy_change(h.conn, tid, name, on, triggers, shape, vacuumed)
        if why == FENCE_REMOVED and stage.state == "fenced":
            return False  # `cdc cutover --abort` lifts the fences before it says "aborted"
        if why == COLUMN_ADDED and self._target_has(name, table_info(h.conn, name)):
            return False  # the way back's own ALTER: the live copy had the column first
        return why is not None and self.refuse(name, why)

    def _target_has(self, name: str, info: TableInfo) -> bool:
        """Whether the target table has every column of the legacy table: a column the
        way back added (`cdc.backflow`, after a switched bot's ALTER), not a stale one.
        Read only after an ADD COLUMN of a cut-over table."""
        got = self.watch.get(self.source, name)
        if got is None:  # given back meanwhile: nothing to keep out
            return True
        rec, t = got
        try:
            conn = apsw.Connection(rec.path, flags=apsw.SQLITE_OPEN_READONLY)
        except apsw.Error:
            return False
        try:
            conn.set_busy_timeout(2000)
            rows = conn.execute("SELECT name FROM pragma_table_info(?)", (t.target_table,))
            have = {r[0].lower() for r in rows}
        except apsw.Error:
            return False
        finally:
            conn.close()
        return {c.lower() for c in info.column_names} <= have

    def give_back(self, h, name: str) -> None:  # noqa: ANN001
        """The stage is no longer cut over: the legacy file is the live copy again."""
        log.warning(
            "source %s: table %s is given back (its stage is no longer cut over): "
            "it is reset and copied afresh",
            self.source,
            name,
            extra={"source": self.source, "table": name},
        )
        h._recapture.add(name)  # noqa: SLF001 - the harvester's own reset path
        h.infos.pop(name, None)  # a schema frame must follow the reset
        h._schema_version = -1  # noqa: SLF001
        del self.kept[name]
        self._dirty = True

    def after_harvest(self, h) -> None:  # noqa: ANN001
        """Give back the tables of stages rolled back since; fence re-created ones again.
        Durable only once their resets are (`Harvester.repair_capture` runs next)."""
        for name in [t for t in self.kept if self.watch.get(self.source, t) is None]:
            if name in h.lost:
                del self.kept[name]
                self._dirty = True
            else:
                self.give_back(h, name)
        if self.kept and time.monotonic() >= self._refence_at:
            self._refence(h.conn)

    def saved(self) -> None:
        """After the resets of tables given back are in the log."""
        if self._dirty:
            save_kept(self.state_dir, self.source, self.kept)
            self._dirty = False

    def _refence(self, conn: apsw.Connection) -> None:
        have = {
            (r[0].lower(), r[1].lower())
            for r in conn.execute("SELECT name, tbl_name FROM sqlite_schema WHERE type='trigger'")
        }
        tables = {n.lower() for (n,) in conn.execute("SELECT name FROM sqlite_schema")}
        tids = dict(capture.installed_tables(conn))
        moved = {}
        for name in self.kept:
            tid = tids.get(name)
            if tid is None or name.lower() not in tables:
                continue
            if (fence.trigger_names(tid)[0].lower(), name.lower()) not in have:
                rec, t = self.watch.get(self.source, name) or (None, None)
                if rec is None or rec.state == "rolling_back":
                    continue  # a rollback lifts the legacy fences itself
                where = f"{rec.path} (table {t.target_table}"
                where += f", {t.tag_column} = '{t.tag}')" if t.tag_column else ")"
                moved[name] = where
        if not moved:
            return
        try:
            stages = {self.kept[n].target for n in moved}
            fence.fence(conn, self.source, self.path, moved, stage=min(stages))
            log.warning("source %s: fenced %s again", self.source, ", ".join(sorted(moved)))
        except (CdcError, apsw.Error) as e:
            self._refence_at = time.monotonic() + REFENCE_RETRY
            log.warning("source %s: cannot fence %s again yet: %s", self.source, moved, e)
