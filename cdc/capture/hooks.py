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

Triggers off means fences off too (`cdc.fence`), and a fence must hold for every writer:
before a change's capture rows are written, its table is checked against the fences of
the file (read from their triggers, again whenever the schema changed), and a fenced
write is refused as the trigger would refuse it: the whole transaction rolls back, with
the fence's own message (`FencedWrite`). The hook cannot refuse by itself (an exception
raised in it does not stop the statement), so the check runs right after the statement,
always before anything commits. Writes to another schema (an attached file) fire none of
that file's triggers either: refused when the table has any.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apsw

from cdc.capture import fence
from cdc.capture import triggers as capture
from cdc.errors import FENCED_HINT, CdcError, FencedWrite
from cdc.inventory import table_info
from cdc.sqlident import q

log = logging.getLogger(__name__)

HOOK_OP = 10  # hook rows: OP_INSERT + 10 ... (the harvester counts trigger rows apart)
# Run as they are: transaction control, what SQLite refuses inside a transaction, reads.
_DIRECT = (
    *("BEGIN", "ROLLBACK", "SAVEPOINT", "PRAGMA", "VACUUM", "SELECT", "VALUES", "EXPLAIN"),
    *("ATTACH", "DETACH"),  # refused inside a transaction (the savepoint)
)
_DDL = ("CREATE", "ALTER", "DROP")


class _Table:
    __slots__ = ("tid", "positions", "width", "null_key")

    def __init__(
        self, tid: int, positions: list[int] | None, width: int, null_key: bool = False
    ) -> None:
        self.tid = tid
        self.positions = positions  # key column positions; None: the key is the rowid
        self.width = width
        self.null_key = null_key  # `TableInfo.null_key`


_INSERT, _DELETE, _UPDATE = apsw.SQLITE_INSERT, apsw.SQLITE_DELETE, apsw.SQLITE_UPDATE
_OPS = {  # (trigger-equivalent op of the old key, of the new key) + HOOK_OP
    _INSERT: (None, capture.OP_INSERT + HOOK_OP),
    _DELETE: (capture.OP_OLD_KEY + HOOK_OP, None),
    _UPDATE: (capture.OP_OLD_KEY + HOOK_OP, capture.OP_UPDATE + HOOK_OP),
}


class HookCapture:
    """One pool connection's capture. Not shared between threads (a pool connection is
    lent to one borrower at a time).

    The hook runs for every row a statement changes, so it does as little as it can: for
    a table whose key is the rowid (no declared key, or an INTEGER PRIMARY KEY) it keeps
    the rowids only; for others the key values; for a table it does not know yet, the
    whole change, resolved once the statement is over."""

    def __init__(self, raw: apsw.Connection, source: str) -> None:
        self.source = source
        self.pending: list[tuple] = []  # (tid, width, old op, old key, new op, new key) | raw
        self.unknown: list[tuple] = []  # (table, opcode, old, new, rowid, rowid_new)
        self.tables: dict[str, _Table] = {}
        self.elsewhere: set[tuple[str, str]] = set()  # (schema, table) written outside main
        self.fences: dict[int, fence.Fence] = {}  # by tid, armed or not (`_refuse_fenced`)
        self.changes = 0  # capture rows written, for the pool's metrics
        self._stale = True
        self._version = -1
        self._fence_version = -1
        raw.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        raw.preupdate_hook(self._on_change, id="sqlite-cdc")
        raw.set_commit_hook(self._on_commit)
        raw.set_rollback_hook(self._on_rollback)
        self._load(raw)

    # -- inside SQLite: only buffer -----------------------------------------------------------
    def _on_change(self, pu: apsw.PreUpdate) -> None:
        name = pu.table_name
        if pu.database_name != "main":
            self.elsewhere.add((pu.database_name, name))  # checked by `flush`
            return
        if name == capture.CHANGES:
            return  # our own capture rows
        op = pu.opcode
        t = self.tables.get(name)
        if t is None:
            self.unknown.append(
                (
                    name,
                    op,
                    pu.old if op != _INSERT else None,
                    pu.new if op != _DELETE else None,
                    pu.rowid,
                    pu.rowid_new if op == _UPDATE else pu.rowid,
                )
            )
            return
        if t.positions is None:
            old = (pu.rowid,) if op != _INSERT else None
            new = ((pu.rowid_new,) if op == _UPDATE else (pu.rowid,)) if op != _DELETE else None
        else:
            pos = t.positions
            old = tuple(pu.old[i] for i in pos) if op != _INSERT else None
            new = tuple(pu.new[i] for i in pos) if op != _DELETE else None
            if t.null_key:  # as `capture.key_exprs`: the rowid, when the key holds NULL
                if old is not None:
                    old = (*old, pu.rowid if None in old else None)
                if new is not None:
                    rowid = pu.rowid_new if op == _UPDATE else pu.rowid
                    new = (*new, rowid if None in new else None)
        self.pending.append((t.tid, t.width, op, old, new))

    def _on_commit(self) -> bool:
        """Refuse (roll back) a commit that would leave changes uncaptured: they were made
        through the apsw connection itself (`conn.raw`), around the pool's statements."""
        if self.pending or self.unknown or self.elsewhere:
            log.error(
                "%s: a write bypassed the pool's capture (%d changes); the transaction is "
                "rolled back. Write through the PooledConnection's execute/executemany.",
                self.source,
                len(self.pending) + len(self.unknown) + len(self.elsewhere),
            )
            self.discard()
            return True
        return False

    def _on_rollback(self) -> None:
        self.discard()

    # -- around each statement --------------------------------------------------------------
    def execute(self, raw: apsw.Connection, sql: str, bindings: Any = None) -> Iterator[Any]:
        return self._call(raw, sql, bindings, many=False)

    def executemany(self, raw: apsw.Connection, sql: str, seq: Iterable[Any]) -> Iterator[Any]:
        return self._call(raw, sql, seq, many=True)

    def _call(self, raw: apsw.Connection, sql: str, arg: Any, many: bool) -> Iterator[Any]:
        kind = _kinds.get(sql)
        if kind is None:
            if len(_kinds) > 4096:  # SQL with values formatted in: do not grow forever
                _kinds.clear()
            kind = _kinds[sql] = _kind(sql)
        method: Callable = raw.executemany if many else raw.execute
        if kind is _DIRECT_KIND:
            return iter(list(method(sql, arg)))
        if kind is _ENDS:
            self.flush(raw)
            return iter(list(method(sql, arg)))
        if kind is _SINGLE:
            return iter(self._statement(raw, sql, arg, many))
        return iter(self._whole(raw, sql, method, arg, kind))

    def _statement(self, raw: apsw.Connection, sql: str, arg: Any, many: bool) -> list:
        """One statement (one per row for executemany), leaving what SQLite leaves: when a
        row fails, the rows before it stay (executemany, OR FAIL), and a bot that catches
        the error and commits commits them, so their capture rows stay with them. Outside
        a transaction a savepoint gives the rows and their capture one transaction."""
        outer = not raw.in_transaction
        if outer:
            raw.execute("SAVEPOINT _cdc_stmt")
        try:
            rows = self._run(raw, sql, arg, many)
        except BaseException:
            self._settle(raw, outer)
            raise
        self._settle(raw, outer)
        return rows

    def _run(self, raw: apsw.Connection, sql: str, arg: Any, many: bool) -> list:
        rows: list = []
        for bindings in arg if many else (arg,):
            mark = len(self.pending), len(self.unknown)
            try:
                rows.extend(raw.execute(sql, bindings))
            except BaseException:
                # SQLite kept this statement's rows (OR FAIL) exactly when it counted them;
                # otherwise it undid them, and their buffered keys go too.
                if raw.in_transaction and raw.changes() == 0:
                    del self.pending[mark[0] :], self.unknown[mark[1] :]
                raise
        return rows

    def _settle(self, raw: apsw.Connection, outer: bool) -> None:
        if not raw.in_transaction:  # SQLite rolled the whole transaction back
            self.discard()
            return
        self.flush(raw)  # on failure it has rolled the whole transaction back
        if outer:
            raw.execute("RELEASE _cdc_stmt")  # commits

    def _whole(self, raw: apsw.Connection, sql: str, method: Callable, arg: Any, kind: str) -> list:
        """Several statements (or DDL) in one call: in a savepoint of their own, undone
        together if one fails, so no statement's changes stay without their capture."""
        raw.execute("SAVEPOINT _cdc_stmt")
        try:
            rows = list(method(sql, arg))
            if kind is _DDL_KIND:
                self._stale = True
            self.flush(raw)
        except BaseException:
            self.discard()
            if raw.in_transaction:  # not after a refusal, which rolled back everything
                raw.execute("ROLLBACK TO _cdc_stmt")
                raw.execute("RELEASE _cdc_stmt")
            raise
        raw.execute("RELEASE _cdc_stmt")  # commits, when the call began outside a transaction
        return rows

    def flush(self, raw: apsw.Connection) -> None:
        """Refuse what a trigger would have refused, then write the buffered keys into the
        capture table (inside the open transaction). If anything fails, the whole
        transaction rolls back, as a fence's RAISE(ROLLBACK) does: no change may stay
        without its capture row, and none may pass a fence."""
        if not (self.pending or self.unknown or self.elsewhere or self._stale):
            return
        try:
            if self.elsewhere:
                self._check_elsewhere(raw)
            version = _schema_version(raw)
            if self.unknown or self._stale:
                self._resolve(raw, version)
            if version != self._fence_version:
                self.fences = {f.tid: f for f in fence.fences_in(raw, armed=False)}
                self._fence_version = version
            if self.fences:
                self._refuse_fenced(raw)
            self._write(raw)
        except BaseException:
            self.discard()
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise

    def _refuse_fenced(self, raw: apsw.Connection) -> None:
        """A fence armed by a row (`fence.stand`) is armed without a schema change: which
        ones are is read at each write that meets one."""
        hit = [self.fences[p[0]] for p in self.pending if p[0] in self.fences]
        if not hit:
            return
        armed = fence.armed_tids(raw) if any(f.armed_by_row for f in hit) else set()
        for f in hit:
            if not f.armed_by_row or f.tid in armed:
                raise FencedWrite(f.message, hint=FENCED_HINT)

    def _check_elsewhere(self, raw: apsw.Connection) -> None:
        """A write to another schema (an attached file, temp) fired none of that table's
        triggers: refused when it has any (capture, a fence, the file's own); a table
        without triggers loses nothing."""
        written, self.elsewhere = self.elsewhere, set()
        for schema, table in sorted(written):
            for f in fence.fences_in(raw, schema):
                if f.table.lower() == table.lower():
                    raise FencedWrite(f.message, hint=FENCED_HINT)
            names = [
                n
                for (n,) in raw.execute(
                    f"SELECT name FROM {q(schema)}.sqlite_master WHERE type = 'trigger' "
                    "AND tbl_name = ? COLLATE NOCASE ORDER BY name",
                    (table,),
                )
            ]
            if names:
                (path,) = raw.execute(
                    "SELECT file FROM pragma_database_list WHERE name = ?", (schema,)
                ).fetchone()
                raise CdcError(
                    f"{path or schema}: table {table} (schema {schema}) has triggers "
                    f"({', '.join(names)}) that a pool connection with hook capture does not "
                    f"fire; the write was refused",
                    hint="write that file through a connection of its own "
                    "(pool.connection with its source name)",
                )

    def _write(self, raw: apsw.Connection) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if len(pending) == 1:  # the common case: a single-row write
            for r in _rows(pending[0]):
                raw.execute(_insert_sql(len(r) - 2), r)
            p = pending[0]
            self.changes += 1 + (p[2] == _UPDATE and not _same(p[3], p[4]))
            return
        by_width: dict[int, list[tuple]] = {}
        for p in pending:
            for r in _rows(p):
                by_width.setdefault(len(r) - 2, []).append(r)
        for width, batch in by_width.items():
            raw.executemany(_insert_sql(width), batch)
            self.changes += len(batch)

    def _resolve(self, raw: apsw.Connection, version: int) -> None:
        """Changes to tables the hook did not know: after DDL through the pool, or a table
        captured by a `cdc install` since this connection opened. Ones still not captured
        are dropped, as the triggers would not record them either."""
        unknown, self.unknown = self.unknown, []
        if self._stale or (unknown and self._version != version):
            self._load(raw)
        for name, op, old, new, rowid, rowid_new in unknown:
            t = self.tables.get(name)
            if t is None:
                continue
            ko = _key(t, old, rowid) if op != _INSERT else None
            kn = _key(t, new, rowid_new) if op != _DELETE else None
            self.pending.append((t.tid, t.width, op, ko, kn))

    def discard(self) -> None:
        self.pending.clear()
        self.unknown.clear()
        self.elsewhere.clear()

    def _load(self, raw: apsw.Connection) -> None:
        """Which tables are captured and where their keys are: read again when a table
        we do not know changes (a new `cdc install`), or after DDL through the pool."""
        self.tables = {}
        self._version = _schema_version(raw)
        for name, tid in capture.installed_tables(raw).items():
            info = table_info(raw, name)
            cols = {
                c[0]: c[1]
                for c in raw.execute("SELECT name, cid FROM pragma_table_xinfo(?)", (name,))
            }
            positions = [cols[k] for k in info.key] if info.key else None
            if positions and not info.without_rowid and _rowid_alias(raw, name):
                positions = None  # INTEGER PRIMARY KEY: the key is the rowid itself
            entry = _Table(tid, positions, capture.key_width(info), info.null_key)
            self.tables[name] = entry
            self.tables.setdefault(name.lower(), entry)
        self._stale = False


def _rowid_alias(raw: apsw.Connection, name: str) -> bool:
    """A declared key that is the rowid (INTEGER PRIMARY KEY) has no index of its own; any
    other key (including the INTEGER PRIMARY KEY DESC quirk) has one."""
    return not raw.execute(
        "SELECT 1 FROM pragma_index_list(?) WHERE origin = 'pk'", (name,)
    ).fetchone()


def _schema_version(raw: apsw.Connection) -> int:
    return raw.execute("PRAGMA schema_version").fetchone()[0]


@functools.cache
def _insert_sql(width: int) -> str:
    kcols = ", ".join(f"k{i + 1}" for i in range(width))
    return (
        f"INSERT INTO {capture.CHANGES}(tid, op, {kcols}) VALUES (?, ?, {', '.join('?' * width)})"
    )


def _same(a: tuple, b: tuple) -> bool:
    """The same key, as the triggers' `capture.differs` tells: 1 and 1.0 are not."""
    return len(a) == len(b) and all(
        type(x) is type(y) and x == y for x, y in zip(a, b, strict=True)
    )


def _rows(p: tuple) -> list[tuple]:
    """Capture rows of one change, as the triggers write them: an UPDATE that changes the
    key records the old key first."""
    tid, _w, op, old, new = p
    o, n = _OPS[op]
    if op == _UPDATE:
        return [(tid, n, *new)] if _same(old, new) else [(tid, o, *old), (tid, n, *new)]
    return [(tid, n, *new)] if op == _INSERT else [(tid, o, *old)]


_DIRECT_KIND, _ENDS, _SINGLE, _MULTI, _DDL_KIND = "direct", "ends", "single", "multi", "ddl"
_kinds: dict[str, str] = {}  # SQL text -> how to run it (bots reuse a few strings)


def _kind(sql: str) -> str:
    first = sql.lstrip().split(None, 1)[0].upper().rstrip(";") if sql.strip() else ""
    if first in ("COMMIT", "END", "RELEASE"):
        return _ENDS
    if first in _DIRECT:
        return _DIRECT_KIND
    if first in _DDL:
        return _DDL_KIND
    return _SINGLE if ";" not in sql.rstrip().rstrip(";") else _MULTI


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
