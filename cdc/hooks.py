"""In-process capture for writers that use `cdc.pool`: APSW's preupdate hook instead of triggers.

A source configured `capture = "hooks"` is installed like any other (capture tables and
triggers), but a pool connection turns triggers off for itself
(`SQLITE_DBCONFIG_ENABLE_TRIGGER`) and records the keys it changes from the preupdate hook.
Writers outside the pool still fire the triggers, so a forgotten cron job or an old bot is
captured the ordinary way and counted as a foreign writer in `cdc status`: never a gap.
The plan refuses hook capture for a file with triggers of its own, which a pool connection
would silently skip.

Why the rows go through the database: SQLite forbids touching the connection from inside
the hook, and a change must be durable before the writer's COMMIT returns. So the hook only
buffers; once the statement has run to its end (`PooledConnection` runs every statement
through `run`), the buffered keys are inserted into the same capture table the triggers
write, *in the writer's own transaction*. They commit with the rows, roll back with them
(savepoints included), and a crash at any instant keeps both or neither: the harvester
cannot tell them apart from trigger rows, except by their op codes (hook ops are the
trigger ops + `HOOK_OP`).

The capture rows are the triggers' own: an UPDATE that changes the key records the old
key first, then the new one, as the triggers do. A row a REPLACE deletes through a UNIQUE
is seen directly (the hook fires for it), where the triggers need probes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import apsw

from cdc import capture
from cdc.inventory import table_info

log = logging.getLogger(__name__)

HOOK_OP = 10  # hook rows: OP_INSERT + 10 ... (the harvester counts trigger rows apart)
# Run as they are: transaction control, and what SQLite refuses inside a transaction.
_DIRECT = ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA", "VACUUM")
_DDL = ("CREATE", "ALTER", "DROP")


class _Table:
    __slots__ = ("tid", "positions", "width")

    def __init__(self, tid: int, positions: list[int] | None, width: int) -> None:
        self.tid = tid
        self.positions = positions  # key column positions; None: the key is the rowid
        self.width = width


class HookCapture:
    """One pool connection's capture. Not shared between threads (a pool connection is
    lent to one borrower at a time)."""

    def __init__(self, raw: apsw.Connection, source: str) -> None:
        self.source = source
        self.pending: list[tuple] = []  # (table, opcode, old, new, rowid, rowid_new)
        self.tables: dict[str, _Table] = {}
        self.changes = 0  # capture rows written, for the pool's metrics
        self._stale = True
        raw.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        raw.preupdate_hook(self._on_change, id="sqlite-cdc")
        raw.set_commit_hook(self._on_commit)
        raw.set_rollback_hook(self._on_rollback)

    # -- inside SQLite: only buffer -----------------------------------------------------------
    def _on_change(self, pu: apsw.PreUpdate) -> None:
        if pu.database_name != "main":
            return
        op = pu.opcode
        self.pending.append(
            (
                pu.table_name,
                op,
                pu.old if op != apsw.SQLITE_INSERT else None,
                pu.new if op != apsw.SQLITE_DELETE else None,
                pu.rowid,
                pu.rowid_new if op == apsw.SQLITE_UPDATE else pu.rowid,
            )
        )

    def _on_commit(self) -> bool:
        """Refuse (roll back) a commit that would leave changes uncaptured: they were made
        through the apsw connection itself (`conn.raw`), around the pool's statements."""
        if self.pending:
            log.error(
                "%s: a write bypassed the pool's capture (%d changes); the transaction is "
                "rolled back. Write through the PooledConnection's execute/executemany.",
                self.source,
                len(self.pending),
            )
            self.pending.clear()
            return True
        return False

    def _on_rollback(self) -> None:
        self.pending.clear()

    # -- around each statement --------------------------------------------------------------
    def run(self, raw: apsw.Connection, sql: str, fn: Callable[[apsw.Connection], Iterable[Any]]):
        """Run one call (`fn`, executing `sql`) to its end and write its capture rows in
        its transaction. The call runs inside its own savepoint: if it fails, all of it is
        undone, so no change can stay without its capture row (a failing statement of a
        multi-statement string would otherwise leave the earlier ones behind, uncaptured)."""
        first = sql.lstrip().split(None, 1)[0].upper().rstrip(";") if sql.strip() else ""
        if first in _DIRECT:
            if first in ("COMMIT", "END", "RELEASE"):
                self.flush(raw)
            return iter(list(fn(raw)))
        raw.execute("SAVEPOINT _cdc_stmt")
        try:
            rows = list(fn(raw))
            if first in _DDL:
                self._stale = True
            self.flush(raw)
        except BaseException:
            self.pending.clear()
            raw.execute("ROLLBACK TO _cdc_stmt")
            raw.execute("RELEASE _cdc_stmt")
            raise
        raw.execute("RELEASE _cdc_stmt")  # commits, when the call began outside a transaction
        return iter(rows)

    def flush(self, raw: apsw.Connection) -> None:
        """Write the buffered keys into the capture table (inside the open transaction)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if self._stale or any(p[0] not in self.tables for p in pending):
            self._load(raw)
        rows: dict[int, list[tuple]] = {}
        for table, op, old, new, rowid, rowid_new in pending:
            t = self.tables.get(table) or self.tables.get(table.lower())
            if t is None:
                continue  # not captured (or ours): the triggers would not record it either
            add = rows.setdefault(t.width, []).append
            if op == apsw.SQLITE_INSERT:
                add((t.tid, capture.OP_INSERT + HOOK_OP, *_key(t, new, rowid_new)))
            elif op == apsw.SQLITE_DELETE:
                add((t.tid, capture.OP_OLD_KEY + HOOK_OP, *_key(t, old, rowid)))
            else:
                ko, kn = _key(t, old, rowid), _key(t, new, rowid_new)
                if ko != kn:
                    add((t.tid, capture.OP_OLD_KEY + HOOK_OP, *ko))
                add((t.tid, capture.OP_UPDATE + HOOK_OP, *kn))
        self.pending.clear()  # our own INSERTs below fire the hook too
        for width, batch in rows.items():
            kcols = ", ".join(f"k{i + 1}" for i in range(width))
            raw.executemany(
                f"INSERT INTO {capture.CHANGES}(tid, op, {kcols}) "
                f"VALUES (?, ?, {', '.join('?' * width)})",
                batch,
            )
            self.changes += len(batch)
        self.pending.clear()

    def discard(self) -> None:
        self.pending.clear()

    def _load(self, raw: apsw.Connection) -> None:
        """Which tables are captured and where their keys are: read again when a table
        we do not know changes (a new `cdc install`), or after DDL through the pool."""
        self.tables = {}
        for name, tid in capture.installed_tables(raw).items():
            info = table_info(raw, name)
            cols = {
                c[0]: c[1]
                for c in raw.execute("SELECT name, cid FROM pragma_table_xinfo(?)", (name,))
            }
            positions = [cols[k] for k in info.key] if info.key else None
            entry = _Table(tid, positions, capture.key_width(info))
            self.tables[name] = entry
            self.tables.setdefault(name.lower(), entry)
        self._stale = False


def _key(t: _Table, values: tuple | None, rowid: int) -> tuple:
    if t.positions is None:
        return (rowid,)
    assert values is not None
    return tuple(values[i] for i in t.positions)


def capture_for(cfg, source: str):  # noqa: ANN001, ANN201 - cdc.config.Config
    """The pool's capture factory for a database: a HookCapture per connection for a
    source configured `capture = "hooks"`, nothing for anything else."""
    if cfg.capture_of(source) != "hooks":
        return None
    return lambda raw: HookCapture(raw, source)
