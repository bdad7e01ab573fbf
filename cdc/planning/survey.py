"""Reading what each legacy database holds, without ever writing to it.

The inventory is the first thing run on a production machine whose files the bots write
all day, so every open is read-only and every read sits in one short read transaction:
- a rollback-journal file is opened `mode=ro` (SQLite creates no side file for it);
- a WAL file whose `-wal` is absent is opened `immutable=1`: no connection has it open (the
  last one to close deletes the WAL), a read-only open would create `-wal` and `-shm`, and
  a bot starting meanwhile writes into a new `-wal`, not the file we read;
- a hot journal (a writer died mid-transaction) is reported, not rolled back: rolling back
  is a write, which is the bots' business.

What the inventory reports is typed (`msgspec.Struct`s) because `inventory.json` is read
by scripts. Evolution rule: new fields get defaults, nothing is renamed or removed without
bumping `FORMAT_VERSION`.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable

import apsw
import msgspec

from cdc.inventory import ForeignKey, TableInfo, is_internal, list_tables, rowid_note
from cdc.own_objects import CAPTURE_TABLES, foreign_claims, is_own_trigger
from cdc.planning.discover import Skipped, Unreadable, discover, relpath
from cdc.sqlconn import read_transaction, set_busy_timeout
from cdc.sqlident import q, tokens, unquote

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
Progress = Callable[[int, int, str], None]  # (databases done, databases in all, relpath)


class ColumnReport(msgspec.Struct, frozen=True):
    name: str
    type: str = ""  # as declared
    notnull: bool = False
    default: str | None = None  # SQL text of the DEFAULT clause
    pk: int = 0  # position in the primary key (1-based); 0: not part of it
    hidden: bool = False  # a virtual table's hidden column
    generated: str = ""  # "virtual" or "stored" for generated columns


class TableReport(msgspec.Struct, frozen=True):
    name: str
    kind: str  # table, virtual or shadow
    rows: int | None = None  # None: could not be counted (see `problem`)
    columns: list[ColumnReport] = []
    key: list[str] = []  # declared primary key; empty: rows are identified by rowid
    without_rowid: bool = False
    autoincrement: bool = False
    unique: list[list[str]] = []  # non-key UNIQUE column sets (constraints and indexes)
    foreign_keys: list[ForeignKey] = []
    module: str = ""  # virtual tables: fts5, rtree, ...
    content_table: str | None = None  # external-content FTS: the table it indexes
    shadow_tables: list[str] = []  # virtual tables: their shadow tables
    shadow_of: str | None = None  # shadow tables: their virtual table
    sql: str = ""
    problem: str | None = None
    refused: bool = False  # the plan refuses to capture it as it is (`problem` says why)


class IndexReport(msgspec.Struct, frozen=True):
    name: str
    table: str
    unique: bool
    origin: str  # c: CREATE INDEX, u: UNIQUE constraint, pk: PRIMARY KEY
    columns: list[str]  # an expression is shown as "(expression)"
    partial: bool = False
    sql: str | None = None  # None for indexes SQLite made for a constraint


class TriggerReport(msgspec.Struct, frozen=True):
    name: str
    table: str
    sql: str
    writes: list[str] = []  # tables its body inserts into, updates or deletes from


class ViewReport(msgspec.Struct, frozen=True):
    name: str
    sql: str
    reads: list[str] = []  # tables and views of this database named in its SQL


class DatabaseReport(msgspec.Struct, frozen=True):
    path: str
    relpath: str
    size: int
    page_size: int
    page_count: int
    freelist_count: int
    journal_mode: str  # "wal" or "delete" (rollback journal), from the file header
    wal_file: bool
    wal_size: int | None
    encoding: str
    user_version: int
    application_id: int = 0
    sqlite_cdc_installed: bool = False  # our capture tables exist (see `cdc install`)
    tables: list[TableReport] = []
    indexes: list[IndexReport] = []
    triggers: list[TriggerReport] = []
    views: list[ViewReport] = []
    problems: list[str] = []  # what this SQLite could not check or count here
    # "<type> <name>" of the bot's objects named like sqlite-cdc's own (cdc.own_objects):
    # the plan refuses the file until they are renamed
    reserved: list[str] = []

    def mappable(self) -> list[TableReport]:
        """The tables an operator maps: shadow tables travel with their virtual table."""
        return [t for t in self.tables if t.kind != "shadow"]


class TablePlace(msgspec.Struct, frozen=True):
    database: str  # relpath
    name: str  # as spelled in that database
    kind: str
    rows: int | None
    columns: list[str]
    key: list[str]


class TypeDifference(msgspec.Struct, frozen=True):
    column: str
    types: dict[str, str]  # relpath -> declared type, for the files that have the column


class TableCollision(msgspec.Struct, frozen=True):
    """One table name in several files: can they share a target table as they are?"""

    table: str
    places: list[TablePlace]
    agree: bool  # same column names, order, declared types and key everywhere
    missing_columns: dict[str, list[str]] = {}  # relpath -> columns others have, it lacks
    type_differences: list[TypeDifference] = []
    order_differs: bool = False
    key_differs: bool = False


class IndexPlace(msgspec.Struct, frozen=True):
    database: str
    table: str


class IndexCollision(msgspec.Struct, frozen=True):
    index: str
    places: list[IndexPlace]


class CrossTargetForeignKey(msgspec.Struct, frozen=True):
    """A foreign key the mapping would split: child and parent go to different places."""

    database: str
    table: str
    columns: list[str]
    parent: str
    parent_columns: list[str]
    target: str
    parent_target: str  # "" when the parent is unmapped or missing
    reason: str
    dropped: bool = False  # the operator already chose `drop_foreign_keys`


class VanishedTable(msgspec.Struct, frozen=True):
    database: str
    table: str
    target: str


class Inventory(msgspec.Struct, frozen=True):
    format_version: int
    base: str
    roots: list[str]
    taken_at: str
    sqlite_version: str
    databases: list[DatabaseReport] = []
    skipped: list[Skipped] = []
    unreadable: list[Unreadable] = []
    table_collisions: list[TableCollision] = []
    index_collisions: list[IndexCollision] = []
    mapping: str | None = None  # the operator's mapping CSV read with --mapping
    cross_target_foreign_keys: list[CrossTargetForeignKey] = []
    mapping_vanished: list[VanishedTable] = []


def take_inventory(
    roots: Iterable[str | os.PathLike[str]],
    progress: Progress | None = None,
    busy_timeout_ms: int = 5000,
) -> Inventory:
    """Find every database under `roots`, read each one, and compare them."""
    found = discover(roots)
    databases: list[DatabaseReport] = []
    unreadable = list(found.unreadable)
    total = len(found.databases)
    for done, path in enumerate(found.databases, start=1):
        rel = relpath(path, found.base)
        report = survey_database(path, rel, busy_timeout_ms)
        if isinstance(report, Unreadable):
            log.info("%s: not read (%s): %s", rel, report.kind, report.reason)
            unreadable.append(report)
        else:
            databases.append(report)
        if progress is not None:
            progress(done, total, rel)
    return Inventory(
        format_version=FORMAT_VERSION,
        base=found.base,
        roots=found.roots,
        taken_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        sqlite_version=apsw.sqlite_lib_version(),
        databases=databases,
        skipped=found.skipped,
        unreadable=sorted(unreadable, key=lambda u: u.relpath),
        table_collisions=table_collisions(databases),
        index_collisions=index_collisions(databases),
    )


def survey_database(
    path: str, rel: str, busy_timeout_ms: int = 5000
) -> DatabaseReport | Unreadable:
    """Everything the inventory says about one file, or why it could not be read."""
    try:
        header = _read_header(path)
        conn = _open_readonly(path, header)
    except OSError as e:
        kind = "permission" if e.errno in (errno.EACCES, errno.EPERM) else "error"
        return Unreadable(path, rel, kind, str(e))
    except apsw.Error as e:
        return _unreadable(path, rel, e)
    try:
        set_busy_timeout(conn, busy_timeout_ms)
        with read_transaction(conn):
            try:
                damage = _quick_check(conn)
            except apsw.SQLError as e:  # e.g. an index on a collation only the bot defines
                damage, notes = [], [f"quick_check not run: {e}"]
            else:
                notes = []
            if damage:
                return Unreadable(path, rel, "corrupt", "quick_check: " + "; ".join(damage))
            report = _read_database(conn, path, rel, header)
        return msgspec.structs.replace(report, problems=notes + report.problems)
    except apsw.Error as e:
        return _unreadable(path, rel, e)
    finally:
        conn.close()


def _read_header(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(100)


def _is_wal(header: bytes) -> bool:
    return len(header) >= 20 and header[18] == 2 and header[19] == 2


def _open_readonly(path: str, header: bytes) -> apsw.Connection:
    params = "mode=ro"
    if _is_wal(header) and not os.path.exists(path + "-wal"):
        params += "&immutable=1"
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?" + params
    return apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)


def _unreadable(path: str, rel: str, e: apsw.Error) -> Unreadable:
    if isinstance(e, apsw.ReadOnlyError):
        return Unreadable(
            path,
            rel,
            "hot_journal",
            "a hot journal (a writer died mid-transaction) needs a read-write open to roll "
            "back; the inventory never writes: open the file once with the application",
        )
    if isinstance(e, apsw.CorruptError | apsw.NotADBError):
        return Unreadable(path, rel, "corrupt", str(e))
    if isinstance(e, apsw.BusyError | apsw.LockedError):
        return Unreadable(path, rel, "busy", f"locked by another process: {e}")
    if isinstance(e, apsw.PermissionsError | apsw.AuthError):
        return Unreadable(path, rel, "permission", str(e))
    return Unreadable(path, rel, "error", f"{type(e).__name__}: {e}")


def _quick_check(conn: apsw.Connection) -> list[str]:
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    return [] if rows == ["ok"] else rows


def _pragma(conn: apsw.Connection, name: str) -> object:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def _read_database(conn: apsw.Connection, path: str, rel: str, header: bytes) -> DatabaseReport:
    wal = path + "-wal"
    claims = foreign_claims(conn)
    names = {n.lower() for (n,) in conn.execute("SELECT name FROM sqlite_master")}
    infos = list_tables(conn)
    tables = _tables(conn, infos)
    known = {t.name.lower() for t in tables}
    views = _views(conn, known)
    return DatabaseReport(
        path=path,
        relpath=rel,
        size=os.path.getsize(path),
        page_size=int(_pragma(conn, "page_size")),
        page_count=int(_pragma(conn, "page_count")),
        freelist_count=int(_pragma(conn, "freelist_count")),
        journal_mode="wal" if _is_wal(header) else "delete",
        wal_file=os.path.exists(wal),
        wal_size=os.path.getsize(wal) if os.path.exists(wal) else None,
        encoding=str(_pragma(conn, "encoding")),
        user_version=int(_pragma(conn, "user_version")),
        application_id=int(_pragma(conn, "application_id")),
        sqlite_cdc_installed=all(t in names for t in CAPTURE_TABLES)
        and not any(n.lower() in CAPTURE_TABLES for _, n in claims),
        tables=tables,
        indexes=_indexes(conn, [t.name for t in tables]),
        triggers=_triggers(conn),
        views=views,
        problems=[f"{t.name}: {t.problem}" for t in tables if t.problem and not t.refused],
        reserved=[f"{kind} {name}" for kind, name in claims],
    )


def _tables(conn: apsw.Connection, infos: list[TableInfo]) -> list[TableReport]:
    virtual = [i.name for i in infos if i.kind == "virtual"]
    owner = {i.name: _shadow_owner(i.name, virtual) for i in infos if i.kind == "shadow"}
    out = []
    for info in infos:
        columns, unknown = _columns(conn, info.name)
        rows, uncounted = _count(conn, info.name)
        refused = rowid_note(info)
        out.append(
            TableReport(
                name=info.name,
                kind=info.kind,
                rows=rows,
                columns=columns,
                key=list(info.key) if info.kind == "table" else [],
                without_rowid=info.without_rowid,
                autoincrement=info.autoincrement,
                unique=[list(u) for u in info.unique_sets],
                foreign_keys=list(info.foreign_keys),
                module=info.module,
                content_table=info.content_table,
                shadow_tables=sorted(s for s, o in owner.items() if o == info.name),
                shadow_of=owner.get(info.name),
                sql=info.create_sql or _create_sql(conn, info.name),
                problem=unknown or uncounted or refused,
                refused=refused is not None and not (unknown or uncounted),
            )
        )
    return out


def _shadow_owner(name: str, virtual: list[str]) -> str | None:
    """FTS and R*Tree name their shadow tables `<virtual table>_<suffix>`."""
    low = name.lower()
    owners = [v for v in virtual if low.startswith(v.lower() + "_")]
    return max(owners, key=len) if owners else None


def _columns(conn: apsw.Connection, table: str) -> tuple[list[ColumnReport], str | None]:
    try:
        rows = conn.execute(
            'SELECT name, type, "notnull", dflt_value, pk, hidden '
            "FROM pragma_table_xinfo(?) ORDER BY cid",
            (table,),
        ).fetchall()
    except apsw.SQLError as e:  # a virtual table whose module this SQLite lacks
        return [], f"columns unknown: {e}"
    generated = {2: "virtual", 3: "stored"}
    return [
        ColumnReport(
            name=name,
            type=decl or "",
            notnull=bool(notnull),
            default=dflt,
            pk=pk,
            hidden=hidden == 1,
            generated=generated.get(hidden, ""),
        )
        for name, decl, notnull, dflt, pk, hidden in rows
    ], None


def _count(conn: apsw.Connection, table: str) -> tuple[int | None, str | None]:
    try:
        return conn.execute(f"SELECT count(*) FROM {q(table)}").fetchone()[0], None
    except apsw.SQLError as e:
        return None, f"rows not counted: {e}"


def _create_sql(conn: apsw.Connection, name: str) -> str:
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (name,)
    ).fetchone()
    return (row[0] or "") if row else ""


def _indexes(conn: apsw.Connection, tables: list[str]) -> list[IndexReport]:
    sql = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index'").fetchall())
    out = []
    for table in tables:
        try:
            listed = conn.execute(
                'SELECT name, "unique", origin, partial FROM pragma_index_list(?)', (table,)
            ).fetchall()
        except apsw.SQLError:
            continue
        for name, unique, origin, partial in listed:
            cols = conn.execute(
                "SELECT name FROM pragma_index_xinfo(?) WHERE key ORDER BY seqno", (name,)
            ).fetchall()
            out.append(
                IndexReport(
                    name=name,
                    table=table,
                    unique=bool(unique),
                    origin=origin,
                    columns=[c if c is not None else "(expression)" for (c,) in cols],
                    partial=bool(partial),
                    sql=sql.get(name),
                )
            )
    return sorted(out, key=lambda i: (i.table, i.name))


def _triggers(conn: apsw.Connection) -> list[TriggerReport]:
    rows = conn.execute(
        "SELECT name, tbl_name, sql FROM sqlite_master WHERE type='trigger' ORDER BY name"
    ).fetchall()
    return [
        TriggerReport(name=name, table=table, sql=sql or "", writes=trigger_writes(sql or ""))
        for name, table, sql in rows
        if not is_own_trigger(name) and not is_internal(table)
    ]


def _views(conn: apsw.Connection, tables: set[str]) -> list[ViewReport]:
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='view' ORDER BY name"
    ).fetchall()
    names = tables | {n.lower() for n, _ in rows}
    out = []
    for name, sql in rows:
        reads = []
        for t in _names_in(sql or ""):
            if t.lower() in names and t.lower() != name.lower() and t not in reads:
                reads.append(t)
        out.append(ViewReport(name=name, sql=sql or "", reads=reads))
    return out


def _names_in(sql: str) -> list[str]:
    try:
        return [unquote(t) for t in tokens(sql)]
    except ValueError:  # unterminated quote: a view SQLite accepted, we cannot tokenize
        return []


def trigger_writes(sql: str) -> list[str]:
    """Tables a trigger body writes: the names after INSERT/REPLACE INTO, UPDATE [OR x]
    and DELETE FROM, read only after BEGIN (the head names the trigger's own event)."""
    try:
        toks = tokens(sql)
    except ValueError:
        return []
    up = [t.upper() for t in toks]
    out: list[str] = []
    for i in range(up.index("BEGIN") + 1 if "BEGIN" in up else len(up), len(up)):
        j = _write_target(up, i)
        if j is None or j >= len(toks) or up[j] == "SET":  # not `ON CONFLICT DO UPDATE SET`
            continue
        if j + 2 < len(toks) and toks[j + 1] == ".":  # schema-qualified
            j += 2
        name = unquote(toks[j])
        if name not in out:
            out.append(name)
    return out


def _write_target(up: list[str], i: int) -> int | None:
    """Where the table name is, if token `i` starts the target of a write."""
    if up[i] == "UPDATE":
        return i + 3 if up[i + 1 : i + 2] == ["OR"] else i + 1
    if up[i] in ("INTO", "FROM"):
        before = up[max(0, i - 3) : i]
        if before[-1:] in (["INSERT"], ["REPLACE"], ["DELETE"]) or before[:2] == ["INSERT", "OR"]:
            return i + 1
    return None


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
