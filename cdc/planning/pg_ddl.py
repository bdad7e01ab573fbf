"""A PostgreSQL target's DDL, from the legacy tables as the plan read them (`cdc schema`).

The same decisions as the SQLite targets' (`cdc.planning.ddl`), in PostgreSQL's terms:

- Each column gets the type its affinity maps to (`cdc.postgres.types`), or the one its
  rule names (`postgres_types`), and its DEFAULT when that is a constant or SQLite's CURRENT_TIMESTAMP/DATE/TIME (as the
  same text SQLite would store, in UTC); any other DEFAULT expression is left out and
  named in a comment above the table, for review.
- The key is the declared key; a table without one gets SQLite's own identity, its rowid,
  as a `bigint` key column (named like the apply names it: the first of rowid, _rowid_,
  oid its columns leave free). An INTEGER PRIMARY KEY AUTOINCREMENT becomes an identity
  column. A rowid table's declared key that SQLite lets hold NULL is NOT NULL here (a
  key holds no NULL in PostgreSQL): `cdc check` counts the rows that hold one
  (`cdc.planning.pg_fit`), as the apply into a merged table refuses one by name.
- A UNIQUE constraint and a plain index on columns are carried (names as in the SQLite
  target); an index or UNIQUE with a collation other than BINARY, on an expression, or
  partial, does not translate as it is, and is refused by name (text equality in
  PostgreSQL is byte equality, as BINARY; NOCASE folds only ASCII, `lower()` folds more).
- A merged table: the tag column (`text NOT NULL`) leads its key and its indexes.
- An index term's ASC/DESC is not carried (a b-tree is read both ways; an index whose
  columns mix orders loses that: docs/postgres.md).

Foreign keys are not carried yet (docs/postgres.md, Status).
"""

from __future__ import annotations

import re

import msgspec

from cdc.inventory import TableInfo, is_strict
from cdc.planning import ddl
from cdc.planning.plan import Plan, TableMapping
from cdc.sqlident import created_name, index_terms, lit, q, tokens, unquote

ROWID_NAMES = ("rowid", "_rowid_", "oid")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_STRING = re.compile(r"'(?:[^']|'')*'")
_NOW = {
    "CURRENT_TIMESTAMP": "YYYY-MM-DD HH24:MI:SS",
    "CURRENT_DATE": "YYYY-MM-DD",
    "CURRENT_TIME": "HH24:MI:SS",
}


class PgTableDDL(msgspec.Struct, frozen=True):
    """What one target table becomes: its statements, what was left out, what refused."""

    what: str
    statements: list[str]
    notes: list[str] = []  # left out, for review (a DEFAULT expression)
    refused: list[str] = []  # cannot be made as the legacy table behaves


def target_ddl(plan: Plan, target: str) -> list[PgTableDDL]:
    out: list[PgTableDDL] = []
    merged: set[str] = set()
    for sp in plan.sources:
        for m in sp.tables:
            info = sp.info(m.table)
            if m.target != target or info is None or info.kind != "table":
                continue
            if m.tag_column is not None:
                if m.target_table.lower() not in merged:
                    merged.add(m.target_table.lower())
                    out.append(_merged(plan, m))
                continue
            out.append(_copied(plan, m, info))
        for fm in sp.fts:  # never left out silently: said, and refused by `cdc check`
            if fm.target == target:
                out.append(
                    PgTableDDL(
                        f"{sp.name}.{fm.table} (FTS)",
                        [],
                        refused=[
                            f"{sp.name}.{fm.table}: an FTS table has no PostgreSQL "
                            "counterpart here (exclude it; full-text search there is tsvector)"
                        ],
                    )
                )
    return out


def table_ddl(plan: Plan, m: TableMapping) -> PgTableDDL:
    """The DDL of the one target table `m` lands in (a merged table's, for every member)."""
    if m.tag_column is not None:
        return _merged(plan, m)
    info = plan.source(m.source).info(m.table)
    if info is None:
        return PgTableDDL(
            f"{m.source}.{m.table}", [], refused=[f"{m.source}.{m.table}: not in the plan"]
        )
    return _copied(plan, m, info)


def rowid_alias(columns: list[str]) -> str:
    """The name a keyless table's rowid gets as a column: one its columns leave free."""
    low = {c.lower() for c in columns}
    return next(n for n in ROWID_NAMES if n not in low)


def refusals(plan: Plan, target: str) -> list[str]:
    return [r for t in target_ddl(plan, target) for r in t.refused]


def _copied(plan: Plan, m: TableMapping, info: TableInfo) -> PgTableDDL:
    what = f"{m.source}.{m.table}"
    notes: list[str] = []
    refused: list[str] = []
    strict = is_strict(info.create_sql)
    defs = [_column(c, m.pg_type(c.name, c.decl_type, strict), notes, what) for c in info.columns]
    key = [q(k) for k in info.key]
    if not info.key:
        alias = rowid_alias([c.name for c in info.columns])
        defs.insert(0, f"{q(alias)} bigint NOT NULL")
        key = [q(alias)]
    elif info.autoincrement and len(info.key) == 1:
        i = [c.name for c in info.columns].index(info.key[0])
        defs[i] = f"{q(info.key[0])} bigint GENERATED BY DEFAULT AS IDENTITY"
    defs.append(f"PRIMARY KEY ({', '.join(key)})")
    stmts = [
        f"CREATE TABLE IF NOT EXISTS {q(m.target_table)} (\n    " + ",\n    ".join(defs) + "\n)"
    ]
    stmts += _indexes(plan, m, info, None, refused, what)
    return PgTableDDL(what, stmts, notes, refused)


def _merged(plan: Plan, m: TableMapping) -> PgTableDDL:
    members = [
        (mm, sp.info(mm.table))
        for sp in plan.sources
        for mm in sp.tables
        if mm.target == m.target and mm.target_table.lower() == m.target_table.lower()
    ]
    what = f"merged table {m.target_table}"
    notes: list[str] = []
    refused: list[str] = []
    seen: dict[str, str] = {}
    for mm, info in members:
        if info is None:
            continue
        strict = is_strict(info.create_sql)
        for c in info.columns:
            if c.name.lower() not in seen:
                pg = mm.pg_type(c.name, c.decl_type, strict)
                seen[c.name.lower()] = _column(c, pg, notes, what)
    key = next((i.key for _, i in members if i is not None and i.key), [])
    defs = [f"{q(m.tag_column)} text NOT NULL", *seen.values()]
    defs.append(f"PRIMARY KEY ({', '.join(q(k) for k in [m.tag_column, *key])})")
    stmts = [
        f"CREATE TABLE IF NOT EXISTS {q(m.target_table)} (\n    " + ",\n    ".join(defs) + "\n)"
    ]
    tags = [mm.tag for mm, i in members if i is not None]
    uniques: dict[str, list[str]] = {}
    for mm, info in members:
        if info is None:
            continue
        for sql in _indexes(plan, mm, info, m.tag_column, refused, f"{mm.source}.{mm.table}"):
            if sql.startswith("CREATE UNIQUE"):
                uniques.setdefault(sql, []).append(mm.tag)
            else:
                stmts.append(sql)
    for sql, having in uniques.items():
        # Only its members' rows: the others' may repeat those values (as in ddl.py).
        where = (
            ""
            if set(having) == set(tags)
            else (f" WHERE {q(m.tag_column)} IN ({', '.join(lit(t) for t in having)})")
        )
        stmts.append(sql + where)
    return PgTableDDL(what, list(dict.fromkeys(stmts)), notes, refused)


def _column(c, pg: str, notes: list[str], what: str) -> str:  # noqa: ANN001
    words = [q(c.name), pg]
    if c.default is not None:
        d = _default(c.default, pg)
        if d is None:
            notes.append(f"{what}.{c.name}: DEFAULT {c.default} is not translated (review)")
        else:
            words.append(f"DEFAULT {d}")
    return " ".join(words)


def _default(text: str, pg: str) -> str | None:
    t = text.strip()
    while t.startswith("(") and t.endswith(")"):
        t = t[1:-1].strip()
    up = t.upper()
    if up == "NULL":
        return "NULL"
    if up in ("TRUE", "FALSE"):
        return "1" if up == "TRUE" else "0"
    if _NUMBER.fullmatch(t):
        return t if pg in ("bigint", "double precision", "numeric") else f"'{t}'"
    if _STRING.fullmatch(t):
        return t if pg in ("text",) else None  # '5' in an INTEGER column: converted there
    if up in _NOW and pg == "text":
        return f"to_char(timezone('UTC', now()), '{_NOW[up]}')"
    return None


def _indexes(
    plan: Plan, m: TableMapping, info: TableInfo, tag: str | None, refused: list[str], what: str
) -> list[str]:
    out = []
    lead = [q(tag)] if tag else []
    for isql in info.index_sql:
        name = created_name(isql)
        words = [w.upper() for w in tokens(isql)]
        cols = [_plain_column(t) for t in index_terms(isql)]
        if "WHERE" in words or None in cols:
            refused.append(f"{what}: index {name} (on an expression, a collation, or partial)")
            continue
        unique = "UNIQUE" in words[:3]
        new = ddl.names(plan, m.target).indexes.get((m.source, m.table, name)) or (
            f"{m.target_table}__{name}"
        )
        head = "CREATE UNIQUE INDEX" if unique else "CREATE INDEX"
        out.append(
            f"{head} IF NOT EXISTS {q(new)} ON {q(m.target_table)} ({', '.join(lead + cols)})"
        )
    for cols, colls in zip(info.unique_sets, info.unique_collations or [], strict=False):
        if any(c.upper() != "BINARY" for c in colls):
            refused.append(f"{what}: UNIQUE ({', '.join(cols)}) compares under {'/'.join(colls)}")
            continue
        if _covered(cols, info):
            continue
        name = f"{m.target_table}__unique_{'_'.join(cols)}"
        out.append(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {q(name)} ON {q(m.target_table)} "
            f"({', '.join(lead + [q(c) for c in cols])})"
        )
    return out


def _plain_column(term: str) -> str | None:
    """A term that is a column (COLLATE BINARY allowed), quoted; else None."""
    words = tokens(term)
    if words and words[-1].upper() in ("ASC", "DESC"):
        words = words[:-1]
    if len(words) == 3 and words[1].upper() == "COLLATE" and unquote(words[2]).upper() == "BINARY":
        words = words[:1]
    if len(words) != 1 or words[0] in "()":
        return None
    return q(unquote(words[0]))


def _covered(cols: list[str], info: TableInfo) -> bool:
    """A unique set an explicit UNIQUE index already makes."""
    want = [c.lower() for c in cols]
    for isql in info.index_sql:
        if "UNIQUE" in (w.upper() for w in tokens(isql)[:3]):
            have = [unquote(tokens(t)[0]).lower() for t in index_terms(isql) if tokens(t)]
            if have == want:
                return True
    return False
