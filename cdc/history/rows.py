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

This module keeps one row's history; the shown events are in `cdc.history.logged`, `cdc
log tail` in `cdc.history.tail` and their text in `cdc.history.render`, all re-exported
here so that callers keep one import for the history API.
"""

from __future__ import annotations

import json

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
from cdc.events import CopyRange, RowBatch, TableSchema, Value
from cdc.history.logged import (  # noqa: F401 - re-exported: the history API's names
    _OPS,
    Columns,
    LoggedEvent,
    LoggedMark,
    LoggedRow,
    LoggedSchema,
    LoggedSegment,
    Match,
    RowChange,
    RowHistory,
    _matcher,
    logged_events,
)
from cdc.history.render import (  # noqa: F401 - re-exported: the history API's names
    _image,
    _jsonable,
    event_json,
    format_event,
    format_history,
    history_json,
    iso,
)
from cdc.history.tail import (  # noqa: F401 - re-exported: the history API's names
    _checked_start,
    _last_events,
    tail,
)
from cdc.inventory import affinity
from cdc.planning.plan import Plan, TableMapping
from cdc.stages.finalized import with_finalized
from verifier.values import encode

# -- one row's history -----------------------------------------------------------------


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
    copied: list[str] = []  # ranges copied by reference: their images are not in the log
    for batch in log.batches(start):
        for e in batch:
            f = e.frame
            if isinstance(f, TableSchema):
                cols.see(f)
            elif isinstance(f, CopyRange) and (f.source, f.table) in wanted:
                copied.append(f"{f.source}.{f.table} at offset {e.offset}")
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
        start == 0 and not copied,
        changes,
        _note(incomplete_note(cfg, start), copied),
    )


def _note(incomplete: str | None, copied: list[str]) -> str | None:
    if not copied:
        return incomplete
    more = f" (and {len(copied) - 1} more)" if len(copied) > 1 else ""
    by_ref = (
        f"the initial copy went by reference ({copied[0]}{more}): an image it copied is "
        'not in the log (`daemon.snapshot_copy = "log"` keeps them)'
    )
    return by_ref if incomplete is None else f"{incomplete}; {by_ref}"


def _change(e: LogEntry, f: RowBatch, ev, cols: Columns) -> RowChange:  # noqa: ANN001
    width = len(ev.row) if ev.row else 0
    return RowChange(
        e.offset,
        e.next_offset,
        f.observed_at,
        f.source,
        f.table,
        _OPS[ev.op],
        ev.seq,
        cols.of(f.source, f.table, width) if width else [],
        list(ev.row) if ev.row else None,  # a delete's [] (`every_spelling`) too
    )
