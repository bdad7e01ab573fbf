"""`cdc rebuild`: a target as it was right after a log offset, in a new file.

The rows are not reconstructed by code of our own: a fresh database is filled by the
replicator itself (`TargetDB` + `apply_batch`, batch by batch from checkpoint 0, exactly as
`replicator.Replicator` drives them) with the retained log up to the offset. So the tables
are created, widened and filled as the target's were, and the result holds the rows and
storage classes the target had once its checkpoint reached that offset. The replicator's
own bookkeeping (`_cdc_checkpoint`... tables, by exact name: cdc.own_objects) is dropped at
the end, so the file looks like the target did to a bot.

It needs the log from offset 0: a fresh checkpoint starts there, and a rebuild from the
middle would lack every row written before. With `[log] retention = "delete"` that is
only true until the first segment is deleted.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime

import apsw
import msgspec

from cdc.config import Config
from cdc.errors import ConfigError, TargetError
from cdc.events import CopyRange, RowBatch, SegmentStart, SourceMark
from cdc.fsutil import fsync_dir
from cdc.history.rows import RETENTION_HINT, HistoryIncomplete, RetainedLog, incomplete_note
from cdc.own_objects import is_own_table
from cdc.planning.plan import Plan
from cdc.sqlident import q
from cdc.stages.finalized import NothingCovered, covered, with_finalized
from replicator import TargetDB, apply_batch


class AsOf(msgspec.Struct, frozen=True):
    """A point of history: a log offset, or a time (Unix seconds) meaning "after the last
    frame observed at or before it". Exactly one is set."""

    offset: int | None = None
    time: float | None = None


def parse_as_of(text: str) -> AsOf:
    """`12345` is an offset; `@1717236000.5` Unix seconds; anything else an ISO time
    (UTC unless it carries an offset, like every time sqlite-cdc prints)."""
    s = text.strip()
    if s.isdigit():
        return AsOf(offset=int(s))
    try:
        if s.startswith("@"):
            return AsOf(time=float(s[1:]))
        t = datetime.fromisoformat(s)
    except ValueError:
        raise ConfigError(
            f"--as-of {text!r}: give a log offset (12345), an ISO time "
            "(2024-06-01T12:00:00Z) or Unix seconds (@1717243200)"
        ) from None
    return AsOf(time=(t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp())


class RebuiltTable(msgspec.Struct, frozen=True):
    name: str
    rows: int


class RebuildResult(msgspec.Struct, frozen=True):
    """What `rebuild` wrote. `offset` is the frame boundary actually reached: the last one
    at or before the offset asked for, or after the last frame observed by the time."""

    target: str
    out: str
    as_of: AsOf
    offset: int
    frames: int
    events: int
    newest_observed_at: float  # the harvest time of the newest row applied (0: none)
    tables: list[RebuiltTable]
    dropped: list[str]  # sqlite-cdc's bookkeeping tables, removed from the copy
    seconds: float


def rebuild(cfg: Config, plan: Plan, target: str, as_of: AsOf, out: str) -> RebuildResult:
    """Write `target` as it was right after `as_of` into the new file `out`.

    Refuses to overwrite anything, and to start when the log no longer reaches back to
    offset 0. The file appears under its name only when complete (written under a
    temporary name, then linked)."""
    t0 = time.monotonic()
    plan = with_finalized(cfg, plan)  # a finalized stage's tables are rebuilt too
    if target not in plan.targets:
        raise ConfigError(f"no target {target!r} (known: {', '.join(sorted(plan.targets))})")
    covered(plan, target)
    out = os.path.abspath(out)
    if os.path.lexists(out):
        raise ConfigError(f"{out} exists: rebuild writes a new file only", hint="remove it first")
    log = RetainedLog.of(cfg)
    start, end = log.start(), log.end()
    stop = _resolve(log, as_of, start, end)
    if start > 0:
        raise HistoryIncomplete(
            f"cannot rebuild {target}: {incomplete_note(cfg, start)}; a rebuild replays the "
            "log from offset 0",
            hint=RETENTION_HINT if cfg.log.retention != "archive" else None,
        )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.rebuild-{os.getpid()}.tmp"
    try:
        offset, frames, events, newest = _replay(cfg, plan, target, log, tmp, stop)
        dropped, tables = _clean(tmp)
        if not tables:
            raise NothingCovered(
                f"{target} as of offset {offset} holds no table yet (the log creates its "
                "tables later); nothing written"
            )
        _publish(tmp, out)
    finally:
        for p in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
    return RebuildResult(
        target,
        out,
        as_of,
        offset,
        frames,
        events,
        newest,
        tables,
        dropped,
        round(time.monotonic() - t0, 3),
    )


def _resolve(log: RetainedLog, as_of: AsOf, start: int, end: int) -> int:
    """The offset to stop at: frames ending at or before it are applied."""
    if as_of.offset is not None:
        if as_of.offset > end:
            raise ConfigError(f"offset {as_of.offset} is past the end of the change log ({end})")
        if as_of.offset < start:
            raise ConfigError(
                f"offset {as_of.offset} is before the retained log (it starts at {start})",
                hint=RETENTION_HINT,
            )
        return as_of.offset
    assert as_of.time is not None
    stop = None
    first = None
    for batch in log.batches(start, end):
        for e in batch:
            t = _frame_time(e.frame)
            if t:
                first = t if first is None else first
                if t <= as_of.time:
                    stop = e.next_offset
    if stop is None:
        when = datetime.fromtimestamp(as_of.time, UTC).isoformat()
        since = f" (the oldest is from {datetime.fromtimestamp(first, UTC).isoformat()})"
        raise ConfigError(
            f"no frame of the retained log was observed at or before {when}"
            + (since if first else "")
        )
    return stop


def _frame_time(f: object) -> float:
    if isinstance(f, RowBatch | CopyRange):
        return f.observed_at
    if isinstance(f, SourceMark):
        return f.written_at
    if isinstance(f, SegmentStart):
        return f.created_at
    return 0.0  # a schema frame: part of the batch whose rows follow it


def _replay(
    cfg: Config, plan: Plan, target: str, log: RetainedLog, path: str, stop: int
) -> tuple[int, int, int, float]:
    """Apply the log up to `stop` into a fresh file, the way `Replicator.step` does."""
    tdb = TargetDB(target, path, cfg.daemon.busy_timeout_ms)
    try:
        # The file is ours until it is renamed, and fsynced before that.
        tdb.conn.execute("PRAGMA synchronous=OFF")
        cp = tdb.checkpoints.load()
        frames = events = 0
        newest = 0.0
        while cp.offset < stop:
            entries = log.read(cp.offset, stop, max_frames=cfg.daemon.apply_batch)
            entries = [e for e in entries if e.next_offset <= stop]
            if not entries:
                break  # `stop` falls inside the next frame
            _no_copied_range(plan, target, entries)
            res = apply_batch(tdb, plan, entries, cp)
            cp = res.checkpoint
            frames += len(entries)
            events += res.events
            newest = max(newest, res.newest_observed_at)
        return cp.offset, frames, events, newest
    finally:
        tdb.close()


def _no_copied_range(plan: Plan, target: str, entries: list) -> None:
    """A range copied by reference holds no rows in the log: the apply would read the
    legacy file as it is now, not as it was (`cdc.events.CopyRange`)."""
    for e in entries:
        f = e.frame
        if isinstance(f, CopyRange):
            m = plan.mapping(f.source, f.table)
            if m is not None and m.target == target:
                raise HistoryIncomplete(
                    f"cannot rebuild {target}: the initial copy of {f.source}.{f.table} "
                    f"went by reference (offset {e.offset}): its rows are not in the log",
                    hint='`daemon.snapshot_copy = "log"` before an initial copy keeps its '
                    "rows in the log (`cdc docs history`)",
                )


def _clean(path: str) -> tuple[list[str], list[RebuiltTable]]:
    """Drop our bookkeeping tables (by exact name: a bot's `_cdc_lookalike` is data), compact,
    count rows; leaves one self-contained file."""
    conn = apsw.Connection(path)
    try:
        dropped = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name")
            if is_own_table(r[0])
        ]
        with conn:
            for name in dropped:
                conn.execute(f"DROP TABLE {q(name)}")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [
            RebuiltTable(n, conn.execute(f"SELECT count(*) FROM {q(n)}").fetchone()[0])
            for (n,) in conn.execute(
                "SELECT name FROM pragma_table_list WHERE schema='main' AND type='table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        ]
    finally:
        conn.close()
    if os.path.exists(path + "-wal"):
        raise TargetError(f"{path}: the WAL was not folded into the file on close")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dropped, tables


def _publish(tmp: str, out: str) -> None:
    """Give the finished file its name without ever replacing one that appeared meanwhile."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise ConfigError(f"{out} appeared while rebuilding: left as it is") from None
    except OSError:  # a file system without hard links
        if os.path.lexists(out):
            raise ConfigError(f"{out} appeared while rebuilding: left as it is") from None
        os.rename(tmp, out)
    fsync_dir(os.path.dirname(out))
