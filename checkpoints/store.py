"""The replicator's checkpoint, stored in the target database itself.

Exactly-once rests on one rule: the checkpoint row is updated in the same transaction as
the rows it covers. Either both survive a crash or neither does, so after a restart the
replicator resumes at exactly the first unapplied frame. The update is compare-and-set on
the previous offset: a second replicator racing on the same target (two daemons, a
restored backup) fails loudly instead of applying a batch twice.
"""

from __future__ import annotations

import os
import time

import apsw
import msgspec

from cdc.errors import TargetError
from cdc.postgres.dsn import is_postgres
from cdc.sqlconn import write_transaction
from checkpoints.pg_store import pg_target_state

TABLE = "_cdc_checkpoint"
SOURCES = "_cdc_source_applied"
SNAPSHOTS = "_cdc_snapshot_done"


class Checkpoint(msgspec.Struct, frozen=True):
    """Where a consumer resumes in the change log: the offset of its next frame."""

    consumer: str
    offset: int = 0
    events: int = 0
    updated_at: float = 0.0


class SourceApplied(msgspec.Struct, frozen=True):
    """The newest harvest batch of a source fully applied to this target."""

    source: str
    install_id: str
    through_seq: int
    events: int
    applied_at: float


class CheckpointStore:
    def __init__(self, conn: apsw.Connection, consumer: str, path: str = "") -> None:
        self.conn = conn
        self.consumer = consumer
        self.path = path
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE}(consumer TEXT PRIMARY KEY, "
            "log_offset INTEGER NOT NULL, events INTEGER NOT NULL, updated_at REAL NOT NULL)"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SOURCES}(consumer TEXT NOT NULL, source TEXT NOT NULL, "
            "install_id TEXT NOT NULL, through_seq INTEGER NOT NULL, events INTEGER NOT NULL, "
            "applied_at REAL NOT NULL, PRIMARY KEY(consumer, source))"
        )
        # A table's initial copy is complete here once the mark saying so is applied; the
        # verifier must not compare a half-copied table (its rows are not "missing").
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SNAPSHOTS}(consumer TEXT NOT NULL, "
            "source TEXT NOT NULL, tbl TEXT NOT NULL, PRIMARY KEY(consumer, source, tbl))"
        )

    def load(self) -> Checkpoint:
        row = self.conn.execute(
            f"SELECT log_offset, events, updated_at FROM {TABLE} WHERE consumer=?",
            (self.consumer,),
        ).fetchone()
        if row is None:
            return Checkpoint(self.consumer)
        return Checkpoint(self.consumer, row[0], row[1], row[2])

    def advance(self, old: Checkpoint, offset: int, events: int) -> Checkpoint:
        """Move the checkpoint; must run inside the transaction that applied the rows."""
        new = Checkpoint(self.consumer, offset, old.events + events, time.time())
        if old.updated_at == 0.0 and old.offset == 0:
            self.conn.execute(
                f"INSERT OR IGNORE INTO {TABLE} VALUES (?, 0, 0, 0)", (self.consumer,)
            )
        self.conn.execute(
            f"UPDATE {TABLE} SET log_offset=?, events=?, updated_at=? "
            "WHERE consumer=? AND log_offset=?",
            (new.offset, new.events, new.updated_at, self.consumer, old.offset),
        )
        if self.conn.changes() != 1:
            raise TargetError(
                f"{self.path}: checkpoint of {self.consumer!r} moved under us "
                f"(expected offset {old.offset})",
                hint="another replicator is writing this target; stop it",
            )
        return new

    def make_durable(self) -> None:
        """Force every commit so far onto disk before anyone relies on it surviving power loss.

        Targets commit with synchronous=NORMAL (a WAL commit is not fsynced). One commit
        under synchronous=FULL fsyncs the WAL and with it every earlier commit; rewriting
        the checkpoint row in place makes sure that commit writes a page.
        """
        self.conn.execute("PRAGMA synchronous=FULL")
        try:
            with write_transaction(self.conn):
                self.conn.execute(f"UPDATE {TABLE} SET updated_at = updated_at")
        finally:
            self.conn.execute("PRAGMA synchronous=NORMAL")

    def record_source(self, applied: SourceApplied) -> None:
        self.conn.execute(
            f"INSERT OR REPLACE INTO {SOURCES} VALUES (?, ?, ?, ?, ?, ?)",
            (
                self.consumer,
                applied.source,
                applied.install_id,
                applied.through_seq,
                applied.events,
                applied.applied_at,
            ),
        )

    def record_snapshots_done(self, source: str, tables: list[str]) -> list[str]:
        """Remember finished initial copies; call inside the apply transaction. Returns
        the tables recorded for the first time (an FTS index is rebuilt then).

        Every applied mark repeats its finished tables (a few dozen INSERT OR IGNOREs per
        batch): cheaper to keep than a cache that must forget rolled-back batches."""
        fresh = []
        for t in tables:
            self.conn.execute(
                f"INSERT OR IGNORE INTO {SNAPSHOTS} VALUES (?, ?, ?)", (self.consumer, source, t)
            )
            if self.conn.changes():
                fresh.append(t)
        return fresh

    def forget_snapshot(self, source: str, table: str) -> None:
        """The table is copied again (a reset): its copy is not done until a mark says so;
        call inside the apply transaction."""
        self.conn.execute(
            f"DELETE FROM {SNAPSHOTS} WHERE consumer=? AND source=? AND tbl=?",
            (self.consumer, source, table),
        )

    def sources(self) -> dict[str, SourceApplied]:
        return {
            r[0]: SourceApplied(*r)
            for r in self.conn.execute(
                f"SELECT source, install_id, through_seq, events, applied_at FROM {SOURCES} "
                "WHERE consumer=?",
                (self.consumer,),
            )
        }


def target_state(path: str) -> tuple[int, int, float | None, dict[str, int]]:
    """(applied log offset, events, when, through_seq per source) of a target, read
    without writing (0s when it has none yet): what `cdc status` and a cutover read."""
    if is_postgres(path):
        return pg_target_state(path)
    if not os.path.exists(path):
        return 0, 0, None, {}
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(2000)
        has = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name IN (?,?)", (TABLE, SOURCES)
        ).fetchone()[0]
        if has < 2:
            return 0, 0, None, {}
        row = conn.execute(
            f"SELECT log_offset, events, updated_at FROM {TABLE} WHERE consumer='replicator'"
        ).fetchone()
        seqs = dict(
            conn.execute(
                f"SELECT source, through_seq FROM {SOURCES} WHERE consumer='replicator'"
            ).fetchall()
        )
        return (row[0], row[1], row[2], seqs) if row else (0, 0, None, seqs)
    finally:
        conn.close()


def read_checkpoint(path: str) -> int:
    """A target's applied log offset (0 when it has none yet)."""
    return target_state(path)[0]
