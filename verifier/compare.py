"""Exact comparison of a legacy table with its target table, by key, value and storage class.

Python's `==` says 1 == 1.0 == True and -0.0 == 0.0; a migration must not. `canonical`
turns a value into something that compares equal only when SQLite would store the same
thing: the storage class plus, for REAL, the exact bits (float.hex keeps the sign of zero).
SQLite never stores NaN (it becomes NULL), so NaN needs no rule.
"""

from __future__ import annotations

import apsw
import msgspec

from cdc.changelog.bigrows import read_digested
from cdc.exact_text import RawText
from cdc.inventory import table_info
from cdc.planning.plan import Plan, TableMapping
from cdc.sqlconn import open_legacy, read_transaction
from cdc.sqlident import q
from verifier.shape import shape_differences


def canonical(v: object) -> tuple:
    if v is None:
        return ("null",)
    if isinstance(v, int):
        return ("integer", v)
    if isinstance(v, float):
        return ("real", v.hex())
    if isinstance(v, str):
        return ("text", v)
    if isinstance(v, RawText):  # TEXT that is not valid UTF-8: its bytes, never a str's
        return ("text", v.data)
    if isinstance(v, msgspec.msgpack.Ext):  # a big BLOB's size and digest (cdc.bigrows)
        return ("blob digest", bytes(v.data))
    return ("blob", bytes(v))


class TableDiff(msgspec.Struct):
    source: str
    table: str
    target: str
    target_table: str
    source_rows: int = 0
    target_rows: int = 0
    missing: list[list] = []  # keys in source, not in target
    extra: list[list] = []  # keys in target, not in source
    different: list[list] = []  # keys whose values differ
    shape: list[str] = []  # how the target table's columns differ (`verifier.shape`)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different or self.shape)


def _rows(
    conn: apsw.Connection,
    table: str,
    rowid: str | None,
    kexpr: list[str],
    names: list[str],
    where: str,
    args,  # noqa: ANN001
) -> dict[tuple, tuple[tuple, ...]]:
    """Every row by key, read in one transaction (any width; a big BLOB as its digest):
    the rows of each key, sorted, so that a repeated key compares as a multiset."""
    out: dict[tuple, list[tuple]] = {}
    cols = [q(c) for c in names]
    with read_transaction(conn):
        rows = read_digested(
            conn,
            table,
            rowid,
            kexpr,
            cols,
            names,
            f"FROM {q(table)} {where} ORDER BY {', '.join(kexpr)}",
            args,
        )
    width = len(kexpr)
    for r in rows:  # a key may repeat (NULLs are distinct in a rowid table's key): keep all
        key = tuple(canonical(v) for v in r[:width])
        out.setdefault(key, []).append(tuple(canonical(v) for v in r[width:]))
    return {k: tuple(sorted(v, key=repr)) for k, v in out.items()}


def compare_table(
    src: apsw.Connection, tgt: apsw.Connection, m: TableMapping, sample: int = 20
) -> TableDiff:
    """Compare every row over the source's columns, and the two tables' shapes."""
    info = table_info(src, m.table)
    kexpr = [q(k) for k in info.key] or [info.rowid_alias()]
    names = info.column_names
    rowid = None if info.without_rowid else info.rowid_alias()
    s = _rows(src, m.table, rowid, kexpr, names, "", ())
    where, args = "", ()
    if m.tag_column:
        where, args = f"WHERE {q(m.tag_column)} IS ?", (m.tag,)
    try:
        t = _rows(tgt, m.target_table, rowid, kexpr, names, where, args)
    except apsw.SQLError:
        t = {}
    missing = [list(k) for k in s.keys() - t.keys()]
    extra = [list(k) for k in t.keys() - s.keys()]
    diff = [list(k) for k in s.keys() & t.keys() if s[k] != t[k]]
    return TableDiff(
        m.source,
        m.table,
        m.target,
        m.target_table,
        sum(map(len, s.values())),
        sum(map(len, t.values())),
        missing[:sample],
        extra[:sample],
        diff[:sample],
        shape_differences(info, tgt, m),
    )


def compare_plan(plan: Plan, busy_timeout_ms: int = 5000) -> list[TableDiff]:
    """Compare every mapped table; call when the sources are quiet and the backlog is zero."""
    targets = {
        n: apsw.Connection(p, flags=apsw.SQLITE_OPEN_READONLY) for n, p in plan.targets.items()
    }
    out = []
    try:
        for sp in plan.sources:
            if not sp.tables:
                continue
            src = open_legacy(sp.path, busy_timeout_ms, readonly=True)
            try:
                for m in sp.tables:
                    out.append(compare_table(src, targets[m.target], m))
            finally:
                src.close()
    finally:
        for c in targets.values():
            c.close()
    return out
