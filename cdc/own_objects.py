"""Every schema object sqlite-cdc creates, by exact name: nothing else is taken for ours.

A bot may well call a table `_cdc_lookalike`. Recognising our objects by a prefix skipped
such a table without a word (never copied, captured or verified), and let `cdc install`
write into a bot's own `_cdc_meta`. So ours are the names below and nothing else, compared
case-insensitively as SQLite compares names. A bot's object that does carry one of these
names cannot live next to ours: the plan refuses its file by name (`claim_problems`), and
refuses a mapping that would give a target table one of them (`target_problems`).

tests/capture/test_own_names.py checks this list against the modules that create the objects and
against the schema of real installed files and targets.
"""

from __future__ import annotations

import re

import apsw

# In every captured file (cdc.capture), and in a target during the way back (cdc.backflow).
CAPTURE_TABLES = ("_cdc_changes", "_cdc_tables", "_cdc_meta")
# Made and dropped together with them, and only there (cdc.capture's vacuum mark).
CAPTURE_EXTRAS = ("_cdc_vacuum_mark",)
# In targets: checkpoints.store, replicator.target, and the way back's `_cdc_touched`.
TARGET_TABLES = (
    "_cdc_checkpoint",
    "_cdc_source_applied",
    "_cdc_snapshot_done",
    "_cdc_schemas",
    "_cdc_touched",
)
# Beside a file's fences (cdc.capture.fence): the tables they are armed for. Kept with the
# fences by a finalized file, which drops the capture tables.
FENCE_TABLES = ("_cdc_fenced",)
TABLES = frozenset(CAPTURE_TABLES + CAPTURE_EXTRAS + TARGET_TABLES + FENCE_TABLES)

_TID = "(?:0|[1-9][0-9]*)"  # a tid as Python formats an int
# cdc.capture.trigger_names: capture triggers, which exist only next to the capture tables.
_CAPTURE_TRIGGER = re.compile(rf"_cdc_t{_TID}_(?:ins|upd|updkey|del|uniq|uniqupd)", re.I)
# cdc.fence.trigger_names: fences, which a finalized file keeps without the capture tables.
# and the two that keep a stale writer from disarming them (`_cdc_fenced_del`, `_upd`).
_FENCE_TRIGGER = re.compile(rf"_cdc_fence{_TID}_(?:ins|upd|del)|_cdc_fenced_(?:del|upd)", re.I)

# The leading columns each of our tables is created with: a bot's table of the same name
# and another shape is not ours (columns added later, like `k2`, come after these).
_SHAPES = {
    "_cdc_changes": ("seq", "tid", "op", "k1"),
    "_cdc_tables": ("tid", "name", "key_width"),
    "_cdc_meta": ("k", "v"),
    "_cdc_vacuum_mark": ("mark",),
    "_cdc_checkpoint": ("consumer", "log_offset", "events", "updated_at"),
    "_cdc_source_applied": ("consumer", "source", "install_id", "through_seq"),
    "_cdc_snapshot_done": ("consumer", "source", "tbl"),
    "_cdc_schemas": ("source", "tbl", "shape"),
    "_cdc_touched": ("tid", "k1"),
    "_cdc_fenced": ("tid",),
}


def is_own_table(name: str) -> bool:
    return name.lower() in TABLES


def is_capture_trigger(name: str) -> bool:
    return _CAPTURE_TRIGGER.fullmatch(name) is not None


def is_fence_trigger(name: str) -> bool:
    return _FENCE_TRIGGER.fullmatch(name) is not None


def is_own_trigger(name: str) -> bool:
    return is_capture_trigger(name) or is_fence_trigger(name)


def is_own(name: str) -> bool:
    """Whether `name` is one sqlite-cdc gives an object it creates."""
    return is_own_table(name) or is_own_trigger(name)


def foreign_claims(conn: apsw.Connection) -> list[tuple[str, str]]:
    """(type, name) of every object of the main schema that carries one of our names but
    is not ours: a table of another shape, a view or index (tables, views and indexes share
    one namespace in SQLite), capture tables not all three present (`cdc install` creates
    them in one transaction, `uninstall` drops them in one), or capture triggers without
    them. A table's shape decides, since a file keeps no record of who created a table."""
    rows = conn.execute(
        "SELECT type, name FROM sqlite_schema WHERE type IN ('table','view','index','trigger')"
    ).fetchall()
    ours = {n.lower() for t, n in rows if t == "table" and _has_our_shape(conn, n)}
    installed = all(t in ours for t in CAPTURE_TABLES)
    out = []
    for kind, name in rows:
        low = name.lower()
        if is_own_table(name):
            if low not in ours or (low in CAPTURE_TABLES + CAPTURE_EXTRAS and not installed):
                out.append((kind, name))
        elif kind == "trigger" and is_capture_trigger(name) and not installed:
            out.append((kind, name))
    return sorted(out, key=lambda c: c[1].lower())


def _has_our_shape(conn: apsw.Connection, name: str) -> bool:
    shape = _SHAPES.get(name.lower())
    if shape is None:
        return False
    cols = [
        r[0].lower()
        for r in conn.execute("SELECT name FROM pragma_table_info(?) ORDER BY cid", (name,))
    ]
    return tuple(cols[: len(shape)]) == shape


def claim_problems(conn: apsw.Connection, source: str, path: str) -> list[str]:
    """One plan problem per object of a legacy file that carries one of our names."""
    return [
        f"source {source!r} ({path}): {kind} {name!r} has a name sqlite-cdc keeps for its own "
        "objects (compared without regard to case): rename it; capture cannot be installed "
        "next to it"
        for kind, name in foreign_claims(conn)
    ]


def target_problems(mappings) -> list[str]:  # noqa: ANN001 - TableMapping (cdc.plan)
    """A target table may not take a name our bookkeeping in that target uses."""
    return [
        f"{m.source}.{m.table} -> {m.target}.{m.target_table}: {m.target_table!r} is a name "
        "sqlite-cdc keeps for its own tables in a target (compared without regard to case): "
        "give the table another name (`as`)"
        for m in mappings
        if is_own_table(m.target_table)
    ]
