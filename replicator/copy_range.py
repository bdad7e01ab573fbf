"""Snapshot chunks copied by reference (`cdc.events.CopyRange`): the apply side reads a
key range's rows from the legacy file itself, inside SQLite.

Through the log, every row of the initial copy crossed Python twice (read into a frame,
decoded and bound again) and was written to disk once more in between; `INSERT ...
SELECT` between two files does none of that (bench/README.md, Snapshot by reference).

Two steps, so that a bot's file is read-locked only as long as the read of one chunk
(the harvester's budget), never for a whole apply transaction and its COMMIT:
- `LegacyFiles.stage`, before the apply transaction: the legacy file is attached to the
  target's connection read-only (an ATTACH cannot happen inside a transaction), and one
  short read transaction checks the table's shape and copies the range's rows into an
  untyped temporary table (no affinity there: every value keeps its storage class and
  its bytes, a TEXT that is not UTF-8 included).
- `copy_staged`, inside the apply transaction: from the temporary table into the
  target's table, with the conflict clause its row batches get (`apply.statements`);
  a merged member whose key has a collation goes through the row path instead (its
  other spellings are deleted first, `apply.respell_sql`).

The table may have changed between the frame and the copy. Unchanged, or only widened
(columns added at the end, which the target gets later in the log): its columns are read
by the frame's names. Otherwise the harvester resets the table (`cdc.shapes`), in the log
after this frame: the copy is skipped once that reset is in the log, and waits for it
before (the apply retries, `TargetBusyError`). A table no longer there is skipped: its
copy waits for it to come back, as a dropped table's copy always did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

import apsw

from cdc import exact_text, shapes
from cdc.changelog.segments import LogEntry
from cdc.errors import SourceError, TargetBusyError, TargetError
from cdc.events import CopyRange, Op, RowBatch, RowEvent, TableReset
from cdc.faults import crash_point
from cdc.inventory import ROWID_NAMES, table_info
from cdc.planning.plan import Plan
from cdc.sqlconn import open_legacy, read_transaction
from cdc.sqlident import q

if TYPE_CHECKING:  # annotations only: the target module holds a `LegacyFiles`
    from replicator.target import AppliedShape, TargetDB

log = logging.getLogger(__name__)

STAGE = "_cdc_copy"  # temporary tables, one per frame of a batch
GONE = object()  # `_shape_at`: the table is not in the legacy file


class LegacyFiles:
    """The legacy files attached to one target's connection while a batch's ranges are
    staged, and a read-only connection to each for reading a table's shape (`table_info`
    reads the main schema only); none stays open after the staging (`cdc finalize` counts
    any process holding a legacy file open as a stale bot)."""

    def __init__(self, conn: apsw.Connection, plan: Plan, busy_timeout_ms: int) -> None:
        self.conn = conn
        self.plan = plan
        self.busy_timeout_ms = busy_timeout_ms
        self.temp_in_memory = False
        self.looks: dict[str, apsw.Connection] = {}
        self.shapes: dict[tuple[str, int, str], object] = {}  # (source, cookie, table)
        self.staged: list[str] = []

    # -- attached only while staging --------------------------------------------------------
    def stage_all(
        self, frames: list[CopyRange], reset_follows: Callable[[CopyRange], Callable[[], bool]]
    ) -> dict[int, str | None]:
        """`stage` each of `frames` (keyed by the frame's id), their legacy files attached
        meanwhile and detached after: attached, a legacy table would answer every name
        the target's own statements leave unqualified (`pragma_table_info(?)` found the
        legacy `trades` while the target had none yet)."""
        if not frames:
            return {}
        aliases = {}
        try:
            for source in sorted({f.source for f in frames}):
                aliases[source] = self._attach(source, f"_cdc_src{len(aliases)}")
            return {id(f): self.stage(f, aliases[f.source], reset_follows(f)) for f in frames}
        finally:
            for alias in aliases.values():
                with contextlib.suppress(apsw.Error):
                    self.conn.execute(f"DETACH {q(alias)}")
            self.close_looks()  # a legacy file held open is a stale user to finalize

    def close_looks(self) -> None:
        for look in self.looks.values():
            look.close()
        self.looks = {}

    def _attach(self, source: str, alias: str) -> str:
        path = os.path.abspath(self.plan.source(source).path)
        if not os.path.exists(path):
            raise TargetBusyError(
                f"{path}: legacy database not found for the initial copy of {source}",
                hint="put the file back; the copy resumes where it stopped",
            )
        uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
        try:
            self.conn.execute(f"ATTACH ? AS {q(alias)}", (uri,))
        except apsw.Error as e:
            raise TargetBusyError(f"{path}: cannot attach for the initial copy: {e}") from e
        got = self.conn.execute(
            "SELECT file FROM pragma_database_list WHERE name = ?", (alias,)
        ).fetchone()
        if got is None or os.path.realpath(got[0]) != os.path.realpath(path):
            self.conn.execute(f"DETACH {q(alias)}")
            raise TargetError(f"{path}: attached as {got and got[0]!r} (URI names off?)")
        if not self.temp_in_memory:
            self.conn.execute("PRAGMA temp_store = MEMORY")  # staged rows: one chunk each
            self.temp_in_memory = True
        return alias

    def close(self) -> None:
        self.drop_staged()
        self.close_looks()

    # -- staging: one short read of the legacy file ---------------------------------------
    def stage(self, f: CopyRange, alias: str, reset_follows: Callable[[], bool]) -> str | None:
        """Copy `f`'s rows from the file attached as `alias` into a temporary table and
        return its name; None: skip `f` (its table is gone, or reset later in the log)."""
        for _ in range(5):
            with read_transaction(self.conn):
                (cookie,) = self.conn.execute(f"PRAGMA {q(alias)}.schema_version").fetchone()
                info = self._shape_at(f.source, cookie, f.table)
                if info is None:
                    continue  # the schema changed between the two reads: look again
                if info is GONE:
                    log.warning(
                        "source %s: table %s is gone: its initial copy waits for it",
                        f.source,
                        f.table,
                        extra={"source": f.source, "table": f.table},
                    )
                    return None
                why = shapes.recopy_reason(f.shape, info)
                if why is None:
                    return self._copy_in(f, alias)
            if reset_follows():
                return None
            raise TargetBusyError(
                f"{f.source}.{f.table}: {why} since its chunk was logged; the copy waits "
                "for the harvester to reset the table",
                hint="nothing to do: the harvester resets a reshaped table at its next look",
            )
        raise TargetBusyError(f"{f.source}: its schema keeps changing under the initial copy")

    def _shape_at(self, source: str, cookie: int, table: str) -> object:
        """The table's info at schema cookie `cookie`, GONE, or None: the file's schema
        is at another cookie now (it changed in between)."""
        key = (source, cookie, table)
        if key in self.shapes:
            return self.shapes[key]
        look = self.looks.get(source)
        if look is None:
            try:
                look = open_legacy(self.plan.source(source).path, self.busy_timeout_ms, True)
            except SourceError as e:
                raise TargetBusyError(e.message, hint=e.hint) from e
            self.looks[source] = look
        with read_transaction(look):
            (now,) = look.execute("PRAGMA schema_version").fetchone()
            if now != cookie:
                return None
            there = look.execute(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            found: object = table_info(look, table) if there else GONE
        self.shapes = {k: v for k, v in self.shapes.items() if k[:2] != key[:2] or k[1] == cookie}
        self.shapes[key] = found
        return found

    def _copy_in(self, f: CopyRange, alias: str) -> str:
        """Inside the staging read transaction: the range's rows into a temporary table
        of the row image's columns; its rowid is the legacy rowid where that is the key
        (`f.key` names no column then), so the table is as wide as the legacy one."""
        name = f"{STAGE}{len(self.staged)}"
        self.conn.execute(
            f"CREATE TEMP TABLE {q(name)}({', '.join(f'c{i}' for i in range(len(f.columns)))})"
        )
        self.staged.append(name)
        rowid = [_key_expr(f, k) for k in f.key if k in ROWID_NAMES]
        cols = [f"c{i}" for i in range(len(f.columns))]
        exprs = [*rowid, *(f"s.{q(c)}" for c in f.columns)]
        order = [_key_expr(f, k) for k in f.order]
        marks = exact_text.marks
        # A key column holding NULL is reached by no range (its rows come by value, later)
        conds = [f"{k} IS NOT NULL" for k in order]
        conds.append(f"({', '.join(order)}) <= ({marks(f.until)})")
        args = exact_text.binds(f.until)
        if f.after is not None:
            conds.append(f"({', '.join(order)}) > ({marks(f.after)})")
            args += exact_text.binds(f.after)
        self.conn.execute(
            f"INSERT INTO temp.{q(name)}({', '.join(['rowid'] * len(rowid) + cols)}) "
            f"SELECT {', '.join(exprs)} FROM {q(alias)}.{q(f.table)} AS s "
            f"WHERE {' AND '.join(conds)} ORDER BY {', '.join(order)}",
            args,
        )
        return name

    def drop_staged(self) -> None:
        """After the apply transaction (committed or not)."""
        for name in self.staged:
            with contextlib.suppress(apsw.Error):
                self.conn.execute(f"DROP TABLE IF EXISTS temp.{q(name)}")
        self.staged = []


def _key_expr(f: CopyRange, expr: str) -> str:
    """A key expression of the frame, as SQL over the legacy table `s`: only a rowid name
    or one of the row's columns, `q()`-quoted, passes (it came from a file)."""
    if expr in ROWID_NAMES or any(expr == q(c) for c in f.columns):
        return f"s.{expr}"
    raise TargetError(f"{f.source}.{f.table}: a copied range names an unknown key {expr!r}")


def reset_follows(f: CopyRange, after: list[LogEntry], more: Callable[[int], list[LogEntry]]):
    """A predicate: whether a `TableReset` of `f`'s table is in the log after `f` (`after`
    holds the entries that follow it in the batch; `more` reads the log on)."""

    def look() -> bool:
        entries = after
        while entries:
            for e in entries:
                r = e.frame
                if isinstance(r, TableReset) and (r.source, r.table) == (f.source, f.table):
                    return True
            entries = more(entries[-1].next_offset)
        return False

    return look


# -- inside the apply transaction ---------------------------------------------------------
def copy_staged(
    conn: apsw.Connection,
    shape: AppliedShape,
    f: CopyRange,
    staged: str,
    upsert: Callable[[AppliedShape, str], str],
) -> int | RowBatch:
    """Write the staged rows of `f` into the target table with `upsert(shape, rows)`
    (`apply.upsert_sql`); returns the rows written, or, for a shape one statement cannot
    write (a merged member's key with a collation), the rows as a `RowBatch`."""
    if len(shape.columns) != len(f.columns):
        raise TargetError(
            f"{f.source}.{f.table}: a copied range has {len(f.columns)} columns, the target "
            f"shape {len(shape.columns)}",
            hint="the log and this target disagree; rebuild the target from a fresh snapshot",
        )
    cols = [f"c{i}" for i in range(len(f.columns))]
    position = {q(c): i for i, c in enumerate(f.columns)}
    keys = [f"c{position[k]}" if k in position else "rowid" for k in f.key]
    if shape.key_collations and shape.tag_column is not None:
        width = len(keys)
        rows = exact_text.select(conn, [*keys, *cols], f"FROM temp.{q(staged)} ORDER BY rowid")
        events = [RowEvent(Op.UPSERT, 0, list(r[:width]), list(r[width:])) for r in rows]
        return RowBatch(f.source, f.table, f.observed_at, events)
    if not shape.key:
        cols = ["rowid", *cols]  # the legacy rowid: the row's identity
    args: tuple = ()
    if shape.tag_column is not None:
        cols, args = ["?1", *cols], (shape.tag,)
    rows = f"SELECT {', '.join(cols)} FROM temp.{q(staged)} WHERE 1 ORDER BY rowid"
    conn.execute(upsert(shape, rows), args)
    return conn.changes()


# -- the apply's side (`replicator.apply`) ------------------------------------------------
def stage_copies(
    target: TargetDB,
    plan: Plan,
    entries: list[LogEntry],
    more: Callable[[int], list[LogEntry]] | None,
) -> dict[int, str | None]:
    """Before the apply transaction: the rows of the batch's copied ranges, each read
    from its legacy file in a short read transaction of its own (`replicator.copy_range`).
    Keyed by the frame's id; None: skipped."""
    copies = [
        (i, e.frame)
        for i, e in enumerate(entries)
        if isinstance(e.frame, CopyRange) and maps_here(plan, e.frame, target)
    ]
    if not copies:
        return {}
    read_on = more or (lambda _offset: [])
    after = {id(f): i + 1 for i, f in copies}
    if target.legacy is None:
        target.legacy = LegacyFiles(target.conn, plan, target.busy_timeout_ms)
    staged = target.legacy.stage_all(
        [f for _, f in copies], lambda f: reset_follows(f, entries[after[id(f)] :], read_on)
    )
    crash_point("staged")
    return staged


def maps_here(plan: Plan, f: CopyRange, target: TargetDB) -> bool:
    m = plan.mapping(f.source, f.table)
    return m is not None and m.target == target.name


def copy(
    conn: apsw.Connection,
    target: TargetDB,
    f: CopyRange,
    staged: dict[int, str | None],
    runs: dict[tuple[str, str], list[RowBatch]],
    upsert: Callable[[AppliedShape, str], str],
) -> int:
    """A copied range's staged rows into the target (none when it was skipped). Counts
    the frame's `rows` whatever was copied: the checkpoint's `events` count what the log
    holds (the harvester's position counts the same), and the file may hold more or
    fewer rows in the range by now."""
    if id(f) not in staged:  # `_read_on` reads on only to a value's end: cannot happen
        raise TargetError(f"{target.path}: a copied range of {f.source}.{f.table} not staged")
    name = staged[id(f)]
    if name is None:
        return f.rows
    shape = target.shapes.get((f.source, f.table))
    if shape is None:
        raise TargetError(f"{target.path}: rows of {f.source}.{f.table} arrived before its schema")
    out = copy_staged(conn, shape, f, name, upsert)
    if isinstance(out, RowBatch):
        runs[(f.source, f.table)].append(out)
        return f.rows - len(out.events)  # `_flush` counts the batch's events
    return f.rows
