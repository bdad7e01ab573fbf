"""Whether the values the legacy columns hold fit the PostgreSQL types they would get.

SQLite keeps any value in any column; `cdc.postgres.types` says which values a column's
PostgreSQL type carries exactly. Before anything is copied, every column of a table bound
for a PostgreSQL target is counted by what its rows actually hold, and each kind of value
that would not come back as it was (a TEXT in an INTEGER column, TEXT holding NUL or
bytes that are not UTF-8, a whole-number REAL in a NUMERIC column) is reported by column,
with its count and a few examples by key: the plan is refused on them (`cdc check`), never
at the first failed insert, and never by a silent conversion.

One pass per table counts every condition at once in SQL; only the UTF-8 check reads the
TEXT values themselves (SQLite has no test for it), streamed.

The foreign keys the DDL carries (`pg_foreign_keys.foreign_keys`) are counted too, apart: SQLite
enforces none unless a connection asks for it, so a legacy row may reference no parent.
Those are a warning, not a refusal (`pg_orphans`): the key is added NOT VALID after
cutover, and only its VALIDATE fails on them, naming the key, until they are fixed.
"""

from __future__ import annotations

import apsw
import msgspec

from cdc import exact_text
from cdc.config import Config
from cdc.inventory import TableInfo, is_strict, key_collations
from cdc.planning import pg_foreign_keys
from cdc.planning.plan import Plan, TableMapping
from cdc.postgres.dsn import is_postgres
from cdc.sqlident import q

EXAMPLES = 3

# (PostgreSQL type) -> [(reason, SQL condition on `{c}` that finds such a value)]
_CONDITIONS: dict[str, list[tuple[str, str]]] = {
    "bigint": [(f"{k.upper()} in a bigint column", f"typeof({{c}}) = '{k}'")
               for k in ("real", "text", "blob")],
    "double precision": [(f"{k.upper()} in a double precision column", f"typeof({{c}}) = '{k}'")
                         for k in ("text", "blob")],
    "text": [(f"{k.upper()} in a text column", f"typeof({{c}}) = '{k}'")
             for k in ("integer", "real", "blob")]
    + [("TEXT holding NUL", "typeof({c}) = 'text' AND instr(CAST({c} AS BLOB), x'00') > 0")],
    "bytea": [(f"{k.upper()} in a bytea column", f"typeof({{c}}) = '{k}'")
              for k in ("integer", "real", "text")],
    "numeric": [(f"{k.upper()} in a numeric column", f"typeof({{c}}) = '{k}'")
                for k in ("text", "blob")]
    + [("a whole-number REAL in a numeric column (it would come back INTEGER)",
        "typeof({c}) = 'real' AND {c} = round({c}) AND abs({c}) < 9e999")],
}  # fmt: skip
NOT_UTF8 = "TEXT that is not valid UTF-8"
ORPHAN = (
    "a reference no parent row holds (the key is added NOT VALID; VALIDATE fails until "
    "they are fixed)"
)


class ColumnMisfit(msgspec.Struct, frozen=True):
    """One kind of value in one legacy column that its PostgreSQL type cannot carry."""

    target: str
    source: str
    table: str
    column: str
    declared: str
    pg_type: str
    reason: str
    count: int
    examples: list[str]  # "key -> value", as SQLite would print them

    def line(self) -> str:
        eg = f", e.g. {'; '.join(self.examples)}" if self.examples else ""
        return (
            f"{self.target}: {self.source}.{self.table}.{self.column} "
            f"({self.declared or 'no type'} -> {self.pg_type}): {self.count} x {self.reason}{eg}"
        )


def pg_misfits(cfg: Config, plan: Plan) -> list[ColumnMisfit]:
    """Every misfit of every table the plan sends to a PostgreSQL target."""
    out: list[ColumnMisfit] = []
    for sp in plan.sources:
        bound = [m for m in sp.tables if is_postgres(plan.targets.get(m.target, ""))]
        if not bound:
            continue
        conn = apsw.Connection(sp.path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            conn.execute("BEGIN")  # one snapshot for the counts and the examples
            for m in bound:
                info = sp.info(m.table)
                if info is not None and info.kind == "table":
                    out.extend(_table_misfits(conn, m, info))
        finally:
            conn.close()
    return out


def pg_orphans(cfg: Config, plan: Plan) -> list[ColumnMisfit]:
    """Per foreign key a PostgreSQL target will hold, the legacy rows it finds no parent
    for (a warning: the key is added NOT VALID). A reference holding a NULL is no orphan
    (MATCH SIMPLE, in both engines); values match byte for byte, as PostgreSQL's will."""
    out: list[ColumnMisfit] = []
    for target, where in sorted(plan.targets.items()):
        if not is_postgres(where):
            continue
        carried, _ = pg_foreign_keys.foreign_keys(plan, target)
        for sp in plan.sources:
            mine = [fk for fk in carried if fk.source == sp.name]
            if not mine:
                continue
            conn = apsw.Connection(sp.path, flags=apsw.SQLITE_OPEN_READONLY)
            try:
                conn.execute("BEGIN")  # one snapshot for the counts and the examples
                for fk in mine:
                    info = sp.info(fk.table)
                    if info is not None:
                        out.extend(_orphans(conn, target, info, fk))
            finally:
                conn.close()
    return out


def _orphans(
    conn: apsw.Connection, target: str, info: TableInfo, fk: pg_foreign_keys.PgForeignKey
) -> list[ColumnMisfit]:
    same = " AND ".join(
        f"p.{q(r)} = c.{q(k)} COLLATE BINARY"
        for k, r in zip(fk.columns, fk.ref_columns, strict=True)
    )
    cond = " AND ".join(f"c.{q(k)} IS NOT NULL" for k in fk.columns)
    tail = (
        f"FROM {q(fk.table)} AS c WHERE {cond} "
        f"AND NOT EXISTS (SELECT 1 FROM {q(fk.ref_table)} AS p WHERE {same})"
    )
    (n,) = conn.execute(f"SELECT count(*) {tail}").fetchone()
    if not n:
        return []
    names = info.key or [info.rowid_alias()]
    key = [f"c.{q(k)}" for k in names]
    rows = exact_text.select(
        conn, [*key, *(f"c.{q(k)}" for k in fk.columns)], f"{tail} LIMIT {EXAMPLES}"
    )
    eg = []
    for r in rows:
        at, ref = r[: len(key)], r[len(key) :]
        shown = _show(ref[0]) if len(ref) == 1 else f"({', '.join(_show(v) for v in ref)})"
        where = ", ".join(f"{k}={_show(v)}" for k, v in zip(names, at, strict=True))
        eg.append(f"{where} -> {shown}")
    declared = f"REFERENCES {fk.ref_table}({', '.join(fk.ref_columns)})"
    return [
        ColumnMisfit(
            target, fk.source, fk.table, ",".join(fk.columns), declared,
            f"foreign key {fk.name}", ORPHAN, n, eg,
        )
    ]  # fmt: skip


def _table_misfits(conn: apsw.Connection, m: TableMapping, info: TableInfo) -> list[ColumnMisfit]:
    strict = is_strict(info.create_sql)
    checks = [
        (c, m.pg_type(c.name, c.decl_type, strict), reason, cond.format(c=q(c.name)))
        for c in info.columns
        for reason, cond in _CONDITIONS[m.pg_type(c.name, c.decl_type, strict)]
    ]
    if info.null_key:  # SQLite lets such a key hold NULL; a PostgreSQL key cannot
        cond = " OR ".join(f"{q(k)} IS NULL" for k in info.key)
        checks += [(_KeyCol(info.key), "key", "NULL in the key (no PostgreSQL key holds one)",
                    f"({cond})")]  # fmt: skip
    found: list[ColumnMisfit] = []
    colls = key_collations(conn, info.name, info.key) or []
    odd = sorted({c for c in colls if c != "BINARY"})
    if odd:  # no row needed: the next REPLACE by another spelling would show it
        found.append(
            _misfit(m, _KeyCol(info.key), "key", f"a key that compares under {'/'.join(odd)} "
                    "(PostgreSQL keys compare bytes: a REPLACE by another spelling would leave "
                    "both)", 0, [])
        )  # fmt: skip
    if checks:
        sums = ", ".join(f"coalesce(sum({cond}), 0)" for *_, cond in checks)
        counts = conn.execute(f"SELECT {sums} FROM {q(info.name)}").fetchone()
        for (c, pg, reason, cond), n in zip(checks, counts, strict=True):
            if n:
                eg = (
                    _examples(conn, info, c.name, cond)
                    if not isinstance(c, _KeyCol)
                    else [f"rowid={r} -> NULL" for (r,) in conn.execute(
                        f"SELECT rowid FROM {q(info.name)} WHERE {cond} LIMIT {EXAMPLES}")]
                )  # fmt: skip
                found.append(_misfit(m, c, pg, reason, n, eg))
    for c in info.columns:
        pg = m.pg_type(c.name, c.decl_type, strict)
        if pg == "text":
            n, eg = _not_utf8(conn, info, c.name)
            if n:
                found.append(_misfit(m, c, pg, NOT_UTF8, n, eg))
    return found


class _KeyCol:
    """The key as one "column" of a misfit line."""

    def __init__(self, key: list[str]) -> None:
        self.name, self.decl_type = ",".join(key), "PRIMARY KEY"


def _misfit(m: TableMapping, c, pg: str, reason: str, n: int, eg: list[str]) -> ColumnMisfit:  # noqa: ANN001
    return ColumnMisfit(m.target, m.source, m.table, c.name, c.decl_type, pg, reason, n, eg)


def _key(info: TableInfo) -> list[str]:
    return [q(k) for k in info.key] if info.key else ["rowid"]


def _examples(conn: apsw.Connection, info: TableInfo, column: str, cond: str) -> list[str]:
    key = _key(info)
    rows = exact_text.select(
        conn, [*key, q(column)], f"FROM {q(info.name)} WHERE {cond} LIMIT {EXAMPLES}"
    )
    return [_example(info, r[:-1], r[-1]) for r in rows]


def _not_utf8(conn: apsw.Connection, info: TableInfo, column: str) -> tuple[int, list[str]]:
    """TEXT values that are not UTF-8, read as their bytes (a cursor: one at a time)."""
    n, eg = 0, []
    key = ", ".join(_key(info))
    sql = (
        f"SELECT CAST({q(column)} AS BLOB), {key} FROM {q(info.name)} "
        f"WHERE typeof({q(column)}) = 'text'"
    )
    try:
        rows = conn.execute(sql)
        for data, *k in rows:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                n += 1
                if len(eg) < EXAMPLES:
                    eg.append(_example(info, k, exact_text.RawText(data)))
    except UnicodeDecodeError:  # a key that is itself not UTF-8: count without examples
        n = _count_not_utf8(conn, info, column)
    return n, eg


def _count_not_utf8(conn: apsw.Connection, info: TableInfo, column: str) -> int:
    sql = f"SELECT CAST({q(column)} AS BLOB) FROM {q(info.name)} WHERE typeof({q(column)}) = 'text'"
    n = 0
    for (data,) in conn.execute(sql):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            n += 1
    return n


def _example(info: TableInfo, key, value: object) -> str:  # noqa: ANN001
    names = info.key or ["rowid"]
    where = ", ".join(f"{n}={_show(v)}" for n, v in zip(names, key, strict=True))
    return f"{where} -> {_show(value)}"


def _show(v: object) -> str:
    if isinstance(v, exact_text.RawText):
        return f"CAST(x'{bytes(v.data).hex()}' AS TEXT)"
    if isinstance(v, bytes):
        shown = v[:16].hex()
        return f"x'{shown}'" + ("..." if len(v) > 16 else "")
    if isinstance(v, str):
        s = v if len(v) <= 40 else v[:40] + "..."
        return "'" + s.replace("'", "''").replace("\x00", "\\0") + "'"
    return repr(v)
