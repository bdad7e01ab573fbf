"""Fences: from the instant a stage is cut over, a bot's write to its legacy tables fails.

A fence is three BEFORE triggers per table that `RAISE(ROLLBACK, ...)` with a message
naming the table's new home, so a bot that was not switched gets an error it can log and
an operator can act on, instead of writing into a file nobody reads any more (split
brain). ROLLBACK, not ABORT: the bot's whole transaction goes, so none of it lands
half-done if the bot ignores the error and commits, and a bot that does not roll back its
failed transaction cannot keep holding the file's write lock (in rollback-journal mode
that blocked every other bot of the file for their whole busy timeout: found by the
cutover test, whose bots do exactly that).
The triggers spare connections that registered a virtual-table module named
`cdc_fence_pass` (never used for a table): only sqlite-cdc's own connections do (the way
back during the rollback window, and replication into a rolled-back target). SQLite gives
a trigger no other way to tell connections apart. The module list, not the function list:
`pragma_function_list` has ~200 rows to scan for every row written and made a fenced
write cost 104 us instead of 3.5 (measured with 20,000-row executemany; the module list
has ~11 rows). Both are SQL from 3.30, and a bot connection with `trusted_schema=OFF` is
refused too ("unsafe use of virtual table"), only with a less helpful message.

Fencing a source is one write transaction that also reads the newest capture sequence:
every change the bots committed to those tables has a sequence at most that, so the
cutover knows exactly how far the targets must get (`FenceMark`).

The triggers refuse only while their table's `tid` is a row of `_cdc_fenced`, so that a
cutover can create them ahead (`stand`) and fence by inserting rows: no schema change at
the fence instant, which would make every prepared statement of every connection to the
file compile again (the cutover's proof: 25-35 ms more of the corpus's analytics pause,
bench/README.md). An arming row cannot be deleted while its fence's triggers exist, nor
updated (`_cdc_fenced_del`, `_cdc_fenced_upd`): lifting a fence drops its triggers first.
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

import apsw
import msgspec

from cdc.capture import triggers as capture
from cdc.errors import FENCE_PREFIX, SourceError
from cdc.own_objects import FENCE_TABLES
from cdc.sqlconn import NOT_OURS, allow_writes, write_transaction
from cdc.sqlident import lit, q


class FenceMark(msgspec.Struct, frozen=True):
    """What fencing one source recorded: its tables and the capture sequence then."""

    source: str
    path: str
    tables: list[str]
    fence_seq: int
    fenced_at: float
    # AUTOINCREMENT counters of the fenced tables, read in the fencing transaction: final,
    # since no bot can write them after it (read here, they cost the pause nothing more)
    sequences: dict[str, int] = {}
    # The file's schema cookie just before and just after the fence's triggers, read in
    # the fencing transaction: the proof under the fence, built before it, is still the
    # file's exactly when the cookie went from the one it was built at to `schema_after`
    # and stayed there (`cdc.cutover.fence_proof`). -1: not known (an older mark).
    schema_before: int = -1
    schema_after: int = -1


# Decoders are built once, at import: msgspec 0.22 can crash when several threads make
# their first typed decode of one Struct at the same moment (found by the cutover bench).
_MARK = msgspec.json.Decoder(FenceMark)


def trigger_names(tid: int) -> list[str]:
    return [f"_cdc_fence{tid}_{s}" for s in ("ins", "upd", "del")]


LEGACY_NOTE = "this legacy copy is read-only now"
PREFIX = FENCE_PREFIX  # what every fence message starts with (a bot matches on it)
_NAME = re.compile(r"_cdc_fence(\d+)_(?:ins|upd|del)")
_RAISE = re.compile(r"RAISE\(ROLLBACK, '((?:[^']|'')*)'\)")


class Fence(NamedTuple):
    tid: int
    table: str
    message: str
    armed_by_row: bool = False  # refuses only while `tid` is in `_cdc_fenced` (`stand`)


def fences_in(conn: apsw.Connection, schema: str = "main", armed: bool = True) -> list[Fence]:
    """The fences of one schema, read from their triggers: a connection with triggers off
    (hook capture, `cdc.hooks`) checks its writes against them itself. The triggers, not
    the fence mark: they are what refuses every other writer, and they carry the message.
    `armed` False: also those that refuse only once armed (`Fence.armed_by_row`), which
    a caller that keeps them across writes checks with `armed_tids` each time."""
    rows = conn.execute(
        f"SELECT name, tbl_name, sql FROM {q(schema)}.sqlite_master "
        "WHERE type = 'trigger' AND name LIKE '\\_cdc\\_fence%' ESCAPE '\\'"
    )
    out: dict[int, Fence] = {}
    for name, table, sql in rows:
        m, r = _NAME.fullmatch(name), _RAISE.search(sql or "")
        if m and r:
            tid = int(m.group(1))
            out[tid] = Fence(tid, table, r.group(1).replace("''", "'"), ARMED in sql)
    if armed and any(f.armed_by_row for f in out.values()):
        on = armed_tids(conn, schema)
        return [f for f in out.values() if not f.armed_by_row or f.tid in on]
    return list(out.values())


def fence_message(
    table: str, path: str, where: str, note: str = LEGACY_NOTE, stage: str | None = None
) -> str:
    """Starts with `sqlite-cdc:` so a bot can tell it from a constraint of its own: every
    RAISE reaches the bot as SQLITE_CONSTRAINT (IntegrityError in Python's sqlite3)."""
    by = f" by the cutover of stage {stage}" if stage else ""
    return f"{PREFIX} table {table} of {path} moved to {where}{by}; {note}"


ARMED = FENCE_TABLES[0]  # the tids whose fences refuse (`stand`, `fence`)


def fence_sql(tid: int, table: str, message: str) -> list[str]:
    """The fence's three triggers, as SQLite keeps their text in the schema."""
    when = f"EXISTS (SELECT 1 FROM {ARMED} WHERE tid = {int(tid)}) AND {NOT_OURS}"
    body = f"BEGIN SELECT RAISE(ROLLBACK, {lit(message)}); END"
    return [
        f"CREATE TRIGGER {name} BEFORE {op} ON {q(table)} WHEN {when} {body}"
        for name, op in zip(trigger_names(tid), ("INSERT", "UPDATE", "DELETE"), strict=True)
    ]


def _armed_sql() -> list[str]:
    guard = f"{PREFIX} a fence is lifted by `cdc cutover --abort` or a rollback, not by a write"
    lifted = (
        "NOT EXISTS (SELECT 1 FROM sqlite_master WHERE name = '_cdc_fence' || old.tid || '_ins')"
    )
    return [
        f"CREATE TABLE IF NOT EXISTS {ARMED}(tid INTEGER PRIMARY KEY)",
        f"CREATE TRIGGER IF NOT EXISTS _cdc_fenced_del BEFORE DELETE ON {ARMED} "
        f"WHEN NOT {lifted} BEGIN SELECT RAISE(ABORT, {lit(guard)}); END",
        f"CREATE TRIGGER IF NOT EXISTS _cdc_fenced_upd BEFORE UPDATE ON {ARMED} "
        f"BEGIN SELECT RAISE(ABORT, {lit(guard)}); END",
    ]


def _stand_in(
    conn: apsw.Connection, tids: dict[str, int], moved: dict[str, str], path: str, note: str, stage
) -> None:  # noqa: ANN001
    """Create what is missing (or different) of the fences of `moved`, unarmed; inside the
    caller's write transaction. Nothing, when they stand already: no schema change."""
    have = dict(
        conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_cdc\\_fence%' ESCAPE '\\'"
        ).fetchall()
    )
    if (
        ARMED
        not in {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        or "_cdc_fenced_upd" not in have
    ):
        for sql in _armed_sql():
            conn.execute(sql)
    for table, where in sorted(moved.items()):
        message = fence_message(table, path, where, note, stage)
        for name, sql in zip(
            trigger_names(tids[table]), fence_sql(tids[table], table, message), strict=True
        ):
            if have.get(name) == sql:
                continue
            if name in have:  # an older fence's text (another message, or unarmed form)
                conn.execute(f"DROP TRIGGER {name}")
            conn.execute(sql)


def _installed(conn: apsw.Connection, path: str, moved: dict[str, str]) -> dict[str, int]:
    tids = capture.installed_tables(conn)
    missing = [t for t in moved if t not in tids]
    if missing:
        raise SourceError(
            f"{path}: cannot fence {', '.join(missing)}: capture is not installed",
            hint="run `cdc install` first",
        )
    return tids


def stand(
    conn: apsw.Connection,
    path: str,
    moved: dict[str, str],
    note: str = LEGACY_NOTE,
    *,
    stage: str | None = None,
) -> None:
    """Create the fences of `moved` ahead, unarmed (a bot's write passes them), in one
    write transaction: `fence` with the same arguments then only arms them."""
    try:
        with write_transaction(conn):
            _stand_in(conn, _installed(conn, path, moved), moved, path, note, stage)
    except apsw.BusyError as e:
        raise SourceError(
            f"{path}: stayed locked while fencing: {e}",
            hint="a bot held the write lock longer than the busy timeout; run the cutover again",
        ) from e


def armed_tids(conn: apsw.Connection, schema: str = "main") -> set[int]:
    """The tids whose fences refuse now, in `schema` (none: no fence was ever armed)."""
    try:
        return {r[0] for r in conn.execute(f"SELECT tid FROM {q(schema)}.{ARMED}")}
    except apsw.SQLError:  # no such table
        return set()


__all__ = [
    "FenceMark",
    "allow_writes",
    "fence",
    "fence_message",
    "fence_sql",
    "stand",
    "armed_tids",
    "fences_in",
    "fenced_tables",
    "trigger_names",
    "unfence",
]


def fence(
    conn: apsw.Connection,
    source: str,
    path: str,
    moved: dict[str, str],
    note: str = LEGACY_NOTE,
    *,
    stage: str | None = None,
) -> FenceMark:
    """Fence `moved` (table -> where it lives now) in one transaction. Idempotent: a second
    call (a resumed cutover) keeps the first call's sequence and time. A rollback fences a
    target's tables the same way (`note` then says why). The message names the stage whose
    cutover moved the table, so a stale bot's log says what to switch it to."""
    key = "fence"
    try:
        with write_transaction(conn):
            before = _cookie(conn)
            tids = _installed(conn, path, moved)
            _stand_in(conn, tids, moved, path, note, stage)  # nothing when `stand` did it
            conn.executemany(
                f"INSERT OR IGNORE INTO {ARMED}(tid) VALUES (?)", [(tids[t],) for t in moved]
            )
            row = conn.execute(f"SELECT v FROM {capture.META} WHERE k=?", (key,)).fetchone()
            old = _MARK.decode(row[0]) if row else None
            seq = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {capture.CHANGES}").fetchone()[0]
            tables = sorted(set(moved) | set(old.tables if old else []))
            keep = old is not None and set(moved) <= set(old.tables)
            mark = FenceMark(
                source,
                path,
                tables,
                old.fence_seq if keep else seq,
                old.fenced_at if keep else time.time(),
                old.sequences if keep else _sequences(conn, tables),
                before,
                _cookie(conn),
            )
            conn.execute(
                f"INSERT OR REPLACE INTO {capture.META}(k, v) VALUES (?, ?)",
                (key, msgspec.json.encode(mark).decode()),
            )
            return mark
    except apsw.BusyError as e:
        raise SourceError(
            f"{path}: stayed locked while fencing: {e}",
            hint="a bot held the write lock longer than the busy timeout; run the cutover again",
        ) from e


def _cookie(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA schema_version").fetchone()[0]


def _sequences(conn: apsw.Connection, tables: list[str]) -> dict[str, int]:
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'").fetchone():
        return {}
    marks = ", ".join("?" * len(tables))
    return dict(
        conn.execute(f"SELECT name, seq FROM sqlite_sequence WHERE name IN ({marks})", tables)
    )


def fenced_tables(conn: apsw.Connection) -> list[str]:
    """The tables this file's fence mark lists (none: not fenced)."""
    if not capture.is_installed(conn):
        return []
    row = conn.execute(f"SELECT v FROM {capture.META} WHERE k='fence'").fetchone()
    return _MARK.decode(row[0]).tables if row else []


def unfence(conn: apsw.Connection, path: str, tables: list[str] | None = None) -> list[str]:
    """Lift the fence from `tables` (all: None); returns the tables unfenced."""
    with write_transaction(conn):
        tids = capture.installed_tables(conn)
        row = conn.execute(f"SELECT v FROM {capture.META} WHERE k='fence'").fetchone()
        mark = _MARK.decode(row[0]) if row else None
        fenced = mark.tables if mark else []
        lift = [t for t in fenced if tables is None or t in tables]
        for t in sorted(set(lift) | set(tables or [])):  # and fences stood, never armed
            if t in tids:
                for name in trigger_names(tids[t]):
                    conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        if armed_tids(conn):  # after the triggers: `_cdc_fenced_del` refuses before
            conn.executemany(
                f"DELETE FROM {ARMED} WHERE tid = ?", [(tids[t],) for t in lift if t in tids]
            )
        rest = [t for t in fenced if t not in lift]
        if rest:
            conn.execute(
                f"UPDATE {capture.META} SET v=? WHERE k='fence'",
                (msgspec.json.encode(msgspec.structs.replace(mark, tables=rest)).decode(),),
            )
        else:
            conn.execute(f"DELETE FROM {capture.META} WHERE k='fence'")
        return lift
