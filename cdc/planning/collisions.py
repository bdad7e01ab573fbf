"""Where the same name means different things in different files.

Tables and indexes of one name in several legacy files become one table or one index
namespace in a target. Whether they agree (columns, types, order, key) decides whether a
merge is safe; that comparison works on the survey's reports alone, after every file is
read, and is kept apart from the reading that must never write.
"""

from __future__ import annotations

import msgspec

from cdc.planning.inventory_format import (
    ColumnReport,
    DatabaseReport,
    IndexCollision,
    IndexPlace,
    TableCollision,
    TablePlace,
    TableReport,
    TypeDifference,
)
from cdc.planning.mapping import EXCLUDE, MappingRow


def table_collisions(databases: list[DatabaseReport]) -> list[TableCollision]:
    """Table names (compared as SQLite does, ignoring case) found in several files."""
    groups: dict[str, list[tuple[DatabaseReport, TableReport]]] = {}
    for db in databases:
        for t in db.mappable():
            groups.setdefault(t.name.lower(), []).append((db, t))
    return [_compare(members) for _, members in sorted(groups.items()) if len(members) > 1]


def _visible(t: TableReport) -> list[ColumnReport]:
    return [c for c in t.columns if not c.hidden]


def _norm_type(decl: str) -> str:
    return " ".join(decl.upper().split())


def _compare(members: list[tuple[DatabaseReport, TableReport]]) -> TableCollision:
    places = [
        TablePlace(
            database=db.relpath,
            name=t.name,
            kind=t.kind,
            rows=t.rows,
            columns=[c.name for c in _visible(t)],
            key=list(t.key),
        )
        for db, t in members
    ]
    types = {db.relpath: {c.name.lower(): c for c in _visible(t)} for db, t in members}
    every: dict[str, str] = {}  # lowercased -> first spelling
    for cols in types.values():
        for low, c in cols.items():
            every.setdefault(low, c.name)
    missing = {
        rel: [every[low] for low in every if low not in cols]
        for rel, cols in types.items()
        if any(low not in cols for low in every)
    }
    differences = []
    for low, name in every.items():
        declared = {rel: cols[low].type for rel, cols in types.items() if low in cols}
        if len({_norm_type(d) for d in declared.values()}) > 1:
            differences.append(TypeDifference(column=name, types=declared))
    order = {tuple(c.lower() for c in p.columns) for p in places}
    order_differs = not missing and len(order) > 1
    key_differs = len({tuple(k.lower() for k in p.key) for p in places}) > 1
    kinds_differ = len({p.kind for p in places}) > 1
    return TableCollision(
        table=places[0].name,
        places=places,
        agree=not (missing or differences or order_differs or key_differs or kinds_differ),
        missing_columns=missing,
        type_differences=differences,
        order_differs=order_differs,
        key_differs=key_differs,
    )


def index_collisions(databases: list[DatabaseReport]) -> list[IndexCollision]:
    """Index names used in several files (index names share one namespace per target).
    Indexes SQLite made for a constraint are left out: they are renamed with their table."""
    groups: dict[str, list[IndexPlace]] = {}
    spelled: dict[str, str] = {}
    for db in databases:
        for ix in db.indexes:
            if ix.sql is None:
                continue
            spelled.setdefault(ix.name.lower(), ix.name)
            groups.setdefault(ix.name.lower(), []).append(IndexPlace(db.relpath, ix.table))
    return [
        IndexCollision(index=spelled[low], places=places)
        for low, places in sorted(groups.items())
        if len({p.database for p in places}) > 1
    ]


def suggest_as(source: str, table: str, taken: set[str]) -> str:
    """`<source>_<table>`, numbered until no table of the inventory nor an earlier
    suggestion has that name (`taken`, lowercased, is updated): an `as` the operator can
    copy without creating a new clash."""
    base = name = f"{source}_{table}"
    n = 2
    while name.lower() in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name.lower())
    return name


def annotate_rows(databases: list[DatabaseReport], rows: list[MappingRow]) -> list[MappingRow]:
    """The sheet's informational columns, from this survey: the key a table's rows are
    identified by, where else its name is used, and an `as` that would keep it apart."""
    tables = {(db.relpath, t.name.lower()): t for db in databases for t in db.mappable()}
    where: dict[str, list[str]] = {}
    for db in databases:
        for t in db.mappable():
            where.setdefault(t.name.lower(), []).append(f"{db.relpath}:{t.name}")
    taken = {low for _, low in tables}
    out = []
    for r in rows:
        t = tables.get((r.database, r.table.lower()))
        if t is None:  # a database not read this time: its row is kept as it was
            out.append(r)
            continue
        me = f"{r.database}:{r.table}"
        others = [w for w in where[t.name.lower()] if w != me]
        out.append(
            msgspec.structs.replace(
                r,
                key=",".join(t.key) or "rowid",
                collides_with=";".join(others),
                suggested_as=suggest_as(r.source, r.table, taken) if others else "",
            )
        )
    return out


def clash_suggestions(rows: list[MappingRow], taken: set[str]) -> dict[str, str]:
    """For each target table that several non-merged rows land on ("core.users", lowered):
    the `as` names that would keep them apart, as a clause for the plan's refusal."""
    groups: dict[str, list[MappingRow]] = {}
    for r in rows:
        if r.target and r.target != EXCLUDE and r.kind == "table":
            groups.setdefault(f"{r.target}.{r.as_ or r.table}".lower(), []).append(r)
    out = {}
    for key, members in groups.items():
        if len(members) > 1 and not all(r.merge for r in members):
            names = ", ".join(
                f"{r.database}:{r.table} -> {suggest_as(r.source, r.table, taken)}" for r in members
            )
            out[key] = f"suggested `as` (set it on all but one): {names}"
    return out
