"""Drains one legacy database's capture table into the change log.

Each harvest is one short read transaction, so it is a consistent cut of committed work:
the capture rows up to a sequence `hi` and, joined to them, the current image of every
row whose key they name. Several changes to one key collapse into one event carrying the
newest image (or a delete if the key is gone). Only after the batch is fsynced in the log
are the capture rows trimmed, in a separate short write transaction, at most every
`trim_interval` seconds: in rollback-journal mode every transaction we hold delays the bots.

The initial snapshot reads each table in key order, a chunk per short read transaction,
interleaved with stream harvests. It needs no fence: triggers were installed before it
started, and every event carries the image current when it was read, so log order is
never older-after-newer for any key.
"""

from __future__ import annotations

import logging
import time

import apsw
import msgspec

from cdc import capture
from cdc.changelog import LogWriter
from cdc.config import DaemonSettings
from cdc.errors import SourceError
from cdc.events import (
    Frame,
    Op,
    RowBatch,
    RowEvent,
    SnapshotCursor,
    SourceMark,
    SourcePosition,
)
from cdc.hooks import HOOK_OP
from cdc.inventory import TableInfo, schema_version, table_info
from cdc.plan import SourcePlan
from cdc.sqlconn import open_legacy, read_transaction, set_busy_timeout, write_transaction
from cdc.sqlident import q

log = logging.getLogger(__name__)

TRIM_OVERDUE = 30.0  # seconds a trim may be deferred before it waits its turn


class HarvestResult:
    """What one harvest moved. `full` means the batch limit was hit: harvest again at once
    (events alone cannot tell, since several changes to one key collapse into one event)."""

    __slots__ = ("events", "through_seq", "full")

    def __init__(self, events: int = 0, through_seq: int = 0, full: bool = False) -> None:
        self.events, self.through_seq, self.full = events, through_seq, full


class Harvester:
    def __init__(self, plan: SourcePlan, writer: LogWriter, settings: DaemonSettings) -> None:
        self.plan = plan
        self.writer = writer
        self.settings = settings
        self.conn: apsw.Connection | None = None
        self.tids: dict[int, str] = {}
        self.infos: dict[str, TableInfo] = {}
        self.position: SourcePosition | None = None
        self._schema_version = -1
        self._pending_schemas: list[Frame] = []
        self._last_count = 0
        # hook capture (cdc.hooks): capture rows the pool wrote, and rows the triggers wrote
        # for writers outside the pool (counted since the daemon started)
        self.hook_rows = 0
        self.foreign_rows = 0
        self._last_trim = 0.0
        self._trimmed_through = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> None:
        """Connect and reconcile the log's position with the installed capture."""
        self.conn = open_legacy(self.plan.path, self.settings.busy_timeout_ms)
        self.busy = set_busy_timeout(self.conn, self.settings.busy_timeout_ms)
        iid = capture.install_id(self.conn)
        if iid is None:
            raise SourceError(
                f"{self.plan.path}: capture is not installed for source {self.plan.name!r}",
                hint="run `cdc install`",
            )
        tables = capture.installed_tables(self.conn)
        wanted = [m.table for m in self.plan.tables]
        missing = [t for t in wanted if t not in tables]
        infos = [table_info(self.conn, t) for t in wanted]
        if missing or capture.lacks_probes(self.conn, infos, tables):
            # The rules already map them (a bot created them, or the rules grew), or an
            # older installation lacks REPLACE probes: (re)install, same installation id,
            # and snapshot new tables below.
            capture.install(self.conn, infos, self.plan.path, self.plan.needs_unique_probes())
            tables = capture.installed_tables(self.conn)
            if missing:
                log.info("source %s: started capturing %s", self.plan.name, ", ".join(missing))
        self.tids = {tid: name for name, tid in tables.items() if name in wanted}
        pos = self.writer.positions.get(self.plan.name)
        if pos is None:
            pos = SourcePosition(install_id=iid)
        elif pos.install_id != iid:
            raise SourceError(
                f"{self.plan.path}: capture was reinstalled since the change log was written "
                f"(log has install {pos.install_id[:8]}, database has {iid[:8]})",
                hint="changes made while capture was off are unknown: re-initialize this "
                "source's targets from a fresh snapshot",
            )
        top = self.conn.execute(f"SELECT coalesce(max(seq), 0) FROM {capture.CHANGES}").fetchone()[
            0
        ]
        if top < pos.through_seq:
            raise SourceError(
                f"{self.plan.path}: capture sequence is at {top} but {pos.through_seq} was "
                "already harvested: the file lost committed transactions (restored from a "
                "backup, or a power loss without synchronous=FULL)",
                hint="re-initialize this source's targets from a fresh snapshot",
            )
        cursors = {c.table: c for c in pos.snapshots}
        for t in wanted:
            cursors.setdefault(t, SnapshotCursor(t))
        self.position = SourcePosition(
            pos.install_id, pos.through_seq, [cursors[t] for t in sorted(cursors)], pos.events
        )
        self._trimmed_through = 0
        self._last_trim = time.monotonic()
        self._refresh_schemas(force=True)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- schema --------------------------------------------------------------------------
    def _refresh_schemas(self, force: bool = False) -> None:
        """Called inside a read transaction: queue a schema frame for every changed table."""
        version = schema_version(self.conn)
        if version == self._schema_version and not force:
            return
        for name in self.tids.values():
            info = table_info(self.conn, name)
            if not info.columns:
                raise SourceError(
                    f"{self.plan.path}: captured table {name!r} was dropped or renamed",
                    hint="map the new name (or exclude it) in cdc.toml and restart the daemon",
                )
            if force or self.infos.get(name) != info:
                if name in self.infos:
                    log.info(
                        "source %s: table %s changed shape",
                        self.plan.name,
                        name,
                        extra={"source": self.plan.name, "table": name},
                    )
                self.infos[name] = info
                self._pending_schemas.append(info.to_schema(self.plan.name))
        self._schema_version = version  # only once every table was found: a dropped or
        # renamed table keeps failing this source (shown in status) instead of going quiet

    # -- stream --------------------------------------------------------------------------
    def harvest(self) -> HarvestResult:
        """Move one batch of captured changes into the log. Returns what was moved."""
        pos = self.position
        conn = self.conn
        now = time.time()
        frames: list[RowBatch] = []
        with read_transaction(conn):
            self._refresh_schemas()
            hi, n = conn.execute(
                f"SELECT max(seq), count(*) FROM (SELECT seq FROM {capture.CHANGES} "
                "WHERE seq > ? ORDER BY seq LIMIT ?)",
                (pos.through_seq, self.settings.harvest_batch),
            ).fetchone()
            self._last_count = n
            if hi is not None:
                frames = self._read_changes(pos.through_seq, hi, now)
                if self.plan.capture == "hooks":
                    self._count_origins(pos.through_seq, hi)
        if hi is None and not self._pending_schemas:
            self._maybe_trim()
            return HarvestResult(through_seq=pos.through_seq)
        through = hi if hi is not None else pos.through_seq
        nevents = sum(len(b.events) for b in frames)
        self._log(
            frames, SourcePosition(pos.install_id, through, pos.snapshots, pos.events + nevents)
        )
        self._maybe_trim()
        full = self._last_count >= self.settings.harvest_batch
        return HarvestResult(nevents, through, full=full)

    def _count_origins(self, lo: int, hi: int) -> None:
        hooked, foreign = self.conn.execute(
            f"SELECT coalesce(sum(op >= {HOOK_OP}), 0), coalesce(sum(op < {HOOK_OP}), 0) "
            f"FROM {capture.CHANGES} WHERE seq > ? AND seq <= ?",
            (lo, hi),
        ).fetchone()
        self.hook_rows += hooked
        self.foreign_rows += foreign

    def _log(self, frames: list[Frame], new_pos: SourcePosition) -> None:
        """Append `frames` after any pending schema frames, with the mark of `new_pos`.
        The harvester's position moves only once the batch is durable."""
        schemas, self._pending_schemas = self._pending_schemas, []
        try:
            self.writer.append_batch(
                schemas + frames, SourceMark(self.plan.name, new_pos, time.time())
            )
        except BaseException:
            self._pending_schemas = schemas + self._pending_schemas
            raise
        self.position = new_pos

    def _read_changes(self, lo: int, hi: int, now: float) -> list[RowBatch]:
        tids = [
            r[0]
            for r in self.conn.execute(
                f"SELECT DISTINCT tid FROM {capture.CHANGES} WHERE seq > ? AND seq <= ?", (lo, hi)
            )
        ]
        out = []
        for tid in tids:
            name = self.tids.get(tid)
            if name is None:
                continue  # a table no longer mapped: its changes are dropped with the trim
            out.append(self._read_table(self.infos[name], tid, lo, hi, now))
        return out

    def _read_table(self, info: TableInfo, tid: int, lo: int, hi: int, now: float) -> RowBatch:
        return RowBatch(
            self.plan.name, info.name, now, capture.read_changes(self.conn, info, tid, lo, hi)
        )

    def _maybe_trim(self) -> None:
        """Delete harvested capture rows, without queueing behind busy bots.

        The trim is a write transaction on the bots' file: in rollback-journal mode it
        blocks them while it runs. It is tried with a short lock budget and deferred when
        bots are busy; only when it has been deferred for `TRIM_OVERDUE` seconds does it wait
        the full busy timeout, so the capture table cannot grow without bound.
        """
        through = self.position.through_seq
        if through <= self._trimmed_through:
            return
        now = time.monotonic()
        if now - self._last_trim < self.settings.trim_interval:
            return
        overdue = now - self._last_trim > TRIM_OVERDUE
        self.busy.timeout_ms = self.settings.busy_timeout_ms if overdue else 20
        try:
            with write_transaction(self.conn):
                # Keep the newest row so the INTEGER PRIMARY KEY never restarts numbering.
                self.conn.execute(
                    f"DELETE FROM {capture.CHANGES} WHERE seq <= ? AND seq < "
                    f"(SELECT max(seq) FROM {capture.CHANGES})",
                    (through,),
                )
        except apsw.BusyError:
            log.debug("source %s: trim deferred, database busy", self.plan.name)
            return
        finally:
            self.busy.timeout_ms = self.settings.busy_timeout_ms
        self._trimmed_through = through
        self._last_trim = time.monotonic()

    # -- snapshot ------------------------------------------------------------------------
    @property
    def snapshot_pending(self) -> bool:
        return any(not c.done for c in self.position.snapshots)

    def snapshot_state(self) -> str:
        snaps = self.position.snapshots
        done = sum(c.done for c in snaps)
        return "done" if done == len(snaps) else f"{done}/{len(snaps)} tables"

    def snapshot_chunk(self) -> int:
        """Copy the next chunk of the first unfinished table; returns rows copied."""
        pos = self.position
        idx = next((i for i, c in enumerate(pos.snapshots) if not c.done), None)
        if idx is None:
            return 0
        cur = pos.snapshots[idx]
        limit = self.settings.snapshot_chunk
        now = time.time()
        with read_transaction(self.conn):
            self._refresh_schemas()  # the chunk must be read with the shape it has now
            info = self.infos[cur.table]
            kexpr = [q(k) for k in info.key] or [info.rowid_alias()]
            width = len(kexpr)
            keys = ", ".join(kexpr)
            marks = ", ".join("?" * width)
            until = cur.until
            if until is None:
                top = self.conn.execute(
                    f"SELECT {keys} FROM {q(info.name)} ORDER BY {', '.join(k + ' DESC' for k in kexpr)} LIMIT 1"
                ).fetchone()
                until = list(top) if top else None
            rows = []
            if until is not None:
                conds, args = [f"({keys}) <= ({marks})"], list(until)
                if cur.after is not None:
                    conds.append(f"({keys}) > ({marks})")
                    args += list(cur.after)
                cols = ", ".join(q(c) for c in info.column_names)
                rows = self.conn.execute(
                    f"SELECT {keys}, {cols} FROM {q(info.name)} WHERE {' AND '.join(conds)} "
                    f"ORDER BY {keys} LIMIT {int(limit)}",
                    args,
                ).fetchall()
        src = self.plan.name
        batch = RowBatch(
            src,
            cur.table,
            now,
            [RowEvent(Op.UPSERT, 0, list(r[:width]), list(r[width:])) for r in rows],
        )
        frames = [batch] if rows else []
        after = list(rows[-1][:width]) if rows else cur.after
        snaps = list(pos.snapshots)
        done = until is None or len(rows) < limit or after == until
        snaps[idx] = SnapshotCursor(cur.table, done, after, until)
        self._log(
            frames, SourcePosition(pos.install_id, pos.through_seq, snaps, pos.events + len(rows))
        )
        if snaps[idx].done:
            log.info(
                "source %s: snapshot of %s complete",
                src,
                cur.table,
                extra={"source": src, "table": cur.table},
            )
        return len(rows)

    # -- repair --------------------------------------------------------------------------
    def resync(self, table: str, keys: list[list]) -> int:
        """Send the current legacy image of `keys` (or their deletion) through the log.

        Like a snapshot chunk: one read transaction, images as they are now. A change to
        one of these keys committed later has a newer capture row, so it is harvested
        after this batch and the target ends with the newest image either way.
        """
        if table not in self.infos:
            raise SourceError(f"{self.plan.path}: table {table!r} is not captured here")
        pos = self.position
        now = time.time()
        with read_transaction(self.conn):
            self._refresh_schemas()
            info = self.infos[table]
            kexpr = [q(k) for k in info.key] or [info.rowid_alias()]
            cols = ", ".join(q(c) for c in info.column_names)
            sql = f"SELECT {cols} FROM {q(info.name)} WHERE " + " AND ".join(
                f"{k} IS ?" for k in kexpr
            )
            events, seen = [], set()
            for key in keys:
                mark = msgspec.msgpack.encode(key)
                if len(key) != len(kexpr) or mark in seen:
                    continue
                seen.add(mark)
                row = self.conn.execute(sql, key).fetchone()
                events.append(
                    RowEvent(Op.UPSERT, 0, list(key), list(row))
                    if row is not None
                    else RowEvent(Op.DELETE, 0, list(key))
                )
        frames = [RowBatch(self.plan.name, table, now, events)] if events else []
        self._log(
            frames,
            SourcePosition(
                pos.install_id, pos.through_seq, pos.snapshots, pos.events + len(events)
            ),
        )
        log.info("source %s: re-sent %d rows of %s for repair", self.plan.name, len(events), table)
        return len(events)

    def pending(self) -> tuple[int, int]:
        """(captured sequence high-water, changes captured but not yet harvested)."""
        row = self.conn.execute(
            f"SELECT max(seq), (SELECT count(*) FROM {capture.CHANGES} WHERE seq > ?) "
            f"FROM {capture.CHANGES}",
            (self.position.through_seq,),
        ).fetchone()
        return row[0] or 0, row[1]
