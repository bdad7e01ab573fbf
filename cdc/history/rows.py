"""The change log read as history: `cdc log tail`, `cdc history` and `cdc rebuild`.

The log already holds every change of every captured table, in order, with the time it
was observed (docs/log-format.md). Segments every target applied are deleted, or with
`[log] retention = "archive"` moved to the archive dir under the same names
(`cdc.changelog.delete_segments_before`). `RetainedLog` reads both as one log: archived
segments, then live ones, by base offset; a segment present in both (mid-move) is read
from the log dir. What it can offer starts at the oldest segment of the unbroken run that
ends at the live log: that bound is said out loud wherever it matters, because a history
that silently starts in the middle looks complete and is not.

Readers here never show half a batch: frames are handed out once the batch's closing
`SourceMark` (or a `SegmentStart`) is on disk, since the daemon cuts an unfinished batch
when it reopens the log. Rebuilding is in `cdc.history_rebuild`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import apsw
import msgspec

from cdc import exact_text
from cdc.changelog.retained import (  # noqa: F401 - re-exported: the history API's names
    RETENTION_HINT,
    HistoryIncomplete,
    RetainedLog,
    Segment,
    incomplete_note,
)
from cdc.changelog.segments import LogEntry
from cdc.config import Config
from cdc.errors import ConfigError
from cdc.events import Op, RowBatch, SegmentStart, SourceMark, TableSchema, Value
from cdc.inventory import affinity
from cdc.planning.plan import Plan, TableMapping
from cdc.stages.finalized import with_finalized
from replicator.target import SCHEMAS, AppliedShape
from verifier.values import encode, render, render_row

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


class LoggedSegment(msgspec.Struct, frozen=True, tag="segment", tag_field="kind"):
    offset: int
    next_offset: int
    base_offset: int
    created_at: float


LoggedEvent = LoggedRow | LoggedSchema | LoggedMark | LoggedSegment


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
            width = len(ev.row) if ev.row is not None else 0
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
                None if ev.row is None else list(ev.row),
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


# -- tail --------------------------------------------------------------------------------


def tail(
    cfg: Config,
    *,
    from_offset: int | None = None,
    last: int | None = None,
    follow: bool = False,
    source: str | None = None,
    table: str | None = None,
    stop: threading.Event | None = None,
    poll: float = 0.2,
) -> Iterator[LoggedEvent]:
    """The log's events from `from_offset` (or the last `last` of them, or the retained
    start), then, with `follow`, each new batch the daemon appends until `stop` is set."""
    if from_offset is not None and last is not None:
        raise ConfigError("give a start offset or a number of last events, not both")
    if last is not None and last < 0:
        raise ConfigError(f"--last {last}: give a count of 0 or more")
    log = RetainedLog.of(cfg)
    cols = Columns.from_targets(cfg)
    match = _matcher(source, table)
    stop = stop or threading.Event()
    if last is not None:
        shown, pos = _last_events(log, last, cols, match)
        yield from shown
    else:
        start = log.start()
        pos = start if from_offset is None else _checked_start(cfg, log, from_offset, start)
    while not stop.is_set():
        for batch in log.batches(pos):
            for e in batch:
                yield from logged_events(e, cols, match)
            pos = batch[-1].next_offset
            if stop.is_set():
                return
        if not follow or stop.wait(poll):
            return


def _checked_start(cfg: Config, log: RetainedLog, offset: int, start: int) -> int:
    if offset < start:
        raise ConfigError(
            f"offset {offset} is before the retained log: {incomplete_note(cfg, start)}"
        )
    end = log.end()
    if offset > end:
        raise ConfigError(f"offset {offset} is past the end of the change log ({end})")
    return log.boundary_at_or_after(offset)


def _last_events(
    log: RetainedLog, n: int, cols: Columns, match: Match
) -> tuple[list[LoggedEvent], int]:
    """The last `n` matching events and the offset after them, reading segments from the
    newest back only as far as needed (a segment holds whole batches)."""
    segs = log.segments()
    if not segs:
        return [], 0
    pos = segs[-1].base
    found: list[list[LoggedEvent]] = []
    newest: dict[tuple[str, str], list[str]] | None = None
    count = 0
    for i in range(len(segs) - 1, -1, -1):
        limit = segs[i + 1].base if i + 1 < len(segs) else None
        evs: list[LoggedEvent] = []
        try:
            for batch in log.batches(segs[i].base, limit):
                for e in batch:
                    evs.extend(logged_events(e, cols, match))
                if limit is None:
                    pos = batch[-1].next_offset
        except HistoryIncomplete:
            break  # retention took the older segments meanwhile: show what we have
        if newest is None:  # the names that rows after `pos` (--follow) start from
            newest = dict(cols.known)
        found.append(evs)
        count += len(evs)
        if count >= n:
            break
    cols.known = cols.known if newest is None else newest
    shown = [e for evs in reversed(found) for e in evs]
    return (shown[-n:] if n else []), pos


# -- one row's history -----------------------------------------------------------------


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


def split_table_ref(plan: Plan, ref: str) -> tuple[str, str]:
    """TARGET.TABLE, where a target name may itself contain dots: the longest known
    target name that prefixes the reference wins."""
    for name in sorted(plan.targets, key=len, reverse=True):
        if ref.startswith(name + ".") and len(ref) > len(name) + 1:
            return name, ref[len(name) + 1 :]
    known = ", ".join(sorted(plan.targets))
    raise ConfigError(f"{ref!r}: give TARGET.TABLE with a known target ({known})")


def members_of(plan: Plan, target: str, table: str) -> list[TableMapping]:
    """The legacy tables feeding one target table (several when merged)."""
    found = [
        m
        for s in plan.sources
        for m in s.tables
        if m.target == target and m.target_table.lower() == table.lower()
    ]
    if not found:
        raise ConfigError(f"no legacy table is mapped to {target}.{table}")
    return found


def parse_key(plan: Plan, target: str, table: str, texts: list[str]) -> list[Value]:
    """Command-line key strings as SQLite would store them in the legacy key columns
    (their affinity: "5" is 5 in an INTEGER key, stays '5' in a TEXT or untyped one).
    A merged table's key may start with the tag, which is text."""
    members = members_of(plan, target, table)
    types = _key_types(plan, members[0])
    tagged = members[0].tag_column is not None and len(texts) == len(types) + 1
    if tagged:
        types = ["TEXT", *types]
    if len(texts) != len(types):
        raise ConfigError(
            f"{target}.{table}: the key has {len(types)} value(s), {len(texts)} given"
        )
    # Bytes that are not UTF-8 arrive as surrogate escapes: such a TEXT no affinity changes.
    values = [exact_text.from_arg(t) for t in texts]
    conn = apsw.Connection(":memory:")
    try:
        conn.execute("CREATE TABLE k(" + ", ".join(f"c{i} {t}" for i, t in enumerate(types)) + ")")
        conn.execute(f"INSERT INTO k VALUES ({exact_text.marks(values)})", exact_text.binds(values))
        return list(exact_text.fetchone(conn, [f"c{i}" for i in range(len(types))], "FROM k"))
    finally:
        conn.close()


def key_from_json(text: str) -> list[Value]:
    """A key given as a JSON array, its values taken as they are (JSON has no blobs). A
    string's bytes that are not UTF-8 arrive as surrogate escapes, which only the standard
    library's parser passes through: they make a TEXT of those bytes."""
    try:
        key = msgspec.json.decode(text)
    except msgspec.DecodeError as e:
        raise ConfigError(f"--key-json {text!r}: {e}") from None
    except UnicodeEncodeError:
        try:
            key = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"--key-json {text!r}: {e}") from None
    if not isinstance(key, list) or not key or any(isinstance(v, list | dict | bool) for v in key):
        raise ConfigError(f"--key-json {text!r}: give an array of numbers, strings or null")
    return [exact_text.from_arg(v) if isinstance(v, str) else v for v in key]


def _key_types(plan: Plan, m: TableMapping) -> list[str]:
    info = plan.source(m.source).info(m.table)
    if info is None:
        raise ConfigError(
            f"{m.source}.{m.table}: its legacy file no longer shows the table (finalized?), "
            "so the key's types are unknown",
            hint="give the key as JSON: --key-json '[5]'",
        )
    if not info.key:
        return ["INTEGER"]  # the rowid
    decl = {c.name.lower(): c.decl_type for c in info.columns}
    # The affinity's own name declares a column with exactly that affinity.
    return [affinity(decl.get(k.lower(), "")) for k in info.key]


def row_history(cfg: Config, plan: Plan, target: str, table: str, key: list[Value]) -> RowHistory:
    """Every change of the row `key` of `target`.`table`, read from the retained log.

    For a merged table the key may start with the member's tag; without it, every member
    is searched (each may hold that key). Finalized stages' tables are searched too."""
    plan = with_finalized(cfg, plan)
    members = members_of(plan, target, table)
    info = plan.source(members[0].source).info(members[0].table)
    width = (len(info.key) or 1) if info is not None else len(key)
    if members[0].tag_column is not None and len(key) == width + 1:
        tag, key = key[0], list(key[1:])
        members = [m for m in members if m.tag == tag]
        if not members:
            tags = ", ".join(sorted(str(m.tag) for m in members_of(plan, target, table)))
            raise ConfigError(f"{target}.{table}: no member has tag {tag!r} (tags: {tags})")
    if len(key) != width:
        raise ConfigError(f"{target}.{table}: the key has {width} value(s), {len(key)} given")
    wanted = {(m.source, m.table) for m in members}
    want = encode(key)
    log = RetainedLog.of(cfg)
    cols = Columns.from_targets(cfg)
    start = end = log.start()
    changes: list[RowChange] = []
    for batch in log.batches(start):
        for e in batch:
            f = e.frame
            if isinstance(f, TableSchema):
                cols.see(f)
            elif isinstance(f, RowBatch) and (f.source, f.table) in wanted:
                for ev in f.events:
                    if encode(ev.key) == want:
                        changes.append(_change(e, f, ev, cols))
        end = batch[-1].next_offset
    return RowHistory(
        target,
        table,
        list(key),
        [f"{s}.{t}" for s, t in sorted(wanted)],
        start,
        end,
        start == 0,
        changes,
        incomplete_note(cfg, start),
    )


def _change(e: LogEntry, f: RowBatch, ev, cols: Columns) -> RowChange:  # noqa: ANN001
    width = len(ev.row) if ev.row is not None else 0
    return RowChange(
        e.offset,
        e.next_offset,
        f.observed_at,
        f.source,
        f.table,
        _OPS[ev.op],
        ev.seq,
        cols.of(f.source, f.table, width) if width else [],
        None if ev.row is None else list(ev.row),
    )


# -- rendering (the CLI prints these) --------------------------------------------------


def iso(ts: float) -> str:
    """UTC with milliseconds; `cdc rebuild --as-of` reads it back."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _image(columns: list[str], row: list[Value]) -> str:
    if len(columns) == len(row):
        return ", ".join(f"{c}={render(v)}" for c, v in zip(columns, row, strict=True))
    return "(" + ", ".join(render_row(row)) + ")"


def format_event(e: LoggedEvent) -> str:
    """One line: offset, time, what, then the event's own details."""
    if isinstance(e, LoggedRow):
        head = f"{e.offset}  {iso(e.observed_at)}  {e.source}.{e.table}  {e.op}"
        head += f"  [{', '.join(render_row(e.key))}]"
        return head if e.row is None else f"{head}  {_image(e.columns, e.row)}"
    if isinstance(e, LoggedSchema):
        cols = ", ".join(f"{c} {t}".rstrip() for c, t in zip(e.columns, e.types, strict=True))
        key = ", ".join(e.key) or "rowid"
        return f"{e.offset}  -  {e.source}.{e.table}  schema  key({key})  {cols}"
    if isinstance(e, LoggedMark):
        line = f"{e.offset}  {iso(e.written_at)}  {e.source}  mark  "
        line += f"through_seq={e.through_seq} events={e.events}"
        return line + (f" copying={','.join(e.copying)}" if e.copying else "")
    return f"{e.offset}  {iso(e.created_at)}  -  segment  base={e.base_offset}"


def _jsonable(s: msgspec.Struct) -> dict:
    """Builtins for JSON, with values as SQL literals (JSON has no blobs, and 1.0 == 1)."""
    d = exact_text.builtins(s)  # key and row, which may hold a RawText, are replaced
    for field in ("key", "row"):
        if d.get(field) is not None:
            d[field] = render_row(getattr(s, field))
    return d


def event_json(e: LoggedEvent) -> str:
    return msgspec.json.encode(_jsonable(e)).decode()


def history_json(h: RowHistory) -> str:
    d = _jsonable(h)
    d["changes"] = [_jsonable(c) for c in h.changes]
    return msgspec.json.encode(d).decode()


def format_history(h: RowHistory) -> str:
    key = ", ".join(render_row(h.key))
    lines = [f"{h.target}.{h.table} [{key}] in {', '.join(h.members)}"]
    if h.note:
        lines.append(h.note)
    for c in h.changes:
        what = c.op + (" (snapshot)" if c.seq == 0 else "")
        line = f"{c.offset}  {iso(c.observed_at)}  {c.source}.{c.table}  {what}"
        lines.append(line if c.row is None else f"{line}  {_image(c.columns, c.row)}")
    n = len(h.changes)
    lines.append(f"{n} change{'s' * (n != 1)} in offsets {h.starts_at}..{h.ends_at}")
    return "\n".join(lines)
