"""Reading harvested changes: the capture rows of a sequence range, each joined with its
row's image as it is now, as row events (`cdc.capture.triggers` writes the capture rows).

Apart from the triggers so each concept reads whole: what the triggers record, and how a
harvest (or the way back, `cdc.cutover.backflow`) turns it into log frames.
"""

from __future__ import annotations

import apsw

from cdc.capture.triggers import CHANGES, key_width, same
from cdc.changelog import bigrows
from cdc.events import Op, RowBatch, RowEvent
from cdc.inventory import TableInfo, affinity, key_collations
from cdc.sqlident import q


def read_changes(
    conn: apsw.Connection, info: TableInfo, tid: int, lo: int, hi: int
) -> list[RowEvent]:
    """The changes of one table with capture sequence in (lo, hi], inside the caller's read
    transaction: one event per key (its newest sequence), carrying the row's image now or a
    delete when the key is gone. Values are read whole: used during the rollback window,
    for the targets (`cdc.backflow`); the harvester uses `change_batches`."""
    return _changes(conn, info, tid, lo, hi)[0]


def change_batches(
    conn: apsw.Connection,
    source: str,
    info: TableInfo,
    tid: int,
    lo: int,
    hi: int,
    observed_at: float,
    spool_dir: str | None = None,
) -> list[RowBatch]:
    """`read_changes` as log frames, with each BLOB too big to carry in a row copied into
    `spool_dir` for streaming (`cdc.bigrows`; None: read whole)."""
    spool = None if spool_dir is None else bigrows.spooler(conn, info.name, spool_dir)
    events, streamed = _changes(conn, info, tid, lo, hi, spool)
    return bigrows.batches(source, info.name, observed_at, events, streamed, info.column_names)


def _changes(
    conn: apsw.Connection,
    info: TableInfo,
    tid: int,
    lo: int,
    hi: int,
    spool=None,  # noqa: ANN001 - a `bigrows.spooler`
) -> tuple[list[RowEvent], list]:
    width = key_width(info)
    kcols = [f"k{i + 1}" for i in range(width)]
    if info.key:
        # Exact, not merely equal under the key's collation: the captured old key 'Alpha'
        # must not find the row now spelled 'ALPHA' (that row has its own capture row).
        join = " AND ".join(
            same(f"t.{q(k)}", f"c.{kc}")
            for k, kc in zip(info.key, kcols[: len(info.key)], strict=True)
        )
        if info.null_key:  # a NULL key is one row of many: its rowid says which
            join += f" AND (c.{kcols[-1]} IS NULL OR t.{info.rowid_alias()} = c.{kcols[-1]})"
        # WITHOUT ROWID keys are NOT NULL, so a key column tells presence.
        anchor = q(info.key[0]) if info.without_rowid else info.rowid_alias()
        present = f"t.{anchor} IS NOT NULL"
    else:
        join = f"t.{info.rowid_alias()} = c.k1"
        present = f"t.{info.rowid_alias()} IS NOT NULL"
    # Gone: is a row equal to the key under the table's own comparison there instead ('a'
    # after a REPLACE of 'A' under NOCASE, 2.0 for 2)? Not: the delete takes every spelling.
    # A key with one spelling only has none other to find: its delete is exact (1).
    equal = (
        " AND ".join(
            f"e.{q(k)} = c.{kc}" for k, kc in zip(info.key, kcols[: len(info.key)], strict=True)
        )
        if info.key
        else f"e.{info.rowid_alias()} = c.k1"
    )
    other = (
        "1"
        if one_spelling(conn, info)
        else f"CASE WHEN {present} THEN 0 ELSE EXISTS (SELECT 1 FROM {q(info.name)} AS e "
        f"WHERE {equal}) END"
    )
    tail = (
        f"FROM (SELECT max(seq) AS s, {', '.join(kcols)} FROM {CHANGES} "
        f"WHERE seq > ? AND seq <= ? AND tid = ? "
        f"GROUP BY {', '.join(f'typeof({k}), {k}' for k in kcols)}) AS c "
        f"LEFT JOIN {q(info.name)} AS t ON {join} ORDER BY c.s"
    )
    rows, streamed = bigrows.read_rows(
        conn,
        ["c.s", present, other, *(f"c.{k}" for k in kcols)],
        [f"t.{q(c)}" for c in info.column_names],
        tail,
        (lo, hi, tid),
        info.name,
        info.column_names,
        None if info.without_rowid else f"t.{info.rowid_alias()}",
        spool,
    )
    kend = 3 + width
    upsert, delete = Op.UPSERT, Op.DELETE
    if info.null_key:  # the rowid stays in the key only where the key holds a NULL
        keys = [list(r[3:kend]) if r[kend - 1] is not None else list(r[3 : kend - 1]) for r in rows]
    else:
        keys = [list(r[3:kend]) for r in rows]
    events = [
        RowEvent(upsert, r[0], k, list(r[kend:]))
        if r[1]
        else RowEvent(delete, r[0], k, None if r[2] else [])  # []: every spelling
        for r, k in zip(rows, keys, strict=True)
    ]
    return events, streamed


_ONE_SPELLING: dict[tuple[str, str], bool] = {}


def one_spelling(conn: apsw.Connection, info: TableInfo) -> bool:
    """Whether two keys of the table that are equal under its own comparison are always
    identical: the rowid, or every key column BINARY with INTEGER affinity (an integral
    REAL is stored as an INTEGER, text as a number where it looks like one) or TEXT (a
    number is stored as text). Then a key that is gone has no other spelling to look
    for, and its delete needs no search and no wider delete (`RowEvent.every_spelling`):
    the search cost the drain a tenth of its speed (bench/README.md). Any other affinity
    or collation may hold both (2 and 2.0 untyped, 'a' and 'A' under NOCASE): searched."""
    key = (info.name, info.create_sql)
    got = _ONE_SPELLING.get(key)
    if got is None:
        colls = key_collations(conn, info.name, info.key) if info.key else None
        decl = {c.name.lower(): c.decl_type for c in info.columns}
        got = colls is None or all(
            coll == "BINARY" and affinity(decl.get(k.lower(), "")) in ("INTEGER", "TEXT")
            for k, coll in zip(info.key, colls, strict=True)
        )
        _ONE_SPELLING[key] = got
    return got
