"""What a legacy database holds: its tables, their columns and identity, read from SQLite.

The identity of a row is its declared primary key; a table with none is identified by its
rowid (which VACUUM may renumber: see docs/architecture.md). Generated columns are left
out of row images because no one may write them; the target computes them again.
"""

from __future__ import annotations

import re

import apsw
import msgspec

from cdc.events import ColumnDef, TableSchema
from cdc.own_objects import is_own_table
from cdc.sqlident import fts_options, index_terms, names_object, tokens, unquote, virtual_module

ROWID_NAMES = ("rowid", "_rowid_", "oid")


class ForeignKey(msgspec.Struct, frozen=True):
    """One FOREIGN KEY of a table (`PRAGMA foreign_key_list`); `ref_columns` empty when
    the clause names no columns (the parent's primary key)."""

    columns: list[str]
    ref_table: str
    ref_columns: list[str] = []
    on_update: str = "NO ACTION"
    on_delete: str = "NO ACTION"


class TableInfo(msgspec.Struct, frozen=True):
    name: str
    kind: str  # "table", "virtual" or "shadow"
    columns: list[ColumnDef] = []
    key: list[str] = []  # empty: identified by rowid
    without_rowid: bool = False
    # a rowid table whose declared key is not the rowid alias and may hold NULL (SQLite
    # allows it): rows with a NULL in the key are identified by their rowid as well
    null_key: bool = False
    create_sql: str = ""
    index_sql: list[str] = []
    unique_sets: list[
        list[str]
    ] = []  # non-key UNIQUE column sets (REPLACE can delete through them)
    foreign_keys: list[ForeignKey] = []
    autoincrement: bool = False
    # per unique set, the collation its index compares each column with (an index may
    # declare its own: `ON t(email COLLATE NOCASE)`); the REPLACE probes compare the same way
    unique_collations: list[list[str]] = []
    # unique indexes on expressions: their terms as written (`sqlident.index_terms`)
    unique_exprs: list[list[str]] = []
    module: str = ""  # virtual tables: fts5, rtree, ...
    content_table: str | None = None  # FTS with external content: the table it indexes
    sync_triggers: list[str] = []  # FTS: the content table's triggers that keep it current

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

    def rowid_unreachable(self) -> bool:
        """A rowid table whose columns take all of `rowid`, `oid` and `_rowid_`: SQLite has
        no other name for its rowid, which identifies a keyless table's rows and tells a
        keyed one's rows present in every read (the plan refuses such a table)."""
        names = {c.name.lower() for c in self.columns}
        return self.kind == "table" and not self.without_rowid and names >= set(ROWID_NAMES)

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


def rowid_note(info: TableInfo) -> str | None:
    """Why a table cannot be captured for want of a rowid name, in words the plan and the
    inventory both show; None when its rowid is reachable (or it has none)."""
    if not info.rowid_unreachable():
        return None
    return (
        "its columns are called rowid, oid and _rowid_, so SQLite leaves no name that "
        "reaches its rowid (which sqlite-cdc reads to identify its rows): exclude it, "
        "rename one of those columns, or make it a WITHOUT ROWID table with a primary key"
    )


def affinity(decl_type: str) -> str:
    """SQLite's column affinity of a declared type (datatype3.html, section 3.1)."""
    t = decl_type.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


def is_strict(create_sql: str) -> bool:
    """Whether a CREATE TABLE declares STRICT (among the options after its columns)."""
    options = create_sql[create_sql.rfind(")") + 1 :]
    return bool(re.search(r"\bSTRICT\b", options, re.IGNORECASE))


def stored_type(decl_type: str, strict: bool) -> str:
    """The declared type a table that is not STRICT needs to store a column's values as
    this one does: the same, but for a STRICT table's `ANY`, which converts nothing
    (elsewhere `ANY` has NUMERIC affinity and would turn 0.0 into 0)."""
    return "" if strict and decl_type.upper() == "ANY" else decl_type


def is_internal(name: str) -> bool:
    """SQLite's own tables and ours are never user data. Ours by exact name only
    (cdc.own_objects): a bot's `_cdc_lookalike` is a user table like any other, and so is
    one called like our triggers (triggers have names of their own in SQLite)."""
    return name.lower().startswith("sqlite_") or is_own_table(name)


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
        if kind == "virtual":
            out.append(virtual_info(conn, name))
            continue
        if kind != "table":
            out.append(TableInfo(name=name, kind=kind))
            continue
        out.append(table_info(conn, name, bool(wr)))
    return out


def key_collations(conn: apsw.Connection, name: str, key: list[str]) -> list[str] | None:
    """Collation of each declared key column of table `name`, upper case; None when the
    key is the rowid itself (no key, or INTEGER PRIMARY KEY), which is BINARY and never
    NULL. The verifier orders both sides by them; a merged target deletes other
    spellings under them (`replicator.apply`)."""
    if not key:
        return None
    idx = conn.execute(
        "SELECT name FROM pragma_index_list(?) WHERE origin='pk'", (name,)
    ).fetchone()
    if idx is None:  # INTEGER PRIMARY KEY: the rowid itself
        return None
    colls = dict(
        conn.execute(
            "SELECT name, coll FROM pragma_index_xinfo(?) WHERE key AND name IS NOT NULL",
            (idx[0],),
        ).fetchall()
    )
    return [(colls.get(k) or "BINARY").upper() for k in key]


def generated_columns(conn: apsw.Connection, name: str) -> list[str]:
    """The table's generated columns (VIRTUAL or STORED), which `table_info` leaves out:
    a SQLite target computes them from the table's own SQL, a PostgreSQL one has none."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM pragma_table_xinfo(?) WHERE hidden IN (2, 3) ORDER BY cid", (name,)
        )
    ]


def table_info(conn: apsw.Connection, name: str, without_rowid: bool | None = None) -> TableInfo:
    cols = conn.execute(
        'SELECT name, type, pk, hidden, dflt_value, "notnull" FROM pragma_table_xinfo(?) '
        "ORDER BY cid",
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
    uniques = unique_indexes(conn, name)
    nullable = {c[0] for c in cols if c[2] > 0 and not c[5]}
    null_key = bool(nullable) and not without_rowid and not _rowid_alias_key(conn, name)
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
        null_key=null_key,
        create_sql=sql_row[0] if sql_row else "",
        index_sql=index_sql,
        unique_sets=[cols for cols, _ in uniques],
        unique_collations=[colls for _, colls in uniques],
        unique_exprs=unique_expressions(conn, name),
        foreign_keys=foreign_keys(conn, name),
        autoincrement=bool(
            conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence' AND type='table'"
            ).fetchone()
        )
        and _has_autoincrement(sql_row[0] if sql_row else ""),
    )


def _rowid_alias_key(conn: apsw.Connection, name: str) -> bool:
    """Whether the declared key of a rowid table is the rowid itself (a lone `INTEGER
    PRIMARY KEY`, never NULL): every other key, `INTEGER PRIMARY KEY DESC` included (a
    SQLite quirk), has an index of its own."""
    return not conn.execute(
        "SELECT 1 FROM pragma_index_list(?) WHERE origin = 'pk'", (name,)
    ).fetchone()


def _has_autoincrement(create_sql: str) -> bool:
    return any(t.upper() == "AUTOINCREMENT" for t in tokens(create_sql))


def foreign_keys(conn: apsw.Connection, name: str) -> list[ForeignKey]:
    rows = conn.execute(
        'SELECT id, seq, "table", "from", "to", on_update, on_delete '
        "FROM pragma_foreign_key_list(?) ORDER BY id, seq",
        (name,),
    ).fetchall()
    out: dict[int, ForeignKey] = {}
    for fid, _seq, ref, col, to, upd, dele in rows:
        fk = out.get(fid)
        if fk is None:
            fk = out[fid] = ForeignKey([], ref, [], upd, dele)
        fk.columns.append(col)
        if to is not None:
            fk.ref_columns.append(to)
    return list(out.values())


def virtual_info(conn: apsw.Connection, name: str) -> TableInfo:
    """A virtual table: its declaration, module and, for an external-content FTS table,
    the content table and the triggers on it that write this table (the application's
    way of keeping the index current, which the target needs too)."""
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (name,)
    ).fetchone()
    sql = row[0] if row else ""
    module = virtual_module(sql)
    content = None
    triggers: list[str] = []
    if module.lower() in ("fts5", "fts4", "fts3"):
        content = fts_options(sql).get("content") or None
        if content:
            for (tsql,) in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type='trigger' AND tbl_name=? "
                "AND sql IS NOT NULL ORDER BY name",
                (content,),
            ):
                if any(
                    names_object(t) and unquote(t).lower() == name.lower() for t in tokens(tsql)
                ):
                    triggers.append(tsql)
    return TableInfo(
        name=name,
        kind="virtual",
        create_sql=sql,
        module=module,
        content_table=content,
        sync_triggers=triggers,
    )


def unique_sets(conn: apsw.Connection, name: str) -> list[list[str]]:
    """Column sets of the table's UNIQUE constraints and unique indexes, key excluded."""
    return [cols for cols, _ in unique_indexes(conn, name)]


def unique_indexes(conn: apsw.Connection, name: str) -> list[tuple[list[str], list[str]]]:
    """(columns, collations) of each UNIQUE constraint and unique index, key excluded.

    The collation is the index's own, which may differ from the column's: a REPLACE
    deletes whatever that index calls equal. Indexes on expressions are left out (no
    column list to probe); see docs/architecture.md."""
    out: list[tuple[list[str], list[str]]] = []
    for idx, origin in conn.execute(
        'SELECT name, origin FROM pragma_index_list(?) WHERE "unique" ORDER BY name', (name,)
    ).fetchall():
        if origin == "pk":
            continue
        rows = conn.execute(
            "SELECT name, coll FROM pragma_index_xinfo(?) WHERE key ORDER BY seqno", (idx,)
        ).fetchall()
        cols, colls = [r[0] for r in rows], [r[1] or "BINARY" for r in rows]
        if cols and all(c is not None for c in cols) and (cols, colls) not in out:
            out.append((cols, colls))
    return out


def unique_expressions(conn: apsw.Connection, name: str) -> list[list[str]]:
    """The terms of each unique index that has an expression among them."""
    out = []
    for idx, sql in conn.execute(
        "SELECT l.name, m.sql FROM pragma_index_list(?) AS l JOIN sqlite_master AS m "
        "ON m.type = 'index' AND m.name = l.name WHERE l.\"unique\" ORDER BY l.name",
        (name,),
    ).fetchall():
        has_expr = conn.execute(
            "SELECT 1 FROM pragma_index_xinfo(?) WHERE key AND cid = -2", (idx,)
        ).fetchone()
        if has_expr and sql:
            out.append(index_terms(sql))
    return out


def schema_version(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA schema_version").fetchone()[0]
