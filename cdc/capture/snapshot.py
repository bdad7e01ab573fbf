"""Reading rows straight from a captured table, not through capture rows.

The initial copy and a repair's re-send both read a table's current images by key, each
in one short read transaction the harvester holds: a reading of its own, with its own
keys, bounds and exact-text binding, that the harvester's stream never needs. Kept apart
so the stream's path and this one can each be read whole.
"""

from __future__ import annotations

from typing import NamedTuple

import apsw

from cdc import exact_text
from cdc.capture import triggers as capture
from cdc.changelog import bigrows
from cdc.events import Op, RowEvent, SnapshotCursor
from cdc.inventory import TableInfo
from cdc.sqlident import q


def snapshot_keys(info: TableInfo, nulls: bool) -> tuple[list[str], list[str], str]:
    """What a snapshot chunk selects before the columns (the event's key), what it orders
    and bounds by, and the WHERE that picks its rows (empty: all). The rows whose key
    holds a NULL come last, by rowid, with the rowid as the key's last value, as the
    harvest writes them (`capture.key_exprs`)."""
    if not info.key:
        return [info.rowid_alias()], [info.rowid_alias()], ""
    kexpr = [q(k) for k in info.key]
    if not info.null_key:
        return kexpr, kexpr, ""
    has_null = "(" + " OR ".join(f"{k} IS NULL" for k in kexpr) + ")"
    if not nulls:  # a bound holding NULL would compare with nothing: leave them out here
        return kexpr, kexpr, f"WHERE NOT {has_null}"
    rowid = info.rowid_alias()
    return [*kexpr, rowid], [rowid], f"WHERE {has_null}"


class Chunk(NamedTuple):
    """One chunk read: rows start with `width` key values, the last `order` of which
    the chunk is ordered by; `until` is the copy's upper bound (None: the table is empty)."""

    rows: list
    streamed: list
    until: list | None
    width: int
    order: int


def read_chunk(
    conn: apsw.Connection, info: TableInfo, cur: SnapshotCursor, limit: int, spool: str
) -> Chunk:
    """The next `limit` rows after `cur`, up to its bound (fixed at the first chunk)."""
    kexpr, order, nulls = snapshot_keys(info, cur.nulls)
    until = cur.until
    if until is None:
        top = exact_text.fetchone(  # a key may be TEXT that is not UTF-8
            conn,
            order,
            f"FROM {q(info.name)} {nulls} ORDER BY {', '.join(k + ' DESC' for k in order)} LIMIT 1",
        )
        until = list(top) if top and top[0] is not None else None
    rows, streamed = [], []
    if until is not None:
        marks, keys = exact_text.marks, ", ".join(order)
        conds, args = [f"({keys}) <= ({marks(until)})"], exact_text.binds(until)
        if cur.after is not None:
            conds.append(f"({keys}) > ({marks(cur.after)})")
            args += exact_text.binds(cur.after)
        rows, streamed = bigrows.table_rows(  # any width; big BLOBs left to stream
            conn,
            info,
            kexpr,
            f"FROM {q(info.name)} {nulls or 'WHERE 1'} AND {' AND '.join(conds)} "
            f"ORDER BY {keys} LIMIT {int(limit)}",
            args,
            spool,
        )
    return Chunk(rows, streamed, until, len(kexpr), len(order))


AUTO_ROWS = 100_000  # `snapshot_copy = "auto"`: tables above this many rows go by reference


def holds_more_than(conn: apsw.Connection, info: TableInfo, n: int) -> bool:
    """Whether the table holds more than `n` rows whose key has no NULL: a walk of at
    most `n` keys in the key's order, not a count of the whole table."""
    _, order, nulls = snapshot_keys(info, False)
    sql = (
        f"SELECT 1 FROM {q(info.name)} {nulls} ORDER BY {', '.join(order)} LIMIT 1 OFFSET {int(n)}"
    )
    return conn.execute(sql).fetchone() is not None


class Range(NamedTuple):
    """One chunk bounded, not read: the key range (`after`, `last`] of the next `rows`
    rows after `cur` (`last` None: no row left); `until` as in `Chunk`."""

    last: list | None
    rows: int
    until: list | None
    kexpr: list[str]
    order: list[str]
    big: bool = False  # a BLOB the log streams is in the range: read the chunk instead


def read_range(conn: apsw.Connection, info: TableInfo, cur: SnapshotCursor, limit: int) -> Range:
    """The bounds of the chunk `read_chunk` would read, found by walking its keys only
    (in the key's index, or the table's b-tree for a rowid): the rows themselves are
    copied by the apply side, inside SQLite (`cdc.events.CopyRange`). Not for the rows
    whose key holds a NULL (`cur.nulls`): they are not reached by a range."""
    kexpr, order, nulls = snapshot_keys(info, cur.nulls)
    until = cur.until
    if until is None:
        top = exact_text.fetchone(
            conn,
            order,
            f"FROM {q(info.name)} {nulls} ORDER BY {', '.join(k + ' DESC' for k in order)} LIMIT 1",
        )
        until = list(top) if top and top[0] is not None else None
    if until is None:
        return Range(None, 0, None, kexpr, order)
    marks, keys = exact_text.marks, ", ".join(order)
    conds, args = [f"({keys}) <= ({marks(until)})"], exact_text.binds(until)
    if cur.after is not None:
        conds.append(f"({keys}) > ({marks(cur.after)})")
        args += exact_text.binds(cur.after)
    where = f"FROM {q(info.name)} {nulls or 'WHERE 1'} AND {' AND '.join(conds)}"
    nth = exact_text.fetchone(
        conn, order, f"{where} ORDER BY {keys} LIMIT 1 OFFSET {int(limit) - 1}", args
    )
    if nth is not None:
        last, n = list(nth), int(limit)
    else:
        (n,) = conn.execute(f"SELECT count(*) {where}", args).fetchone()
        last = until if n else None
    if last is not None and _holds_big(conn, info, cur, nulls, order, last):
        return Range(None, 0, until, kexpr, order, big=True)
    return Range(last, n, until, kexpr, order)


def _holds_big(
    conn: apsw.Connection,
    info: TableInfo,
    cur: SnapshotCursor,
    nulls: str,
    order: list[str],
    last: list,
) -> bool:
    """Whether a row of the range (`cur.after`, `last`] holds a BLOB the log streams
    (`bigrows.STREAM_ABOVE`): copied inside SQLite, it would be held whole in memory, so
    such a chunk goes through the log. `typeof` and `length` read no BLOB's bytes. Bound
    by `last` alone above: given the copy's `until` too, SQLite searched up to that one,
    a scan to the table's end for every chunk (measured: 90% of the read side)."""
    keys, marks = ", ".join(order), exact_text.marks
    conds, args = [f"({keys}) <= ({marks(last)})"], exact_text.binds(last)
    if cur.after is not None:
        conds.append(f"({keys}) > ({marks(cur.after)})")
        args += exact_text.binds(cur.after)
    where = f"FROM {q(info.name)} {nulls or 'WHERE 1'} AND {' AND '.join(conds)}"
    names = info.column_names
    for i in range(0, len(names), 100):  # an OR of each column: 100 at a time (depth)
        bigs = " OR ".join(f"({bigrows.big_blob(q(c))})" for c in names[i : i + 100])
        if conn.execute(f"SELECT 1 {where} AND ({bigs}) LIMIT 1", args).fetchone():
            return True
    return False


def read_keys(conn: apsw.Connection, info: TableInfo, keys: list[list]) -> list[RowEvent]:
    """The current image of each of `keys` (once each), or its deletion if it is gone."""
    kexpr = [q(k) for k in info.key] or [info.rowid_alias()]
    cols = [q(c) for c in info.column_names]
    events, seen = [], set()
    for key in keys:
        mark = exact_text.pack(key)
        if len(key) != len(kexpr) or mark in seen:
            continue
        seen.add(mark)
        where = " AND ".join(  # exactly this key: 'Alpha' never finds 'ALPHA'
            capture.same(k, exact_text.mark(v).replace("?", f"?{i}"))
            for i, (k, v) in enumerate(zip(kexpr, key, strict=True), 1)
        )
        row = exact_text.fetchone(  # TEXT that is not UTF-8 read and bound exactly
            conn, cols, f"FROM {q(info.name)} WHERE {where}", exact_text.binds(key)
        )
        events.append(
            RowEvent(Op.UPSERT, 0, list(key), list(row))
            if row is not None
            else RowEvent(Op.DELETE, 0, list(key))
        )
    return events
