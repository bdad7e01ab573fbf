"""The change log's frames as `cdc log tail` and `cdc history` show them.

Kept apart from the readers (`cdc.history.tail`, `cdc.history.rows`) so that both, and
the rendering (`cdc.history.render`), share one definition of what is shown and how a
row image's columns are named, without importing each other.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterator

import apsw
import msgspec

from cdc.changelog.segments import LogEntry
from cdc.config import Config
from cdc.events import CopyRange, Op, RowBatch, SegmentStart, SourceMark, TableSchema, Value
from replicator.target import SCHEMAS, AppliedShape

Match = Callable[[str | None, str | None], bool]  # (source, table) -> shown?


# -- events as shown ---------------------------------------------------------------------


class LoggedRow(msgspec.Struct, frozen=True, tag="row", tag_field="kind"):
    """One row event. `columns` names the values of `row` ([] when neither the log nor a
    target says); `seq` 0 marks a row of the initial snapshot."""

    offset: int
    next_offset: int
    source: str
    table: str
    observed_at: float
    op: str  # "upsert" or "delete"
    seq: int
    key: list[Value]
    columns: list[str] = []
    row: list[Value] | None = None


class LoggedSchema(msgspec.Struct, frozen=True, tag="schema", tag_field="kind"):
    offset: int
    next_offset: int
    source: str
    table: str
    columns: list[str]
    types: list[str]
    key: list[str]  # [] : the rowid


class LoggedMark(msgspec.Struct, frozen=True, tag="mark", tag_field="kind"):
    offset: int
    next_offset: int
    source: str
    written_at: float
    through_seq: int
    events: int
    copying: list[str] = []  # tables whose initial copy is not done yet


class LoggedCopy(msgspec.Struct, frozen=True, tag="copy", tag_field="kind"):
    """A chunk of an initial copy that went by reference (`cdc.events.CopyRange`): the
    key range (`after`, `until`] in the snapshot's order (`after` None: from the first
    key), whose `rows` rows the apply read from the legacy file; they are not in the log."""

    offset: int
    next_offset: int
    source: str
    table: str
    observed_at: float
    order: list[str]
    after: list[Value] | None
    until: list[Value]
    rows: int


class LoggedSegment(msgspec.Struct, frozen=True, tag="segment", tag_field="kind"):
    offset: int
    next_offset: int
    base_offset: int
    created_at: float


LoggedEvent = LoggedRow | LoggedSchema | LoggedMark | LoggedCopy | LoggedSegment


class RowChange(msgspec.Struct, frozen=True):
    """One change of a row: its image after the change (`row` None: deleted)."""

    offset: int
    next_offset: int  # `cdc rebuild --as-of` this offset shows the row as here
    observed_at: float
    source: str
    table: str
    op: str
    seq: int  # capture sequence; 0: the initial snapshot
    columns: list[str]
    row: list[Value] | None = None


class RowHistory(msgspec.Struct, frozen=True):
    """Every change of one target row in the retained log, oldest first.

    `complete` is False when the log starts after offset 0: changes before `starts_at`
    were deleted and `note` says so."""

    target: str
    table: str
    key: list[Value]
    members: list[str]  # the legacy tables searched, as source.table
    starts_at: int
    ends_at: int
    complete: bool
    changes: list[RowChange]
    note: str | None = None


class Columns:
    """Column names of each (source, table), for row images positional in the log.

    A `TableSchema` frame says them, but a read starting mid-log may not have met it yet:
    until then the targets' `_cdc_schemas` (the newest applied shape) stand in, cut to the
    row's width (columns are only ever appended, by ADD COLUMN)."""

    def __init__(self, known: dict[tuple[str, str], list[str]]) -> None:
        self.known = known

    @classmethod
    def from_targets(cls, cfg: Config) -> Columns:
        known: dict[tuple[str, str], list[str]] = {}
        dec = msgspec.msgpack.Decoder(AppliedShape)
        for path in cfg.targets.values():
            if not os.path.exists(path):
                continue
            try:
                conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
                try:
                    for s, t, b in conn.execute(f"SELECT source, tbl, shape FROM {SCHEMAS}"):
                        known[(s, t)] = dec.decode(b).columns
                finally:
                    conn.close()
            except (apsw.Error, msgspec.DecodeError):
                continue  # not replicated yet, or locked: names from the log only
        return cls(known)

    def see(self, f: TableSchema) -> None:
        self.known[(f.source, f.table)] = [c.name for c in f.columns]

    def of(self, source: str, table: str, width: int) -> list[str]:
        cols = self.known.get((source, table), [])
        return cols[:width] if len(cols) >= width else []


def logged_events(e: LogEntry, cols: Columns, match: Match) -> Iterator[LoggedEvent]:
    """The events one frame shows (a row batch: one per row), if `match` wants them."""
    f = e.frame
    if isinstance(f, TableSchema):
        cols.see(f)
        if match(f.source, f.table):
            names = [c.name for c in f.columns]
            types = [c.decl_type for c in f.columns]
            yield LoggedSchema(e.offset, e.next_offset, f.source, f.table, names, types, f.key)
    elif isinstance(f, RowBatch):
        if not match(f.source, f.table):
            return
        for ev in f.events:
            width = len(ev.row) if ev.row else 0
            yield LoggedRow(
                e.offset,
                e.next_offset,
                f.source,
                f.table,
                f.observed_at,
                _OPS[ev.op],
                ev.seq,
                list(ev.key),
                cols.of(f.source, f.table, width) if width else [],
                list(ev.row) if ev.row else None,  # a delete's [] (`every_spelling`) too
            )
    elif isinstance(f, CopyRange):
        if match(f.source, f.table):
            yield LoggedCopy(
                e.offset,
                e.next_offset,
                f.source,
                f.table,
                f.observed_at,
                list(f.order),
                None if f.after is None else list(f.after),
                list(f.until),
                f.rows,
            )
    elif isinstance(f, SourceMark):
        if match(f.source, None):
            p = f.position
            copying = [c.table for c in p.snapshots if not c.done]
            yield LoggedMark(
                e.offset, e.next_offset, f.source, f.written_at, p.through_seq, p.events, copying
            )
    elif isinstance(f, SegmentStart) and match(None, None):
        yield LoggedSegment(e.offset, e.next_offset, f.base_offset, f.created_at)


_OPS = {Op.UPSERT: "upsert", Op.DELETE: "delete"}


def _matcher(source: str | None, table: str | None) -> Match:
    """Globs on source and table; a mark passes on its source alone, unless a table is
    asked for, and segment starts pass only when nothing is filtered."""

    def match(s: str | None, t: str | None) -> bool:
        if s is None:
            return source is None and table is None
        if t is None and table is not None:
            return False
        ok_s = source is None or fnmatch.fnmatchcase(s, source)
        return ok_s and (t is None or table is None or fnmatch.fnmatchcase(t, table))

    return match
