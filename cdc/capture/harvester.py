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

Beside it: the trim (`trim`), the snapshot's and the repair's reads (`snapshot`) and the
look at the bots' schema (`schema_look`).
"""

from __future__ import annotations

import logging
import threading
import time

import apsw
import msgspec
import msgspec.structs

from cdc import shapes
from cdc.capture import changes
from cdc.capture import triggers as capture
from cdc.capture.hooks import HOOK_OP
from cdc.capture.schema_look import SchemaLook
from cdc.capture.snapshot import AUTO_ROWS, holds_more_than, read_chunk, read_keys, read_range
from cdc.capture.trim import CaptureTrim
from cdc.changelog import bigrows
from cdc.changelog.segments import LogWriter
from cdc.config import DaemonSettings
from cdc.errors import SourceError
from cdc.events import (
    CopyRange,
    Frame,
    Op,
    RowBatch,
    RowEvent,
    SnapshotCursor,
    SourceMark,
    SourcePosition,
    TableReset,
)
from cdc.faults import crash_point
from cdc.inventory import TableInfo, table_info
from cdc.planning.plan import SourcePlan
from cdc.sqlconn import open_legacy, read_transaction, set_busy_timeout

log = logging.getLogger(__name__)


class HarvestResult:
    """What one harvest moved. `full` means the batch limit was hit: harvest again at once
    (events alone cannot tell, since several changes to one key collapse into one event)."""

    __slots__ = ("events", "through_seq", "full")

    def __init__(self, events: int = 0, through_seq: int = 0, full: bool = False) -> None:
        self.events, self.through_seq, self.full = events, through_seq, full


class Harvester(SchemaLook):
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
        self._names: set[str] | None = None  # every table's name, lower case
        self.appeared: set[str] = set()  # tables created since; see `take_appeared`
        self._appeared_lock = threading.Lock()
        self.lost: dict[str, str] = {}  # captured tables gone: name -> what happened
        self._recapture: set[str] = set()  # captured tables whose triggers a DROP took
        # tables reset whose new copy (and stream) waits for `repair_capture`: their REPLACE
        # probes are stale, or a VACUUM renumbered them and the mark is not back yet
        self._hold: set[str] = set()
        self._vacuum_hold = False
        self._last_count = 0
        self._utf8: bool | None = None  # the file's text encoding is UTF-8 (`_by_reference`)
        self._big: dict[str, bool] = {}  # tables copied by reference under "auto"
        # hook capture (cdc.hooks): capture rows the pool wrote, and rows the triggers wrote
        # for writers outside the pool (counted since the daemon started)
        self.hook_rows = 0
        self.foreign_rows = 0
        self.trim = CaptureTrim(plan.name)
        self.last_error: str | None = None
        self.keep_out = None  # cut-over tables refused, never reset (`cdc.moved`; the daemon's)

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
        wanted = [m.table for m in self.plan.tables]
        cursors = {c.table: c for c in pos.snapshots}
        present = {t.name.lower() for t in self.plan.infos}
        for c in pos.snapshots:  # captured once, gone now: its target keeps its last rows
            if c.table.lower() not in present:
                self.lost[c.table] = "dropped or renamed since it was captured"
        self.position = SourcePosition(
            pos.install_id, pos.through_seq, [cursors[t] for t in sorted(cursors)], pos.events
        )
        tables = self._install(wanted, cursors)
        self.tids = {tid: name for name, tid in tables.items() if name in wanted}
        for t in wanted:
            cursors.setdefault(t, SnapshotCursor(t))
        pos = self.position
        self.position = SourcePosition(
            pos.install_id, pos.through_seq, [cursors[t] for t in sorted(cursors)], pos.events
        )
        self.trim.restart()
        self._refresh_schemas(force=True)

    def _install(self, wanted: list[str], cursors: dict[str, SnapshotCursor]) -> dict[str, int]:
        """Capture on every mapped table, as the daemon starts; returns name -> tid.

        The rules may map tables not captured yet (a bot created them, or the rules grew),
        a captured table may have lost its triggers (dropped and created again while we
        were away), or an older installation may lack REPLACE probes: (re)install, same
        installation id, and snapshot what needs it. A table that loses its triggers
        between our look and the install is looked at again (`CaptureMoved`)."""
        for _ in range(5):
            tables = capture.installed_tables(self.conn)
            lacking = [t for t in wanted if not capture.is_capturing(self.conn, [t])]
            infos = [table_info(self.conn, t) for t in wanted]
            moved = self._moved_while_away(infos, cursors)
            resets = lacking
            if self.keep_out is not None:  # a cut-over table is refused (cdc.moved), not reset
                resets, moved = self.keep_out.at_start(lacking, moved, wanted)
            if (
                not lacking
                and not moved
                and capture.has_vacuum_mark(self.conn)
                and not capture.lacks_probes(self.conn, infos, tables)
            ):
                return tables
            self._restart_snapshots(resets, cursors)
            self._restart_snapshots(list(moved), cursors, moved)
            try:
                capture.install(
                    self.conn,
                    infos,
                    self.plan.path,
                    self.plan.needs_unique_probes(),
                    expect_lacking=set(lacking),
                    mark_vacuum=True,
                )
            except capture.CaptureMoved:
                continue
            crash_point("install")
            if lacking:
                log.info("source %s: started capturing %s", self.plan.name, ", ".join(lacking))
            return capture.installed_tables(self.conn)
        raise SourceError(
            f"{self.plan.path}: captured tables keep being dropped and created again",
            hint="the daemon retries; find the writer that recreates them in a loop",
        )

    def _restart_snapshots(
        self,
        tables: list[str],
        cursors: dict[str, SnapshotCursor],
        reasons: dict[str, str] | None = None,
    ) -> None:
        """Before capture of `tables` is (re)installed: a table this log captured before
        gets a `TableReset` and a fresh snapshot cursor, made durable first. Its old rows
        went with a DROP that fired no trigger, and rows written since were not captured;
        the reset and the snapshot (read once the triggers are back) make the target
        exact again. Durable first, so a crash before the triggers are back is found again
        at the next start, not forgotten."""
        again = [t for t in tables if t in cursors]
        for t in tables:
            cursors[t] = SnapshotCursor(t)
            self._big.pop(t, None)  # looked at again, as it is now
        if not again:
            return
        pos = self.position
        why = reasons or {}
        resets = [
            TableReset(self.plan.name, t, why.get(t, "dropped and created again")) for t in again
        ]
        for r in resets:
            self._say_reset(r)
        self._log(
            resets,
            SourcePosition(
                pos.install_id, pos.through_seq, [cursors[t] for t in sorted(cursors)], pos.events
            ),
        )
        crash_point("install")

    def _say_reset(self, r: TableReset) -> None:
        log.warning(
            "source %s: table %s: %s: its target rows are reset and it is copied afresh",
            self.plan.name,
            r.table,
            r.reason,
            extra={"source": self.plan.name, "table": r.table},
        )

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- capture repair ----------------------------------------------------------------
    def repair_capture(self) -> None:
        """Put capture back on tables whose triggers a DROP took, after a reset (see
        `_restart_snapshots`), and take it off a renamed table (our triggers follow a
        rename; the new name is a table of its own, for the rules to decide). One short
        write transaction on the bots' file."""
        if self.keep_out is not None:
            self.keep_out.after_harvest(self)
        renamed = [n for n, why in self.lost.items() if why.startswith("renamed")]
        renamed = [n for n in renamed if n in self.infos]
        if not self._recapture and not renamed and not self._hold and not self._vacuum_hold:
            return
        if any(isinstance(f, TableReset) for f in self._pending_schemas):
            self._log([], self.position)  # held tables' resets are durable before their copy
        cursors = {c.table: c for c in self.position.snapshots}
        again = sorted(self._recapture)
        self._restart_snapshots(again, cursors)
        # Only these tables: another one dropped and created again since our look must
        # not get its triggers back here without its reset (the next look finds it).
        # Held tables get probes that match their unique indexes now, and the VACUUM mark
        # goes back in the same transaction: from its commit on, any new VACUUM shows.
        held = [t for t in sorted(self._hold) if t not in self._recapture and t not in self.lost]
        infos = [table_info(self.conn, t) for t in again + held]
        capture.install(
            self.conn,
            infos,
            self.plan.path,
            self.plan.needs_unique_probes(),
            prune=False,
            release=renamed,
            mark_vacuum=self._vacuum_hold,
        )
        self._hold.clear()
        self._vacuum_hold = False
        mapped = {m.table for m in self.plan.tables}
        self.tids = {
            tid: n for n, tid in capture.installed_tables(self.conn).items() if n in mapped
        }
        for n in renamed:
            self.infos.pop(n, None)
        self._recapture.clear()
        self._schema_version = -1  # read the shapes again, from the new tables

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
        through = hi if hi is not None else pos.through_seq
        nevents = sum(len(b.events) for b in frames)
        if hi is not None or self._pending_schemas:
            crash_point("harvest")
            self._log(
                frames,
                SourcePosition(pos.install_id, through, pos.snapshots, pos.events + nevents),
            )
        self.repair_capture()
        if self.keep_out is not None:
            self.keep_out.saved()  # tables given back: their resets are durable now
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
        if schemas:
            crash_point("schema")
        new_pos = self._with_shapes(new_pos, schemas + frames)
        try:
            bigrows.append_batch(  # `writer.append_batch`, streaming values too big for a row
                self.writer,
                self.plan.path,
                schemas + frames,
                SourceMark(self.plan.name, new_pos, time.time()),
                self.position,
            )
        except BaseException:
            self._pending_schemas = schemas + self._pending_schemas
            raise
        self.position = new_pos

    def _with_shapes(self, pos: SourcePosition, frames: list[Frame]) -> SourcePosition:
        """`pos` with a fresh cursor for each table reset in `frames` (its copy starts
        over in the same durable batch as its reset) and each cursor's `shape` set to the
        table's newest schema frame, for a restarted harvester to compare."""
        reset = {f.table for f in frames if isinstance(f, TableReset)}
        snaps = []
        for c in pos.snapshots:
            if c.table in reset:
                c = SnapshotCursor(c.table)
            info = self.infos.get(c.table)
            if info is not None:
                c = msgspec.structs.replace(c, shape=shapes.mark(info))
            snaps.append(c)
        return msgspec.structs.replace(pos, snapshots=snaps)

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
            if name is None or name in self.lost:
                continue  # not mapped, or gone: its changes are dropped with the trim
            if name in self._hold or (self.keep_out and self.keep_out.is_kept(name)):
                continue  # reset (its new copy has them), or cut over and kept out
            out.extend(self._read_table(self.infos[name], tid, lo, hi, now))
        return out

    def _read_table(
        self, info: TableInfo, tid: int, lo: int, hi: int, now: float
    ) -> list[RowBatch]:
        spool = self.writer.log_dir  # BLOBs too big for a row wait there (cdc.bigrows)
        return changes.change_batches(self.conn, self.plan.name, info, tid, lo, hi, now, spool)

    @property
    def trim_error(self) -> str | None:
        """Why harvested capture rows cannot be trimmed (`cdc.capture.trim`), or None."""
        return self.trim.error

    def _maybe_trim(self) -> None:
        """Trim what is harvested, when the trim's pace allows (`CaptureTrim`)."""
        self.trim.maybe_trim(self.conn, self.busy, self.position.through_seq, self.settings)

    # -- snapshot ------------------------------------------------------------------------
    def _copying(self, c: SnapshotCursor) -> bool:
        """A cursor still to copy, of a table that is here (a dropped one waits: should it
        be created again, it gets a fresh cursor after a reset)."""
        return (
            not c.done
            and c.table in self.infos
            and c.table not in self.lost
            and c.table not in self._hold
            and not (self.keep_out and self.keep_out.is_kept(c.table))
        )

    @property
    def snapshot_pending(self) -> bool:
        return bool(self._hold) or any(self._copying(c) for c in self.position.snapshots)

    def snapshot_state(self) -> str:
        snaps = [c for c in self.position.snapshots if c.table in self.infos]
        done = sum(c.done for c in snaps)
        return "done" if done == len(snaps) else f"{done}/{len(snaps)} tables"

    def snapshot_chunk(self) -> int:
        """Copy the next chunk of the first unfinished table; returns rows copied."""
        if self._hold:
            self.repair_capture()
        pos = self.position
        idx = next((i for i, c in enumerate(pos.snapshots) if self._copying(c)), None)
        if idx is None:
            return 0
        cur = pos.snapshots[idx]
        limit = self.settings.snapshot_chunk
        now = time.time()
        with read_transaction(self.conn):
            self._refresh_schemas()  # the chunk must be read with the shape it has now
            if not self._copying(cur):
                return 0  # dropped just now
            info = self.infos[cur.table]
            by_ref = self._by_reference(cur, info)
            copied = self._copy_range(info, cur, limit, now) if by_ref else None
            if copied is not None:
                frames, n, after, until = copied
            else:
                chunk = read_chunk(self.conn, info, cur, limit, self.writer.log_dir)
                rows, width, until = chunk.rows, chunk.width, chunk.until
                events = [RowEvent(Op.UPSERT, 0, list(r[:width]), list(r[width:])) for r in rows]
                frames = bigrows.batches(
                    self.plan.name, cur.table, now, events, chunk.streamed, info.column_names
                )
                n = len(rows)
                after = list(rows[-1][width - chunk.order : width]) if rows else cur.after
        src = self.plan.name
        snaps = list(pos.snapshots)
        done = until is None or n < limit or after == until
        if done and info.null_key and not cur.nulls:  # the rows a key range cannot reach
            snaps[idx] = SnapshotCursor(cur.table, shape=cur.shape, nulls=True)
        else:
            snaps[idx] = SnapshotCursor(cur.table, done, after, until, cur.shape, cur.nulls)
        crash_point("snapshot")
        self._log(frames, SourcePosition(pos.install_id, pos.through_seq, snaps, pos.events + n))
        if snaps[idx].done:
            log.info(
                "source %s: snapshot of %s complete",
                src,
                cur.table,
                extra={"source": src, "table": cur.table},
            )
        return n

    def _by_reference(self, cur: SnapshotCursor, info: TableInfo) -> bool:
        """Whether this chunk goes as a key range the apply side copies inside SQLite
        (`CopyRange`), not as rows through the log. Not the rows whose key holds a NULL
        (no range reaches them), nor a file whose text is not UTF-8 (SQLite attaches a
        file only to a connection of the same encoding), nor a table bound for a target
        that takes rows only (PostgreSQL). `"auto"`: only a table of more
        than `AUTO_ROWS` rows, looked at once per table (a walk of that many keys):
        a smaller one costs the log little and stays replayable by `cdc rebuild`."""
        mode = self.settings.snapshot_copy
        m = next((m for m in self.plan.tables if m.table == cur.table), None)
        if mode == "log" or cur.nulls or (m is not None and m.rows_only):
            return False
        if self._utf8 is None:
            (enc,) = self.conn.execute("PRAGMA encoding").fetchone()
            self._utf8 = enc == "UTF-8"
        if not self._utf8 or mode == "reference":
            return self._utf8
        big = self._big.get(cur.table)
        if big is None:
            big = self._big[cur.table] = holds_more_than(self.conn, info, AUTO_ROWS)
        return big

    def _copy_range(
        self, info: TableInfo, cur: SnapshotCursor, limit: int, now: float
    ) -> tuple[list, int, list | None, list | None] | None:
        """The next chunk as a `CopyRange` frame: (frames, rows, last key, upper bound);
        None: this chunk holds a BLOB to stream, read it through the log."""
        r = read_range(self.conn, info, cur, limit)
        if r.big:
            return None
        if r.last is None:
            return [], 0, cur.after, r.until
        frame = CopyRange(
            self.plan.name,
            info.name,
            now,
            r.kexpr,
            r.order,
            info.column_names,
            cur.after,
            r.last,
            shapes.mark(info),
            r.rows,
        )
        return [frame], r.rows, r.last, r.until

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
            events = read_keys(self.conn, self.infos[table], keys)
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
