"""Where the same name means different things in different files.

Tables and indexes of one name in several legacy files become one table or one index
namespace in a target. Whether they agree (columns, types, order, key) decides whether a
merge is safe; that comparison works on the survey's reports alone, after every file is
read, and is kept apart from the reading that must never write.
"""

from __future__ import annotations

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
