"""What a legacy database holds: its tables, their columns and identity, read from SQLite.

The identity of a row is its declared primary key; a table with none is identified by its
rowid (which VACUUM may renumber: see docs/architecture.md). Generated columns are left
out of row images because no one may write them; the target computes them again.
"""

from __future__ import annotations

import apsw
import msgspec

from cdc.events import ColumnDef, TableSchema

OWN_PREFIX = "_cdc_"
ROWID_NAMES = ("rowid", "_rowid_", "oid")


class TableInfo(msgspec.Struct, frozen=True):
    name: str
    kind: str  # "table", "virtual" or "shadow"
    columns: list[ColumnDef] = []
    key: list[str] = []  # empty: identified by rowid
    without_rowid: bool = False
    create_sql: str = ""
    index_sql: list[str] = []
    unique_sets: list[
        list[str]
    ] = []  # non-key UNIQUE column sets (REPLACE can delete through them)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def rowid_alias(self) -> str:
        """A name that reaches the rowid even if the table has a column called `rowid`."""
        names = {c.name.lower() for c in self.columns}
        for n in ROWID_NAMES:
            if n not in names:
                return n
        raise ValueError(f"table {self.name!r} shadows every rowid alias")

    def to_schema(self, source: str) -> TableSchema:
        return TableSchema(
            source=source,
            table=self.name,
            columns=list(self.columns),
            key=list(self.key),
            without_rowid=self.without_rowid,
            create_sql=self.create_sql,
            index_sql=list(self.index_sql),
        )


def is_internal(name: str) -> bool:
    """SQLite's own tables and ours are never user data."""
    low = name.lower()
    return low.startswith("sqlite_") or low.startswith(OWN_PREFIX)


def list_tables(conn: apsw.Connection) -> list[TableInfo]:
    """Every user table of the main schema, in name order (views are not data)."""
    rows = conn.execute(
        "SELECT name, type, wr FROM pragma_table_list WHERE schema='main' "
        "AND type IN ('table','virtual','shadow') ORDER BY name"
    ).fetchall()
    out = []
    for name, kind, wr in rows:
        if is_internal(name):
            continue
        if kind != "table":
            out.append(TableInfo(name=name, kind=kind))
            continue
        out.append(table_info(conn, name, bool(wr)))
    return out


def table_info(conn: apsw.Connection, name: str, without_rowid: bool | None = None) -> TableInfo:
    cols = conn.execute(
        "SELECT name, type, pk, hidden, dflt_value FROM pragma_table_xinfo(?) ORDER BY cid",
        (name,),
    ).fetchall()
    if without_rowid is None:
        row = conn.execute(
            "SELECT wr FROM pragma_table_list WHERE schema='main' AND name=?", (name,)
        ).fetchone()
        without_rowid = bool(row and row[0])
    columns = [ColumnDef(c[0], c[1] or "", c[4]) for c in cols if c[3] == 0]
    pk = [c[0] for c in sorted((c for c in cols if c[2] > 0), key=lambda c: c[2])]
    sql_row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (name,)
    ).fetchone()
    index_sql = [
        r[0]
        for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name=? "
            "AND sql IS NOT NULL ORDER BY name",
            (name,),
        )
    ]
    return TableInfo(
        name=name,
        kind="table",
        columns=columns,
        key=pk,
        without_rowid=without_rowid,
        create_sql=sql_row[0] if sql_row else "",
        index_sql=index_sql,
        unique_sets=unique_sets(conn, name),
    )


def unique_sets(conn: apsw.Connection, name: str) -> list[list[str]]:
    """Column sets of the table's UNIQUE constraints and unique indexes, key excluded.

    Indexes on expressions are left out (no column list to probe); see docs/architecture.md.
    """
    out = []
    for idx, origin in conn.execute(
        'SELECT name, origin FROM pragma_index_list(?) WHERE "unique" ORDER BY name', (name,)
    ).fetchall():
        if origin == "pk":
            continue
        cols = [
            r[0]
            for r in conn.execute("SELECT name FROM pragma_index_info(?) ORDER BY seqno", (idx,))
        ]
        if cols and all(c is not None for c in cols) and cols not in out:
            out.append(cols)
    return out


def schema_version(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA schema_version").fetchone()[0]
