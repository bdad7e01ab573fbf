"""Text and JSON of what `cdc log tail` and `cdc history` show (the CLI prints these)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from cdc import exact_text
from cdc.events import Value
from cdc.history.logged import (
    LoggedCopy,
    LoggedEvent,
    LoggedMark,
    LoggedRow,
    LoggedSchema,
    RowHistory,
)
from verifier.values import render, render_row


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
    if isinstance(e, LoggedCopy):
        after = "start" if e.after is None else ", ".join(render_row(e.after))
        return (
            f"{e.offset}  {iso(e.observed_at)}  {e.source}.{e.table}  copy  "
            f"({', '.join(e.order)}) in ({after}]..[{', '.join(render_row(e.until))}]  "
            f"rows={e.rows} (by reference: not in the log)"
        )
    return f"{e.offset}  {iso(e.created_at)}  -  segment  base={e.base_offset}"


def _jsonable(s: msgspec.Struct) -> dict:
    """Builtins for JSON, with values as SQL literals (JSON has no blobs, and 1.0 == 1)."""
    d = exact_text.builtins(s)  # key and row, which may hold a RawText, are replaced
    for field in ("key", "row", "after", "until"):
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
