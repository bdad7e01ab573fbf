"""`cdc status`: what was captured, logged and applied, per source and per target.

Read straight from the files (capture tables, log, target checkpoints), each in a short
read-only transaction, plus the daemon's status file for what only it knows (errors, lag).
Sequences count captured changes, so `backlog` is "changes a bot committed that the
targets do not have yet".
"""

from __future__ import annotations

import os
import time

import apsw
import msgspec

from cdc.capture import triggers as capture
from cdc.changelog.segments import LogReader, list_segments
from cdc.config import Config
from cdc.control.controls import Controls, read_controls
from cdc.events import RowBatch, SourcePosition
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan
from cdc.pool.stats import PoolMetrics, read_pool_metrics
from cdc.sqlconn import open_legacy
from cdc.stages.kept_out import KeptOut, describe
from cdc.stages.kept_out_apply import kept_out_now
from cdc.stages.record import CutoverRecord, finalized_sources, read_records
from cdc.status_file import (
    BackflowRuntime,
    DaemonState,
    daemon_state,
    full_disk_note,
    read_status,
)
from checkpoints.store import target_state
from verifier.continuous import VerifierStatus, read_verifier_status


class SourceStatus(msgspec.Struct):
    name: str
    path: str
    tables: int
    installed: bool
    captured: int = 0
    logged: int = 0
    applied: int = 0
    backlog_events: int = 0
    backlog_seconds: float = 0.0
    snapshot: str = "pending"
    last_error: str | None = None
    capture: str = "triggers"  # or "hooks" (docs/hooks.md)
    hook_changes: int = 0  # hooks: capture rows written by pool connections (daemon's run)
    foreign_changes: int = 0  # hooks: capture rows by writers outside the pool (triggers)
    heartbeat_at: float | None = None  # start of the daemon's last complete harvest pass
    lag_seconds: float | None = None  # see `_lag`: never a stale zero; None: unknown


class TargetStatus(msgspec.Struct):
    name: str
    path: str
    applied_events: int = 0
    log_offset: int = 0
    backlog_bytes: int = 0
    lag_seconds: float | None = None
    last_applied_at: float | None = None
    last_error: str | None = None


class LogStatus(msgspec.Struct):
    segments: int
    first_offset: int
    end_offset: int


class Status(msgspec.Struct):
    daemon: DaemonState
    log: LogStatus
    sources: list[SourceStatus]
    targets: list[TargetStatus]
    problems: list[str] = []  # mapping problems found now (e.g. a new unmapped table)
    verifier: VerifierStatus | None = None  # the daemon's continuous verifier, if it ran
    cutovers: list[CutoverRecord] = []  # stages cut over, or being cut over
    backflow: dict[str, BackflowRuntime] = {}  # open rollback windows (the daemon's way back)
    pools: list[PoolMetrics] = []  # connection pools of live bot processes (cdc.pool)
    controls: Controls = msgspec.field(default_factory=Controls)  # docs/controls.md
    kept_out: list[KeptOut] = []  # cut-over tables whose other side changed (cdc.moved)

    @property
    def backlog_events(self) -> int:
        return sum(s.backlog_events for s in self.sources)

    @property
    def in_sync(self) -> bool:
        return self.backlog_events == 0 and all(t.backlog_bytes == 0 for t in self.targets)


def _log_positions(log_dir: str) -> dict[str, SourcePosition]:
    """Positions as of the log's end, read without taking the writer's role."""
    from cdc.events import SegmentStart, SourceMark

    bases = list_segments(log_dir)
    if not bases:
        return {}
    positions: dict[str, SourcePosition] = {}
    for e in LogReader(log_dir).iter_from(bases[-1], stop_at_bad=True):
        if isinstance(e.frame, SegmentStart):
            positions = dict(e.frame.positions)
        elif isinstance(e.frame, SourceMark):
            positions[e.frame.source] = e.frame.position
    return positions


def _snapshot_state(pos: SourcePosition) -> str:
    done = sum(c.done for c in pos.snapshots)
    return "done" if done == len(pos.snapshots) else f"{done}/{len(pos.snapshots)} tables"


def _first_unapplied(log_dir: str, offset: int, limit: int = 20000) -> dict[str, float]:
    """observed_at of the oldest unapplied event per source, from a bounded scan."""
    out: dict[str, float] = {}
    n = 0
    try:
        for e in LogReader(log_dir).iter_from(offset, stop_at_bad=True):
            n += 1
            if isinstance(e.frame, RowBatch):
                out.setdefault(e.frame.source, e.frame.observed_at)
            if n >= limit:
                break
    except Exception:  # noqa: BLE001 - status is best effort for lag seconds only
        pass
    return out


def collect_status(cfg: Config, plan: Plan | None = None) -> Status:
    plan = plan or resolve_plan(cfg, strict=False)
    now = time.time()
    ds = read_status(cfg.state_dir)
    daemon = daemon_state(ds, now)
    bases = list_segments(cfg.log_dir)
    end = 0
    if bases:
        path = os.path.join(cfg.log_dir, f"{bases[-1]:020d}.seg")
        end = bases[-1] + os.path.getsize(path)
    logst = LogStatus(len(bases), bases[0] if bases else 0, end)
    if daemon.state == "running" and ds is not None:
        positions = None  # the live daemon knows; scanning a 64 MB segment per call is slow
    else:
        positions = _log_positions(cfg.log_dir)

    targets, applied_seq, oldest = _target_statuses(cfg, plan, ds, daemon, end)
    sources = _source_statuses(cfg, plan, ds, daemon, positions, applied_seq, oldest, now)
    problems = list(plan.problems)
    if ds is not None and daemon.state == "running":
        problems += [
            f"captured table {table!r} of source {name!r}: {why}; capture of it stopped and "
            "its target table keeps the rows it had (exclude it in cdc.toml, or create it "
            "again)"
            for name, rt in sorted(ds.sources.items())
            for table, why in sorted(rt.lost_tables.items())
        ]
    kept = kept_out_now(cfg.state_dir, plan)
    problems += [describe(k) for k in kept]
    return Status(
        daemon,
        logst,
        sources,
        targets,
        problems,
        read_verifier_status(cfg.state_dir),
        read_records(cfg.state_dir),
        dict(ds.backflow) if ds and daemon.state == "running" else {},
        read_pool_metrics(cfg.state_dir),
        read_controls(cfg.state_dir),
        kept,
    )


def _target_statuses(cfg, plan, ds, daemon, end):
    """Each target's row, and what the sources' rows need from the targets: the applied
    capture sequence per source (by target) and the oldest unapplied frame per source."""
    targets: list[TargetStatus] = []
    applied_seq: dict[str, list[tuple[str, int]]] = {}
    oldest: dict[str, float] = {}
    for name, path in sorted(plan.targets.items()):
        unreadable = None
        try:
            off, events, at, seqs = target_state(path)
        except apsw.Error as e:  # a full disk: no room for the WAL index a reader needs
            off, events, at, seqs = 0, 0, None, {}
            unreadable = f"{path}: cannot read its checkpoint: {e}{full_disk_note(path)}"
        rt = ds.targets.get(name) if ds else None
        for src, seq in seqs.items():
            applied_seq.setdefault(src, []).append((name, seq))
        if off < end:
            fed = {sp.name for sp in plan.sources if any(m.target == name for m in sp.tables)}
            for src, t in _first_unapplied(cfg.log_dir, off).items():
                if src in fed:  # a target's offset also passes frames it does not take
                    oldest[src] = min(oldest.get(src, t), t)
        targets.append(
            TargetStatus(
                name,
                path,
                events,
                off,
                max(0, end - off),
                rt.last_lag if rt else None,
                at,
                (rt.last_error if rt and daemon.state == "running" else None) or unreadable,
            )
        )
    return targets, applied_seq, oldest


def _source_statuses(cfg, plan, ds, daemon, positions, applied_seq, oldest, now):
    """Each source's row."""
    sources = []
    released = finalized_sources(cfg.state_dir)
    for sp in plan.sources:
        st = SourceStatus(sp.name, sp.path, len(sp.tables), False, capture=sp.capture)
        if sp.name in released:  # archived and released by `cdc finalize`
            st.snapshot = "finalized"
            sources.append(st)
            continue
        if sp.name in plan.busy:  # a bot holds it locked: nothing about it can be read now
            st.snapshot, st.backlog_events = "unknown", -1
            st.last_error = f"{sp.path}: locked by another process; status could not read it"
            sources.append(st)
            continue
        if not sp.tables:
            st.snapshot = "nothing mapped"
        rt = ds.sources.get(sp.name) if ds else None
        if sp.tables:
            if positions is not None:
                pos = positions.get(sp.name)
                logged = (pos.through_seq, _snapshot_state(pos)) if pos else None
            else:
                logged = (rt.through_seq, rt.snapshot) if rt else None
            _fill_source(st, sp, cfg, logged, applied_seq, oldest, now)
        if rt and rt.heartbeat_at:
            st.heartbeat_at = rt.heartbeat_at
        st.lag_seconds = _lag(st, cfg, oldest.get(sp.name), now)
        if rt and daemon.state == "running":
            st.last_error = rt.last_error or st.last_error
            st.hook_changes, st.foreign_changes = rt.hook_rows, rt.foreign_rows
        sources.append(st)
    return sources


def _fill_source(st, sp, cfg, logged, applied_seq, oldest, now) -> None:
    try:
        conn = open_legacy(sp.path, cfg.daemon.busy_timeout_ms, readonly=True)
    except Exception as e:  # noqa: BLE001 - shown in the row
        st.last_error = str(e)
        return
    try:
        st.installed = capture.is_installed(conn)
        if st.installed:
            st.captured = conn.execute(
                f"SELECT coalesce(max(seq), 0) FROM {capture.CHANGES}"
            ).fetchone()[0]
    except apsw.BusyError:
        st.last_error = "legacy database busy; capture count unavailable"
    except apsw.Error as e:  # a WAL file on a full disk: no room for the WAL index
        st.last_error = f"cannot read the capture count: {e}{full_disk_note(sp.path)}"
    finally:
        conn.close()
    if logged is not None:
        st.logged, st.snapshot = logged
    fed = {m.target for m in sp.tables}
    seqs = [seq for tgt, seq in applied_seq.get(sp.name, []) if tgt in fed]
    st.applied = min(seqs) if len(seqs) == len(fed) else 0
    # The daemon's status file is rewritten every 0.5 s; the targets' checkpoints are read
    # now. What was applied was logged first, so a stale file must not make an applied
    # change look unharvested (and the lag non-zero) for that half second.
    st.logged = max(st.logged, st.applied)
    st.backlog_events = max(0, st.captured - st.applied)
    if st.snapshot != "done":
        st.backlog_events = max(st.backlog_events, 1)
    if st.backlog_events and sp.name in oldest:
        st.backlog_seconds = max(0.0, now - oldest[sp.name])


def fresh_limit(cfg: Config) -> float:
    """How old a heartbeat may be and still prove an idle source up to date: a harvest
    thread passes at least every poll interval, and the status file is written every 0.5 s."""
    return max(2.0, 3 * cfg.daemon.poll_interval + 1.0)


def _lag(st: SourceStatus, cfg: Config, oldest_unapplied: float | None, now: float) -> float | None:
    """Seconds the targets are behind this source, never a stale number.

    - nothing pending and a recent heartbeat: 0, proven;
    - changes logged but not applied: the age of the oldest one;
    - changes captured but not harvested: they are at most as old as the last harvest pass
      (`now - heartbeat_at`), since that pass saw the capture table to its end;
    - no recent heartbeat (daemon down or stuck): the age of the last proof, which grows
      every second instead of staying at its last value; None if there never was one.
    """
    age = now - st.heartbeat_at if st.heartbeat_at else None
    fresh = age is not None and age <= fresh_limit(cfg)
    if st.snapshot == "finalized" or not st.tables:
        return 0.0
    lag = 0.0
    if st.applied < st.logged:
        if oldest_unapplied is None:
            return None  # beyond the bounded scan of the log: unknown, not zero
        lag = max(lag, now - oldest_unapplied)
    if st.captured > st.logged or st.snapshot != "done":
        if age is None:
            return None
        lag = max(lag, age)
    if not fresh:
        return None if age is None else max(lag, age)
    return max(0.0, lag)
