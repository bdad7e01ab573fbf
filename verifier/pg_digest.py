"""A whole-table proof across engines for quiet tables: a PostgreSQL target under a
cutover's or a rollback's fence, both sides drained.

The position-aware verifier (`verifier.pg_table`) brings every row of both sides into
Python; under a fence nothing moves, and the pause is the bots'. Here each side digests
its own rows where they are. Each row becomes one canonical text, the same on both sides
for the same SQLite values under the mapping (`cdc.postgres.types.from_pg`): per column a
class letter and the value (NULL `n`; INTEGER `i` and its decimal digits; REAL `r` and its
eight IEEE bytes, big-endian, -0.0 as 0.0; TEXT `t` and its UTF-8 bytes; BLOB `b` and its
bytes; bytes in hex). PostgreSQL builds the text and its SHA-256 in SQL (`int8` text,
`float8send`, `convert_to`): no row crosses the wire. The legacy side builds the same text
in Python. A side's digest is its row count and the sum of its rows' hashes (the first 60
bits of each): order-free, so neither side's collation matters, in bounded memory.

Equal counts and sums mean the same rows, value for value: a difference passes only by a
collision of the sums (2^-60 for data no one crafted). Unequal, or a column of a type the
digest does not know, or a read that fails, is "not proven" (`None`): the caller verifies
that table in full, which names the keys. Never "equal" by default.
"""

from __future__ import annotations

import hashlib
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import apsw

from cdc import exact_text
from cdc.inventory import generated_columns, is_strict, table_info
from cdc.planning.plan import TableMapping
from cdc.sqlident import q
from verifier.model import TableResult


def _pg_value(column: str, ty: str) -> str | None:
    c = q(column)
    if ty == "bigint":
        v = f"'i' || {c}::text"
    elif ty == "double precision":
        v = f"'r' || encode(float8send(CASE WHEN {c} = 0 THEN 0::float8 ELSE {c} END), 'hex')"
    elif ty == "text":
        v = f"'t' || encode(convert_to({c}, 'UTF8'), 'hex')"
    elif ty == "bytea":
        v = f"'b' || encode({c}, 'hex')"
    elif ty == "numeric":  # whole: an INTEGER; else the double it is the exact value of
        v = (
            f"CASE WHEN {c} IN ('NaN', 'Infinity', '-Infinity') OR {c} <> trunc({c}) "
            f"THEN 'r' || encode(float8send({c}::float8), 'hex') ELSE 'i' || trunc({c})::text END"
        )
    else:
        return None
    return f"coalesce({v}, 'n')"


def _py_value(v: object) -> str:
    if v is None:
        return "n"
    if isinstance(v, int):
        return f"i{v}"
    if isinstance(v, float):
        return "r" + struct.pack(">d", 0.0 if v == 0 else v).hex()
    if isinstance(v, str):
        return "t" + v.encode().hex()
    if isinstance(v, exact_text.RawText):  # not UTF-8: PostgreSQL holds no such text
        return "x" + v.data.hex()
    return "b" + bytes(v).hex()


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


class Side:
    """One side's digest of a table: rows and the sum of their hashes."""

    def __init__(self, rows: int, total: int) -> None:
        self.rows, self.total = rows, total


F64 = "cdc_f64hex"  # a REAL's IEEE bytes, for the legacy side's SQL (SQLite has no such)
WIDEST_IN_SQL = 150  # columns one SQL expression may join (SQLite caps an expression's depth)


def _f64hex(v: float) -> str:
    return struct.pack(">d", 0.0 if v == 0 else v).hex()


def _sqlite_value(col: str) -> str:
    """`_py_value` in SQLite's SQL (its `hex` is of the text's bytes in the file's encoding:
    a UTF-16 file's differ, and the table is verified in full)."""
    return (
        f"CASE typeof({col}) WHEN 'integer' THEN 'i' || {col} "
        f"WHEN 'real' THEN 'r' || {F64}({col}) WHEN 'text' THEN 't' || lower(hex({col})) "
        f"WHEN 'blob' THEN 'b' || lower(hex({col})) ELSE 'n' END"
    )


def legacy_shape(src: apsw.Connection, m: TableMapping) -> tuple[list[str], list[str], list[str]]:
    """The (own key + columns) names, their PostgreSQL types (what the target's side
    digests) and the legacy expressions that read them."""
    info = table_info(src, m.table)
    strict = is_strict(info.create_sql)
    # a keyless table's rowid: the first of rowid, _rowid_, oid its columns leave free, in
    # both (the DDL names the PostgreSQL key column the same way)
    names = (list(info.key) or [info.rowid_alias()]) + [c.name for c in info.columns]
    by = {c.name: m.pg_type(c.name, c.decl_type, strict) for c in info.columns}
    types = [by.get(n, "bigint") for n in names]  # the rowid: bigint
    cols = [q(k) for k in info.key] or [info.rowid_alias()]
    return names, types, cols + [q(c.name) for c in info.columns]


def legacy_side(src: apsw.Connection, m: TableMapping, cols: list[str]) -> Side:
    """The legacy table's digest: each row's text built by SQLite (Python makes only the
    REALs' bytes and the hashes; 84 ms instead of 116 for 30k rows of 6 values, measured
    side by side), or in Python for a table too wide for one expression."""
    total = rows = 0
    if len(cols) > WIDEST_IN_SQL:
        for r in exact_text.select(src, cols, f"FROM {q(m.table)}"):
            total += _h("|".join(_py_value(v) for v in r))
            rows += 1
        return Side(rows, total)
    src.create_scalar_function(F64, _f64hex, 1, deterministic=True)
    text = " || '|' || ".join(_sqlite_value(c) for c in cols)
    for (t,) in src.execute(f"SELECT {text} FROM {q(m.table)}"):
        total += int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big") >> 4
        rows += 1
    return Side(rows, total)


def target_side(tgt, m: TableMapping, names: list[str], types: list[str]) -> Side | None:  # noqa: ANN001
    """The PostgreSQL table's digest, computed by the server; None when a column's type is
    not one the digest knows."""
    exprs = [_pg_value(n, t) for n, t in zip(names, types, strict=True)]
    if any(e is None for e in exprs) or not _same_shape(tgt, m, names, types):
        return None
    text = f"concat_ws('|', {', '.join(e for e in exprs if e)})"
    h = f"('x' || substr(encode(sha256(convert_to({text}, 'UTF8')), 'hex'), 1, 15))::bit(60)::bigint"
    where, args = "", ()
    if m.tag_column is not None:
        where, args = f" WHERE {q(m.tag_column)} = %s", (m.tag,)
    rows, total = tgt.execute(
        f"SELECT count(*), coalesce(sum({h}), 0) FROM {q(m.target_table)}{where}", args
    ).fetchone()
    return Side(rows, int(total))


def _same_shape(tgt, m: TableMapping, names: list[str], types: list[str]) -> bool:  # noqa: ANN001
    """Every column where the plan puts it, of its type, and in a copied table no other
    (a column only the target has would hold values no digest of the legacy rows sees)."""
    have = dict(
        tgt.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (q(m.target_table),),
        ).fetchall()
    )
    want = dict(zip(names, types, strict=True))
    if any(have.get(n) != t for n, t in want.items()):
        return False
    return m.tag_column is not None or set(have) == set(want)


def quiet_proof(src: apsw.Connection, tgt, m: TableMapping) -> TableResult | None:  # noqa: ANN001
    """`equal` when both quiet sides hold the same rows; None when not proven here. The
    server digests its side while the legacy side is read."""
    import psycopg

    r = TableResult(m.source, m.table, m.target, m.target_table, started_at=time.time())
    try:
        if generated_columns(src, m.table):  # not carried: the full verifier names them
            return None
        names, types, cols = legacy_shape(src, m)
        with ThreadPoolExecutor(max_workers=1) as pool:
            theirs = pool.submit(target_side, tgt, m, names, types)
            legacy = legacy_side(src, m, cols)
            target = theirs.result()
    except (apsw.Error, psycopg.Error):
        return None
    finally:
        if not tgt.autocommit:
            tgt.rollback()
    if target is None or (legacy.rows, legacy.total) != (target.rows, target.total):
        return None
    r.state, r.chunks = "equal", 1
    r.source_rows = r.target_rows = r.compared_rows = legacy.rows
    r.source_digest = r.target_digest = f"{legacy.total:015x}"
    r.finished_at = time.time()
    return r
