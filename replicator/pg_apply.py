"""The change log applied into a PostgreSQL target, exactly once (issue 19, docs/postgres.md).

The rule is the SQLite targets' (`replicator.apply`): a batch of log frames and the
checkpoint that moves past them commit in one PostgreSQL transaction, so a crash, a
killed process, a dropped connection or a server restart anywhere leaves the target
either before the batch or after all of it; the next run starts from the checkpoint it
reads back from the target itself, and nothing is applied twice.

What it writes, by frame:
- `TableSchema`: the target table made or followed (`replicator.pg_schema`), its shape
  recorded in `_cdc_pg_shapes` (a restart mid-log finds the shapes there, past their
  frames).
- `RowBatch`: each upsert as `INSERT ... ON CONFLICT (key) DO UPDATE`, after deleting the
  rows that hold one of the new row's UNIQUE values under another key (what SQLite's
  REPLACE does in a SQLite target); each delete by its key. Every value goes through
  `cdc.postgres.types`: one that type cannot carry exactly stops the apply by name, never
  converted (`cdc check` should have refused it: the legacy file changed since).
- `TableReset`: the table's rows of that source are deleted; its fresh copy follows.
- `SourceMark`: the source's position applied through (`_cdc_source_applied`, what
  `cdc status` reads; `checkpoints.pg_store`). A copy by reference and streamed values are
  refused by name: set `daemon.snapshot_copy = "log"`; a value over the streaming size
  cannot go yet.
"""

from __future__ import annotations

import hashlib
import time

import msgspec

from cdc.changelog.segments import LogEntry
from cdc.errors import TargetBusyError, TargetError
from cdc.events import (
    CopyRange,
    Op,
    RowBatch,
    RowEvent,
    SourceMark,
    StreamedRowBatch,
    TableReset,
    TableSchema,
    ValueChunk,
)
from cdc.planning.plan import Plan, TableMapping
from cdc.postgres import way_back
from cdc.postgres.dsn import redacted
from cdc.postgres.types import misfit, to_pg
from cdc.sqlident import q
from checkpoints.pg_store import CONSUMER
from checkpoints.pg_store import SETUP as _SETUP
from checkpoints.store import Checkpoint
from replicator.pg_schema import PgShape, follow_schema

COPY_ABOVE = 64  # upserts of a batch past which COPY beats one statement each


class PgTarget:
    """One PostgreSQL target: its connection, checkpoint and shapes."""

    def __init__(self, name: str, dsn: str) -> None:
        self.name, self.dsn = name, dsn
        self.where = f"{name} ({redacted(dsn)})"
        self.conn = None
        self.shapes: dict[tuple[str, str], PgShape] = {}
        self.staged: set[str] = set()  # this session's staging tables (`_staging`)
        self._connect()

    def _connect(self) -> None:
        import psycopg  # only where a PostgreSQL target is used: the pool stays light

        try:
            self.conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=10)
            with self.conn.transaction():
                way_back.mark_ours(self.conn)  # our writes pass a rollback's fences
                way_back.make_schema(self.conn)
                for sql in _SETUP:
                    self.conn.execute(sql)
                self.conn.execute(
                    "INSERT INTO _cdc_checkpoint VALUES (%s, 0, 0, NULL) ON CONFLICT DO NOTHING",
                    (CONSUMER,),
                )
                rows = self.conn.execute("SELECT source, tbl, shape FROM _cdc_pg_shapes")
                self.shapes = {(s, t): msgspec.msgpack.decode(b, type=PgShape) for s, t, b in rows}
        except psycopg.OperationalError as e:
            self.close()
            raise TargetBusyError(f"{self.where}: cannot connect: {e}") from e

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def load(self) -> Checkpoint:
        if self.conn is None:
            self._connect()
        with self.conn.transaction():
            off, n = self.conn.execute(
                "SELECT log_offset, events FROM _cdc_checkpoint WHERE consumer = %s", (CONSUMER,)
            ).fetchone()
        return Checkpoint(CONSUMER, offset=off, events=n)

    def apply(self, plan: Plan, entries: list[LogEntry], old: Checkpoint) -> Checkpoint:
        """Apply `entries` (starting at `old.offset`) and the checkpoint past them, in one
        transaction. A lost connection or a restarting server is a `TargetBusyError`:
        nothing was committed, and the next call reconnects and reads the checkpoint."""
        import psycopg

        if not entries:
            return old
        if entries[0].offset != old.offset:
            raise TargetError(
                f"{self.where}: batch starts at {entries[0].offset}, checkpoint is {old.offset}"
            )
        if self.conn is None or self.conn.closed:
            self._connect()
            now = self.load()
            if now.offset != old.offset:  # it committed before the connection was lost
                return now
        shapes = dict(self.shapes)
        staged = set(self.staged)  # a rolled-back transaction takes its new ones along
        try:
            with self.conn.transaction():
                applied = sum(_frame(self, plan, e.frame, shapes) for e in entries)
                moved = self.conn.execute(
                    "UPDATE _cdc_checkpoint SET log_offset = %s, events = events + %s, "
                    "updated_at = %s WHERE consumer = %s AND log_offset = %s",
                    (entries[-1].next_offset, applied, time.time(), CONSUMER, old.offset),
                ).rowcount
                if moved != 1:  # another applier got there first: roll all of it back
                    raise TargetError(
                        f"{self.where}: the checkpoint moved from {old.offset} under this "
                        "batch (another applier?); nothing of it was written"
                    )
        except psycopg.OperationalError as e:
            self.close()
            self.staged = set()
            raise TargetBusyError(
                f"{self.where}: connection lost while applying at offset {old.offset}: {e}",
                hint="replication resumes from the target's own checkpoint",
            ) from e
        except psycopg.Error as e:
            self.staged = staged
            raise TargetError(f"{self.where}: apply failed at offset {old.offset}: {e}") from e
        except BaseException:
            self.staged = staged
            raise
        self.shapes = shapes
        return Checkpoint(CONSUMER, offset=entries[-1].next_offset, events=old.events + applied)


def _frame(t: PgTarget, plan: Plan, f: object, shapes: dict) -> int:
    if isinstance(f, SourceMark):  # the position `cdc status` reads, in the same commit
        p = f.position
        t.conn.execute(
            "INSERT INTO _cdc_source_applied VALUES (%s, %s, %s, %s, %s) ON CONFLICT (source) "
            "DO UPDATE SET install_id = EXCLUDED.install_id, through_seq = EXCLUDED.through_seq, "
            "events = EXCLUDED.events, updated_at = EXCLUDED.updated_at",
            (f.source, p.install_id, p.through_seq, p.events, time.time()),
        )
        done = [(f.source, c.table) for c in p.snapshots if c.done]
        if done:
            with t.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO _cdc_snapshots VALUES (%s, %s) ON CONFLICT DO NOTHING", done
                )
        return 0
    source, table = getattr(f, "source", None), getattr(f, "table", None)
    m = plan.mapping(source, table) if source is not None and table is not None else None
    if m is None or m.target != t.name:
        return 0
    if isinstance(f, TableSchema):
        shapes[(m.source, m.table)] = follow_schema(t, plan, m, f, shapes.get((m.source, m.table)))
        return 0
    if isinstance(f, RowBatch) and not isinstance(f, StreamedRowBatch):
        return _rows(t, m, f, shapes)
    if isinstance(f, TableReset):  # its fresh copy follows: not whole until that is done
        t.conn.execute(
            "DELETE FROM _cdc_snapshots WHERE source = %s AND tbl = %s", (m.source, m.table)
        )
        shape = shapes.get((m.source, m.table))
        if shape is not None:
            where, args = _tag(shape)
            t.conn.execute(f"DELETE FROM {q(shape.target_table)}{where}", args)
        return 0
    if isinstance(f, CopyRange | ValueChunk | StreamedRowBatch):
        what = "a copy by reference" if isinstance(f, CopyRange) else "a streamed value"
        raise TargetError(
            f"{t.where}: {m.source}.{m.table}: {what} cannot be applied into PostgreSQL yet",
            hint='set daemon.snapshot_copy = "log"; values over the streaming size cannot go',
        )
    return 0


def _tag(shape: PgShape) -> tuple[str, tuple]:
    if shape.tag_column is None:
        return "", ()
    return f" WHERE {q(shape.tag_column)} = %s", (shape.tag,)


def _rows(t: PgTarget, m: TableMapping, b: RowBatch, shapes: dict) -> int:
    shape = shapes.get((m.source, m.table))
    if shape is None:
        raise TargetError(f"{t.where}: rows of {m.source}.{m.table} before its schema")
    ups = [e for e in b.events if e.op is not Op.DELETE]
    dels = [e for e in b.events if e.op is Op.DELETE]
    tag = [shape.tag] if shape.tag_column else []
    key_conds = " AND ".join(f"{q(k)} = %s" for k in shape.key)
    if dels:
        with t.conn.cursor() as cur:
            cur.executemany(
                f"DELETE FROM {q(shape.target_table)} WHERE {key_conds}",
                [tag + _values(t, m, shape, e, key_only=True) for e in dels],
            )
    if ups:
        rows = [tag + _values(t, m, shape, e) for e in ups]
        if len(rows) > COPY_ABOVE:
            _upsert_copied(t, shape, rows)
        else:
            _upsert_each(t, shape, rows)
    return len(b.events)


def _upsert_cols(shape: PgShape) -> list[str]:
    return ([shape.tag_column] if shape.tag_column else []) + _columns(shape)


def _upsert_sql(shape: PgShape, rows_from: str) -> str:
    """`INSERT ... <rows_from> ON CONFLICT (key) DO UPDATE` (or DO NOTHING: key only)."""
    cols = [q(c) for c in _upsert_cols(shape)]
    keys = {q(k) for k in shape.key}
    rest = [c for c in cols if c not in keys]
    action = "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in rest) if rest else (
        "DO NOTHING"
    )  # fmt: skip
    return (
        f"INSERT INTO {q(shape.target_table)} ({', '.join(cols)}) {rows_from} "
        f"ON CONFLICT ({', '.join(q(k) for k in shape.key)}) {action}"
    )


def _upsert_each(t: PgTarget, shape: PgShape, rows: list[list]) -> None:
    """A few rows: one pipelined statement each (no temporary table to set up)."""
    cols = _upsert_cols(shape)
    own = [k for k in shape.key if k != shape.tag_column]
    for u in shape.uniques:  # what a REPLACE deletes in a SQLite target
        pos = [cols.index(c) for c in u]
        keypos = [cols.index(k) for k in own]
        conds = " AND ".join(f"{q(c)} = %s" for c in u)
        other = " OR ".join(f"{q(k)} <> %s" for k in own)
        with t.conn.cursor() as cur:
            cur.executemany(
                f"DELETE FROM {q(shape.target_table)} WHERE {conds} AND ({other})",
                [[r[i] for i in pos] + [r[i] for i in keypos] for r in rows],
            )
    values = f"VALUES ({', '.join(['%s'] * len(cols))})"
    with t.conn.cursor() as cur:
        cur.executemany(_upsert_sql(shape, values), rows)


def _upsert_copied(t: PgTarget, shape: PgShape, rows: list[list]) -> None:
    """Many rows: COPY into a temporary table of the target's shape, then one set-based
    REPLACE-like delete per UNIQUE and one INSERT ... SELECT (a batch holds each key once,
    so one statement may upsert them all). Measured: bench/README.md, PostgreSQL apply."""
    cols = [q(c) for c in _upsert_cols(shape)]
    stage = _staging(t, shape, cols)
    with t.conn.cursor() as cur, cur.copy(f"COPY {stage} ({', '.join(cols)}) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)
    own = [q(k) for k in shape.key if k != shape.tag_column]
    for u in shape.uniques:
        same = " AND ".join(f"t.{q(c)} = n.{q(c)}" for c in u)
        other = " OR ".join(f"t.{k} <> n.{k}" for k in own)
        t.conn.execute(
            f"DELETE FROM {q(shape.target_table)} AS t USING {stage} AS n "
            f"WHERE {same} AND ({other})"
        )
    t.conn.execute(_upsert_sql(shape, f"SELECT {', '.join(cols)} FROM {stage}"))
    t.conn.execute(f"DELETE FROM {stage}")


def _staging(t: PgTarget, shape: PgShape, cols: list[str]) -> str:
    """The session's temporary table for one target table's rows, kept for the session
    and emptied after each use: creating and dropping one per batch was most of a stream's
    apply time (bench/README.md). Named by the table and its columns, so a new shape gets
    its own; one made in a transaction that rolled back is gone with it, and made again."""
    name = (
        "_cdc_rows_"
        + hashlib.sha1("\x00".join([shape.target_table, *cols]).encode()).hexdigest()[:16]
    )
    if name not in t.staged:
        t.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} (LIKE {q(shape.target_table)})")
        t.staged.add(name)
    return name


def _columns(shape: PgShape) -> list[str]:
    """The columns an upsert binds after the tag: the rowid of a keyless table, the row."""
    return ([shape.key[-1]] if shape.keyless else []) + shape.columns


def _values(
    t: PgTarget, m: TableMapping, shape: PgShape, e: RowEvent, key_only: bool = False
) -> list:
    """The event's values as psycopg binds them, each checked against its column's type;
    the key's only for a delete (a keyless table's key is its rowid)."""
    if key_only and shape.keyless:
        return [e.key[-1]]
    if key_only:
        own = shape.key[1:] if shape.tag_column else shape.key
        types = [shape.types[shape.columns.index(k)] for k in own]
        return [_fit(t, m, k, v, ty, e) for k, v, ty in zip(own, e.key, types, strict=True)]
    row = [
        _fit(t, m, c, v, ty, e)
        for c, v, ty in zip(shape.columns, e.row or [], shape.types, strict=True)
    ]
    return ([e.key[-1]] if shape.keyless else []) + row


# Values that fit as they are, by type: the common case skips `misfit`'s questions (a
# float read from SQLite is never NaN: SQLite stores NaN as NULL). A str may hold NUL.
_AS_IS = {"bigint": (int,), "double precision": (float,), "bytea": (bytes,), "numeric": (int,)}


def _fit(t: PgTarget, m: TableMapping, column: str, v: object, ty: str, e: RowEvent) -> object:
    if v is None or (type(v) in _AS_IS.get(ty, ()) and type(v) is not bool):
        return v if ty != "numeric" else to_pg(v, ty)
    if ty == "text" and type(v) is str and "\x00" not in v:
        return v
    why = misfit(v, ty)
    if why is not None:
        raise TargetError(
            f"{t.where}: {m.source}.{m.table}.{column} (key {e.key!r}): {why}: PostgreSQL "
            "cannot carry it exactly; nothing of this batch was written",
            hint="`cdc check` names every such value: fix those rows or change the plan",
        )
    return to_pg(v, ty)
