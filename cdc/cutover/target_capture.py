"""Capture on a cut-over target: what the way back reads, and what a rollback checks.

A target in its rollback window carries our capture triggers and a record of the keys
the bots changed (`_cdc_touched`). Installing them, reading the keys, forgetting them
after a proof and removing it all at the end are steps of the cutover, the rollback and
the finalize, each of which needs them without the backflow's apply machinery: they live
here, below all four.
"""

from __future__ import annotations

import apsw

from cdc import exact_text
from cdc.capture import fence
from cdc.capture import triggers as capture
from cdc.config import Config
from cdc.errors import CdcError
from cdc.inventory import table_info
from cdc.sqlconn import open_target, write_transaction
from cdc.sqlident import q
from cdc.stages.record import CutoverRecord

TOUCHED = "_cdc_touched"  # keys of trimmed target capture rows, for the rollback's check


class BackflowError(CdcError):
    """A change in the target cannot be written back to its legacy file."""

    exit_code = 12


def capture_target(cfg: Config, path: str, tables: list[str]) -> None:
    """Capture the stage's target tables, in the preflight (creating the triggers took 193
    ms for the 65 tables of the corpus's analytics stage, holding the target's write lock:
    bot pause if done under the fence). What the replicator writes there (before "go", and
    again after a rollback) is captured too, and removed in its own apply transaction
    (`replicator.apply`), so only the bots' writes stay. The triggers cannot tell our
    connections apart themselves: a test of a pass function in SQL needs a virtual table,
    which a bot connection with `trusted_schema=OFF` refuses inside a trigger, and its
    every write would fail."""
    conn = open_target(path, cfg.daemon.busy_timeout_ms)
    try:
        _ensure_capture(conn, path, tables)
    finally:
        conn.close()


def _ensure_capture(conn: apsw.Connection, path: str, tables: list[str]) -> None:
    names = sorted(set(tables))
    if capture.is_capturing(conn, names) and key_columns(conn, TOUCHED):
        return
    infos = [table_info(conn, n) for n in names]
    missing = [i.name for i in infos if not i.columns]
    if missing:
        raise BackflowError(f"{path}: tables {', '.join(missing)} are missing")
    capture.install(conn, infos, path)
    with write_transaction(conn):
        kcols = key_columns(conn, capture.CHANGES)
        have = key_columns(conn, TOUCHED)
        if not have:
            keys = ", ".join(q(k) for k in kcols)
            conn.execute(f"CREATE TABLE {TOUCHED}(tid, {keys}, UNIQUE(tid, {keys}))")
        for k in kcols[len(have) :] if have else []:
            conn.execute(f"ALTER TABLE {TOUCHED} ADD COLUMN {q(k)}")


def key_columns(conn: apsw.Connection, table: str) -> list[str]:
    """k1..kN of a capture-shaped table (none: it does not exist)."""
    return [
        r[0]
        for r in conn.execute("SELECT name FROM pragma_table_info(?) ORDER BY cid", (table,))
        if r[0].startswith("k")
    ]


def touched_keys(conn: apsw.Connection, tables: list[str]) -> dict[str, list[list]] | None:
    """Target table -> every key the bots changed since the stage was last proven equal
    (the cutover, or the end of the last rollback): what the backflow trimmed is kept in
    `_cdc_touched`, the rest is still in the capture table. None: no record of it (a
    target captured before it existed): verify in full."""
    kcols = key_columns(conn, TOUCHED)
    if not kcols:
        return None
    tids = capture.installed_tables(conn)
    infos = {tid: table_info(conn, name) for name, tid in tids.items() if name in tables}
    widths = {tid: capture.key_width(info) for tid, info in infos.items()}
    nullable = {tid: info.null_key for tid, info in infos.items()}
    names = {tid: name for name, tid in tids.items()}
    out: dict[str, dict[bytes, list]] = {}
    cols = ["tid", *(q(k) for k in kcols)]
    for table in (TOUCHED, capture.CHANGES):
        for row in exact_text.select(conn, cols, f"FROM {table}", distinct=True):
            tid = row[0]
            if tid in widths:
                key = list(row[1 : 1 + widths[tid]])
                if len(key) > 1 and key[-1] is None and nullable[tid]:
                    key.pop()  # the rowid comes only with a key that holds NULL
                out.setdefault(names[tid], {})[exact_text.pack(key)] = key
    return {name: list(keys.values()) for name, keys in out.items()}


def remove_target_capture(conn: apsw.Connection) -> int:
    """The end of the rollback window (`cdc finalize`, `cdc uninstall`): every object of
    ours leaves the target's tables (capture, fences, `_cdc_touched`). Returns the number
    of tables that were captured (0: there was nothing)."""
    tables = len(capture.installed_tables(conn))
    if not capture.is_installed(conn) and not key_columns(conn, TOUCHED):
        return 0
    capture.uninstall(conn)
    conn.execute(f"DROP TABLE IF EXISTS {TOUCHED}")
    return max(tables, 1)


def forget_touched(conn: apsw.Connection) -> None:
    """The stage was just proven equal (the end of a rollback): a new record starts."""
    if key_columns(conn, TOUCHED):
        conn.execute(f"DELETE FROM {TOUCHED}")


def open_for_bots(rec: CutoverRecord, conn: apsw.Connection) -> None:
    """The last step of a cutover, on its target connection: lift the target fences an
    earlier rollback left (the capture is in place since the preflight). Idempotent: a
    cutover killed here does it again."""
    names = sorted({t.target_table for t in rec.tables})
    _ensure_capture(conn, rec.path, names)  # a cheap check, unless the record predates it
    if fence.fenced_tables(conn):
        fence.unfence(conn, rec.path, names)
