"""The fuzzer's own oracle: reads a legacy table and its target table with plain SQL and
compares them as multisets of rows, value by value, storage class and exact bytes.

It shares no code with the replicator or the verifier (no `cdc` import): a bug in their
reading of rows (decoding, key matching, collations) cannot hide itself here. Values are
read as `typeof(c)` plus the bytes `CAST(c AS BLOB)` gives for TEXT and BLOB (so TEXT that
is not valid UTF-8 is compared as stored) and the exact bits of a REAL.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

import apsw

from tests.fuzz.schema import ROWID_NAMES
from tests.fuzz.sqltext import ident, literal

Value = tuple  # ("integer", int) | ("real", 8 bytes) | ("text"/"blob", bytes) | ("null",)


def _cell(kind: str, v: object) -> Value:
    if kind == "real":
        return ("real", struct.pack(">d", v))
    if kind in ("text", "blob"):
        return (kind, bytes(v))
    if kind == "integer":
        return ("integer", v)
    return ("null",)


def show(cell: Value) -> str:
    """A cell as the SQL literal that stores it (storage class visible)."""
    kind = cell[0]
    if kind == "real":
        return literal(struct.unpack(">d", cell[1])[0])
    if kind == "integer":
        return str(cell[1])
    if kind == "blob":
        return f"x'{cell[1].hex()}'"
    if kind == "text":
        try:
            return literal(cell[1].decode("utf-8"))
        except UnicodeDecodeError:
            return f"CAST(x'{cell[1].hex()}' AS TEXT)"
    return "NULL"


@dataclass
class Columns:
    names: list[str]  # every column, in table order
    generated: set[str]  # lower-cased names of generated columns


def columns(conn: apsw.Connection, table: str) -> Columns | None:
    rows = conn.execute(
        "SELECT name, hidden FROM pragma_table_xinfo(?) ORDER BY cid", (table,)
    ).fetchall()
    if not rows:
        return None
    return Columns([r[0] for r in rows], {r[0].lower() for r in rows if r[1] in (2, 3)})


def rows(
    conn: apsw.Connection, table: str, cols: list[str], where: str = "", args: tuple = ()
) -> Counter:
    """The multiset of rows (each a tuple of cells), `cols` may include a rowid alias."""
    if not cols:
        n = conn.execute(f"SELECT count(*) FROM {ident(table)}{where}", args).fetchone()[0]
        return Counter({(): n})
    exprs = []
    for c in cols:
        e = c if c in ROWID_NAMES else ident(c)
        exprs.append(
            f"typeof({e}), CASE WHEN typeof({e}) IN ('text', 'blob') THEN CAST({e} AS BLOB) "
            f"ELSE {e} END"
        )
    out: Counter = Counter()
    for r in conn.execute(f"SELECT {', '.join(exprs)} FROM {ident(table)}{where}", args):
        out[tuple(_cell(r[i], r[i + 1]) for i in range(0, len(r), 2))] += 1
    return out


def _identity(src: Columns, key: list[str], without_rowid: bool) -> list[str]:
    """A keyless rowid table is identified by its rowid: the target must keep it."""
    if key or without_rowid:
        return []
    names = {n.lower() for n in src.names}
    alias = next((r for r in ROWID_NAMES if r not in names), None)
    return [alias] if alias else []


def _key_and_wr(conn: apsw.Connection, table: str) -> tuple[list[str], bool]:
    cols = conn.execute("SELECT name, pk FROM pragma_table_info(?)", (table,)).fetchall()
    key = [c[0] for c in sorted((c for c in cols if c[1]), key=lambda c: c[1])]
    wr = conn.execute(
        "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?", (table,)
    ).fetchone()
    return key, bool(wr and wr[0])


def compare(
    src: apsw.Connection,
    table: str,
    tgt: apsw.Connection,
    target_table: str,
    tag: tuple[str, str] | None,
) -> list[str]:
    """Every way the target table differs from the legacy table; [] when equal.

    Copied tables must have exactly the legacy columns (generated ones included: the target
    computes them); a merged table (`tag` = (tag column, tag)) holds the legacy columns
    among others, and those others must be NULL in this source's rows."""
    scols = columns(src, table)
    if scols is None:
        return []  # dropped in the legacy file: its target keeps the last rows
    tcols = columns(tgt, target_table)
    if tcols is None:
        return [f"target table {target_table!r} does not exist"]
    key, wr = _key_and_wr(src, table)
    names = [n for n in scols.names if not (tag and n.lower() in scols.generated)]
    have = {n.lower(): n for n in tcols.names}
    problems = []
    lacking = [n for n in names if n.lower() not in have]
    extra = [n for n in tcols.names if n.lower() not in {x.lower() for x in names}]
    if tag:
        extra = [n for n in extra if n.lower() != tag[0].lower()]
    if lacking:
        problems.append(f"target lacks columns {lacking}")
    where, args = (f" WHERE {ident(tag[0])} IS ?", (tag[1],)) if tag else ("", ())
    if extra and not tag:
        problems.append(f"target has columns the legacy table has not: {extra}")
    elif extra:
        cond = " OR ".join(f"{ident(n)} IS NOT NULL" for n in extra)
        n = tgt.execute(
            f"SELECT count(*) FROM {ident(target_table)}{where} AND ({cond})", args
        ).fetchone()[0]
        if n:
            problems.append(f"{n} rows hold values in columns the legacy table has not: {extra}")
    common = _identity(scols, key, wr) + [n for n in names if n.lower() in have]
    s = rows(src, table, common)
    t = rows(tgt, target_table, [have.get(c.lower(), c) for c in common], where, args)
    if s != t:
        problems.append(_row_diff(common, s, t))
    return problems


def _row_diff(cols: list[str], s: Counter, t: Counter) -> str:
    only_s, only_t = s - t, t - s
    lines = [
        f"rows differ ({sum(s.values())} legacy, {sum(t.values())} target) over "
        f"({', '.join(cols)}): {sum(only_s.values())} only in legacy, "
        f"{sum(only_t.values())} only in target"
    ]
    for label, side in (("legacy only", only_s), ("target only", only_t)):
        for r in sorted(side, key=repr)[:4]:
            lines.append(f"    {label}: ({', '.join(show(c) for c in r)}) x{side[r]}")
    return "\n".join(lines)
