"""Capture triggers and the capture tables they write, inside each legacy database.

Shape (chosen for the bot's cost, see bench/): a trigger records only *which key* changed
(table id, op, key values) in `_cdc_changes`; the harvester reads the row's image itself,
in the same read transaction as the capture rows. That keeps each trigger one narrow
INSERT into a table with no constraint that can fail, stores key values natively (no JSON,
no quote(): storage classes survive), and means a column added by a bot's ALTER is read
from its first row. An UPDATE that changes the key records the old key too, so the
harvester sees it gone. The capture table never empties (the harvester keeps the newest
row when trimming), so its INTEGER PRIMARY KEY sequence stays monotonic without the cost
of AUTOINCREMENT.

Only SQL available in SQLite 3.31 is used. Everything is created in one transaction and
`uninstall` removes exactly these objects.
"""

from __future__ import annotations

import logging
import uuid

import apsw

from cdc.errors import SourceError
from cdc.inventory import TableInfo
from cdc.own_objects import FENCE_TABLES, is_fence_trigger
from cdc.sqlconn import write_transaction
from cdc.sqlident import q

log = logging.getLogger(__name__)

CHANGES = "_cdc_changes"
TABLES = "_cdc_tables"
META = "_cdc_meta"
FORMAT_VERSION = 1
OP_INSERT, OP_UPDATE, OP_OLD_KEY, OP_REPLACED = 1, 2, 3, 4
# VACUUM gives new rowids to the rows of every table that has no index (keyless tables
# among them, whose identity is the rowid) and fires no trigger. This table has no index
# and one row at rowid MARK_ROWID: after a VACUUM it sits at 1, which tells the harvester
# to copy the keyless tables again (cdc/capture/harvester.py).
VACUUM_MARK = "_cdc_vacuum_mark"
MARK_ROWID = 1000


def key_exprs(info: TableInfo, row: str) -> list[str]:
    """How a trigger reaches the identity of NEW/OLD row (or of `row`, a table).

    A key that may hold NULL (`TableInfo.null_key`) gets one more value: the rowid, only
    when a key column is NULL. NULL never equals NULL, so several rows may have a NULL
    key; their rowid tells them apart (stable: such a table's key has an index, and
    VACUUM keeps the rowids of tables with an index)."""
    if not info.key:
        return [f"{row}.{info.rowid_alias()}"]
    keys = [f"{row}.{q(k)}" for k in info.key]
    if info.null_key:
        nulls = " OR ".join(f"{k} IS NULL" for k in keys)
        keys.append(f"CASE WHEN {nulls} THEN {row}.{info.rowid_alias()} END")
    return keys


def differs(a: str, b: str) -> str:
    """SQL true when `a` and `b` are not the same value: not merely unequal under a
    column's collation ('Alpha' = 'ALPHA' under NOCASE) or numerically (1 = 1.0), but
    different in storage class or bytes. A key that changes only that way is a new key
    for every copy that does not share the collation (a merged target) and a new
    spelling for every other one."""
    return f"(typeof({a}) IS NOT typeof({b}) OR {a} IS NOT {b} COLLATE BINARY)"


def same(a: str, b: str) -> str:
    """SQL true when `a` and `b` are the same value (see `differs`). The plain `IS` comes
    first so that an index on `a`, whatever its collation, can still find the row."""
    return f"({a} IS {b} AND {a} IS {b} COLLATE BINARY AND typeof({a}) IS typeof({b}))"


def key_width(info: TableInfo) -> int:
    return max(1, len(info.key) + info.null_key)


def trigger_names(tid: int) -> list[str]:
    return [f"_cdc_t{tid}_{s}" for s in ("ins", "upd", "updkey", "del", "uniq", "uniqupd")]


def trigger_sql(tid: int, info: TableInfo, probe_unique: bool = True) -> list[str]:
    kcols = _kcols(info)
    new_k = ", ".join(key_exprs(info, "NEW"))
    old_k = ", ".join(key_exprs(info, "OLD"))
    changed = " OR ".join(
        differs(o, n) for o, n in zip(key_exprs(info, "OLD"), key_exprs(info, "NEW"), strict=True)
    )
    t = q(info.name)
    ins, upd, updkey, dele = trigger_names(tid)[:4]

    def body(op: int, keys: str) -> str:
        return f"INSERT INTO {CHANGES}(tid, op, {kcols}) VALUES ({tid}, {op}, {keys});"

    sqls = [
        f"CREATE TRIGGER {ins} AFTER INSERT ON {t} BEGIN {body(OP_INSERT, new_k)} END",
        f"CREATE TRIGGER {upd} AFTER UPDATE ON {t} BEGIN {body(OP_UPDATE, new_k)} END",
        f"CREATE TRIGGER {updkey} AFTER UPDATE ON {t} WHEN {changed} "
        f"BEGIN {body(OP_OLD_KEY, old_k)} END",
        f"CREATE TRIGGER {dele} AFTER DELETE ON {t} BEGIN {body(OP_OLD_KEY, old_k)} END",
    ]
    if probe_unique and (info.unique_sets or info.unique_exprs):
        sqls += _replace_probe_triggers(tid, info, kcols)
    return sqls


def _replace_probe_triggers(tid: int, info: TableInfo, kcols: str) -> list[str]:
    """Record rows that `INSERT/UPDATE OR REPLACE` may delete through a non-key UNIQUE.

    SQLite deletes such a row without firing any DELETE trigger (unless the bot turned on
    recursive_triggers), so a BEFORE trigger probes the unique columns for rows that hold
    the incoming values and records their keys. Recording a key that turns out not to be
    deleted is harmless (the harvester reads its current state), so the probe may
    over-approximate; it must never miss.
    """
    t = q(info.name)
    found = ", ".join(key_exprs(info, t))
    colls = info.unique_collations or [["BINARY"] * len(c) for c in info.unique_sets]
    probe = " OR ".join(
        "("
        + " AND ".join(
            f"{t}.{q(c)} = NEW.{q(c)} COLLATE {q(coll)}" for c, coll in zip(cols, cs, strict=True)
        )
        + ")"
        for cols, cs in zip(info.unique_sets, colls, strict=True)
    )
    if info.unique_exprs:
        # The index's own terms, evaluated twice: on the table's rows, and inside a
        # subquery whose only columns are NEW's values under the table's column names
        # (the innermost scope wins, so the same text reads NEW there).
        new = ", ".join(f"NEW.{q(c)} AS {q(c)}" for c in info.column_names)
        probe = " OR ".join(
            ([probe] if probe else [])
            + [
                f"(({', '.join(terms)}) = (SELECT {', '.join(terms)} FROM (SELECT {new})))"
                for terms in info.unique_exprs
            ]
        )
    body = (
        f"INSERT INTO {CHANGES}(tid, op, {kcols}) SELECT {tid}, {OP_REPLACED}, {found} "
        f"FROM {t} WHERE {probe};"
    )
    ucols = ", ".join(q(c) for c in sorted({c for cols in info.unique_sets for c in cols}))
    of = "" if info.unique_exprs else f"OF {ucols} "  # an expression may read any column
    _, _, _, _, uniq, uniqupd = trigger_names(tid)
    return [
        f"CREATE TRIGGER {uniq} BEFORE INSERT ON {t} BEGIN {body} END",
        f"CREATE TRIGGER {uniqupd} BEFORE UPDATE {of}ON {t} BEGIN {body} END",
    ]


def lacks_probes(conn: apsw.Connection, tables: list[TableInfo], tids: dict[str, int]) -> bool:
    """Whether a captured table's REPLACE probes are not the ones its unique indexes need
    now: missing (an installation made before copied tables got them) or probing other
    columns or collations (a unique index created or dropped since)."""
    return bool(stale_probes(conn, tables, tids))


def stale_probes(conn: apsw.Connection, tables: list[TableInfo], tids: dict[str, int]) -> list[str]:
    """The tables of `lacks_probes`."""
    have = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'"))
    out = []
    for t in tables:
        if t.name not in tids:
            continue
        tid = tids[t.name]
        # every trigger as this version writes it: probes, and the key tests too
        want = trigger_sql(tid, t)
        got = [have.get(n) for n in trigger_names(tid) if have.get(n) is not None]
        if got != want:
            out.append(t.name)
    return out


def widths(conn: apsw.Connection) -> dict[str, int]:
    """Table name -> the key width its capture rows were written with."""
    if not is_installed(conn):
        return {}
    return dict(conn.execute(f"SELECT name, key_width FROM {TABLES}"))


def _kcols(info: TableInfo) -> str:
    return ", ".join(f"k{i + 1}" for i in range(key_width(info)))


def top_seq(conn: apsw.Connection) -> int | None:
    """The newest capture sequence (0: none yet), None when capture is not installed."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (CHANGES,)
    ).fetchone():
        return None
    return conn.execute(f"SELECT coalesce(max(seq), 0) FROM {CHANGES}").fetchone()[0]


def drop_own_changes(conn: apsw.Connection, before: int, tids: list[int] | None = None) -> None:
    """Inside the caller's write transaction, which began at sequence `before`: remove the
    capture rows its own writes made (of `tids` only, if given), so that whoever reads
    this capture table never sees them. Nobody else can write during a write transaction,
    so every row after `before` is ours; the newest row may go with them, which is safe:
    the next sequence restarts at `before + 1`, and nobody read past `before`."""
    if tids is None:
        conn.execute(f"DELETE FROM {CHANGES} WHERE seq > ?", (before,))
    elif tids:
        conn.execute(
            f"DELETE FROM {CHANGES} WHERE seq > ? AND tid IN ({', '.join('?' * len(tids))})",
            (before, *tids),
        )


def has_vacuum_mark(conn: apsw.Connection) -> bool:
    return bool(
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (VACUUM_MARK,)
        ).fetchone()
    )


def vacuumed(conn: apsw.Connection) -> bool:
    """Whether the file was vacuumed since the mark was last set (False without a mark:
    an installation older than it, which the daemon gives one when it starts)."""
    if not has_vacuum_mark(conn):
        return False
    row = conn.execute(f"SELECT max(rowid), count(*) FROM {VACUUM_MARK}").fetchone()
    return row != (MARK_ROWID, 1)


def set_vacuum_mark(conn: apsw.Connection) -> None:
    """Inside the caller's write transaction: put the mark back at its rowid."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {VACUUM_MARK}(mark)")
    conn.execute(f"DELETE FROM {VACUUM_MARK}")
    conn.execute(f"INSERT INTO {VACUUM_MARK}(rowid, mark) VALUES ({MARK_ROWID}, 1)")


def is_installed(conn: apsw.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN (?,?,?)",
        (CHANGES, TABLES, META),
    ).fetchone()
    return row[0] == 3


def is_capturing(conn: apsw.Connection, tables: list[str]) -> bool:
    """Whether every table in `tables` has its capture triggers (cheap: no write)."""
    tids = installed_tables(conn)
    if any(t not in tids for t in tables):
        return False
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    return all(trigger_names(tids[t])[0] in names for t in tables)


def install_id(conn: apsw.Connection) -> str | None:
    if not is_installed(conn):
        return None
    row = conn.execute(f"SELECT v FROM {META} WHERE k='install_id'").fetchone()
    return row[0] if row else None


def installed_tables(conn: apsw.Connection) -> dict[str, int]:
    """Table name -> tid for every table with capture triggers."""
    if not is_installed(conn):
        return {}
    return {name: tid for tid, name in conn.execute(f"SELECT tid, name FROM {TABLES}")}


class CaptureMoved(Exception):  # noqa: N818 - a signal to look again, never an error shown
    """A captured table lost its triggers between our look and our install: the caller
    must look again, since that table needs a reset its install would have hidden."""


def install(
    conn: apsw.Connection,
    tables: list[TableInfo],
    path: str = "",
    probe_unique: set[str] | None = None,
    prune: bool = True,
    expect_lacking: set[str] | None = None,
    release: list[str] = (),
    mark_vacuum: bool = False,
) -> str:
    """Create capture tables and (re)create triggers for `tables`; return the install id.

    `probe_unique` names the tables that get the REPLACE probes (None: all that have a
    non-key UNIQUE); see `SourcePlan.needs_unique_probes` for why that is every table.

    Idempotent: tables already captured keep their id; triggers are recreated so a key
    change in the table definition is picked up. Tables captured before but no longer in
    `tables` lose their triggers (their rows stay in the capture table until harvested),
    unless `prune` is off; the tables in `release` lose theirs in any case.

    `expect_lacking` (the daemon's restart): the tables the caller saw without triggers and
    has already reset in the log. A captured table found lacking triggers here that is not
    in it was dropped and created again since: raise `CaptureMoved` (nothing is changed)
    rather than quietly give it triggers and lose its reset.

    `mark_vacuum` (the daemon, once it has logged the resets a VACUUM needs) puts the
    VACUUM mark back in the same transaction.
    """
    try:
        with write_transaction(conn):  # the bots see all of it or none
            _create_capture_tables(conn, tables, mark_vacuum)
            existing = installed_tables(conn)
            wanted = {t.name for t in tables}
            if expect_lacking is not None:
                _refuse_moved(conn, existing, wanted, expect_lacking, path)
            for name, tid in existing.items():
                if (prune and name not in wanted) or name in release:
                    _drop_triggers(conn, tid)
                    conn.execute(f"DELETE FROM {TABLES} WHERE tid=?", (tid,))
            for info in tables:
                tid = _table_id(conn, info, existing)
                _drop_triggers(conn, tid)
                probe = probe_unique is None or info.name in probe_unique
                for sql in trigger_sql(tid, info, probe):
                    conn.execute(sql)
            return conn.execute(f"SELECT v FROM {META} WHERE k='install_id'").fetchone()[0]
    except apsw.BusyError as e:
        raise SourceError(
            f"{path}: database stayed locked during install: {e}",
            hint="a bot held the write lock for longer than the busy timeout; retry",
        ) from e


def _table_id(conn: apsw.Connection, info: TableInfo, existing: dict[str, int]) -> int:
    """A captured table keeps its id: the capture rows it has waiting are tagged with it."""
    tid = existing.get(info.name)
    if tid is None:
        conn.execute(
            f"INSERT INTO {TABLES}(name, key_width) VALUES (?, ?)", (info.name, key_width(info))
        )
        return conn.last_insert_rowid()
    # the width may have changed with the key (or with `null_key`)
    conn.execute(f"UPDATE {TABLES} SET key_width = ? WHERE tid = ?", (key_width(info), tid))
    return tid


def _create_capture_tables(
    conn: apsw.Connection, tables: list[TableInfo], mark_vacuum: bool
) -> None:
    """Our tables in the legacy file, with a key column per value of the widest key."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {META}(k TEXT PRIMARY KEY, v)")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLES}(tid INTEGER PRIMARY KEY, "
        "name TEXT NOT NULL UNIQUE, key_width INTEGER NOT NULL)"
    )
    conn.execute(f"CREATE TABLE IF NOT EXISTS {CHANGES}(seq INTEGER PRIMARY KEY, tid, op, k1)")
    conn.execute(
        f"INSERT OR IGNORE INTO {META}(k, v) VALUES ('install_id', ?), ('format', ?)",
        (uuid.uuid4().hex, FORMAT_VERSION),
    )
    if mark_vacuum or not has_vacuum_mark(conn):
        set_vacuum_mark(conn)
    width = max([key_width(t) for t in tables] + [1])
    have = [r[1] for r in conn.execute(f"SELECT * FROM pragma_table_info('{CHANGES}')")]
    for i in range(2, width + 1):
        if f"k{i}" not in have:
            conn.execute(f"ALTER TABLE {CHANGES} ADD COLUMN k{i}")


def _refuse_moved(
    conn: apsw.Connection,
    existing: dict[str, int],
    wanted: set[str],
    expect_lacking: set[str],
    path: str,
) -> None:
    """Raise `CaptureMoved` for a captured table that lost its triggers unexpectedly."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    moved = [
        n
        for n, tid in existing.items()
        if n in wanted and n not in expect_lacking and trigger_names(tid)[0] not in have
    ]
    if moved:
        raise CaptureMoved(f"{path}: {', '.join(moved)} lost capture triggers just now")


def _drop_triggers(conn: apsw.Connection, tid: int) -> None:
    for name in trigger_names(tid):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")


def uninstall(conn: apsw.Connection, keep_fences: bool = False) -> int:
    """Remove every trigger and table `install` created, and nothing else. Returns tables
    released. A cutover's fences (`cdc.fence`) go too, unless `keep_fences`: a finalized
    stage keeps them, so a stale bot's write to the legacy file still fails loudly."""
    try:
        with write_transaction(conn):
            tids = list(installed_tables(conn).values())
            for tid in tids:
                _drop_triggers(conn, tid)
            fences = [
                r
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
                if is_fence_trigger(r[0])  # by exact name: a bot's `_cdc_fence_log` stays
            ]
            for (name,) in [] if keep_fences else fences:
                conn.execute(f"DROP TRIGGER IF EXISTS {q(name)}")  # a name read from the file
            for t in (CHANGES, TABLES, META, VACUUM_MARK):
                conn.execute(f"DROP TABLE IF EXISTS {t}")
            if not keep_fences:  # what arms the fences (`cdc.capture.fence`) goes with them
                conn.execute(f"DROP TABLE IF EXISTS {FENCE_TABLES[0]}")
    except apsw.BusyError as e:
        raise SourceError(
            f"{conn.filename}: database stayed locked during uninstall: {e}",
            hint="a bot held the write lock for longer than the busy timeout; retry",
        ) from e
    return len(tids)
