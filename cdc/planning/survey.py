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
by scripts: its types and their evolution rule are in `inventory_format`; how tables of
the same name in several files compare is in `collisions`.
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

from cdc.inventory import TableInfo, is_internal, list_tables, rowid_note
from cdc.own_objects import CAPTURE_TABLES, foreign_claims, is_own_trigger
from cdc.planning.collisions import index_collisions, table_collisions
from cdc.planning.discover import Unreadable, discover, relpath
from cdc.planning.inventory_format import (
    FORMAT_VERSION,
    ColumnReport,
    DatabaseReport,
    IndexReport,
    Inventory,
    TableReport,
    TriggerReport,
    ViewReport,
)
from cdc.sqlconn import read_transaction, set_busy_timeout
from cdc.sqlident import q, tokens, unquote

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (databases done, databases in all, relpath)


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
