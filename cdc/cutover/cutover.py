"""Cutover of one stage (one target): fence the legacy tables, drain, verify, hand over.

Steps, each recorded durably in `<state_dir>/cutover/<target>.json` before the next one
starts, so that a crash anywhere leaves a state `cdc status` explains and the same command
completes (`CDC_TEST_KILL_AT=<step>` makes the process SIGKILL itself right after a step,
for the tests):

1. `preflight`: the daemon runs, the sources of this stage are (nearly) caught up, the
   continuous verifier has not found these tables diverged, and a full position-aware
   verification of them passes while the bots still write (from the target's log offset
   `pre_offset`); the target's WAL is folded in;
2. `fencing` -> `fenced`: each legacy file gets its fence (one write transaction per file,
   all files at once, recording the capture sequence at that instant, `cdc.fence`); from
   here a bot's write to these tables fails with an error naming the target. The proof's
   joins were built before (`fence_proof.prepare_proofs`); then, in each file's own
   thread, they are compiled again for the fenced schema, the thread waits until the
   target has applied that file up to its fence, and proves its tables
   (`fence_proof.early_proofs`), while the record is saved;
3. drain: wait until the target has applied every source up to its fence sequence;
4. sequences: AUTOINCREMENT counters of copied tables are carried into the target, so the
   first row a bot inserts there does not reuse a legacy id;
5. verify: under the fence, every table the pass proved is compared whole on both sides
   (`cdc.fence_proof`: the log is not trusted to have seen every change; the proofs of
   step 2 count); tables the pass could not prove, whose shape changed, or whose sides
   differ are verified in full;
6. go: any target fence a rollback left is lifted (the target's tables are captured
   since before the fence, for the way back: `cdc.backflow`);
7. `done`: the record holds the time, the positions, the checksums and the pause the bots
   saw (fence to done); the bots may now write to the target, and until `cdc finalize`
   the daemon writes their changes back into the fenced legacy files (`cdc rollback`).

`abort` lifts the fences of a stage that is not done (the bots get their tables back, as
they were: nothing was written to the target by them yet).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import apsw

from cdc.capture import fence
from cdc.config import Config
from cdc.control.controls import read_controls
from cdc.cutover import lag, target_capture
from cdc.cutover.connections import Connections
from cdc.cutover.fence_proof import (
    compile_proofs,
    early_proofs,
    final_verification,
    prepare_proofs,
    verify_parallel,
)
from cdc.cutover.steps import Clock, CutoverError, Echo, moved, step_done, wait_fences_applied
from cdc.errors import CdcError, ConfigError, DaemonError, TargetError
from cdc.planning.plan import Plan, TableMapping
from cdc.postgres.dsn import is_postgres
from cdc.sqlconn import open_legacy, open_target, write_transaction
from cdc.sqlident import q
from cdc.stages.kept_out_apply import kept_out_of
from cdc.stages.record import CutoverRecord, CutoverTable, read_record, save_record
from cdc.status_file import daemon_running
from checkpoints.store import SOURCES, read_checkpoint
from checkpoints.store import TABLE as CHECKPOINT
from verifier.model import TableResult

NEAR_ZERO = 1000  # changes a source may be behind when the fence goes up


def cutover(
    cfg: Config,
    plan: Plan,
    target: str,
    lag_timeout: float = 30.0,
    drain_timeout: float = 30.0,
    echo: Echo = lambda _s: None,
) -> CutoverRecord:
    tables = plan.stage(target)
    rec = read_record(cfg.state_dir, target)
    if rec is not None and rec.state in ("done", "finalized"):
        echo(f"{target}: already cut over at {_when(rec.done_at)}")
        return rec
    _refuse_to_start(cfg, target, tables, rec)
    if rec is None or rec.state in ("aborted", "rolled_back"):
        rec = _new_round(cfg, plan, target, tables, rec, lag_timeout, echo)
    step_done("fencing")
    if is_postgres(rec.path):
        from cdc.cutover import pg_cutover

        pg_cutover.fence_and_finish(cfg, plan, rec, tables, drain_timeout, echo)
    else:
        _fence_and_finish(cfg, plan, target, rec, tables, drain_timeout, echo)
    step_done("done")
    return rec


def _refuse_to_start(
    cfg: Config, target: str, tables: list[TableMapping], rec: CutoverRecord | None
) -> None:
    if rec is not None and rec.state == "rolling_back":
        raise CutoverError(
            f"{target}: a rollback is in progress",
            hint=f"finish it with `cdc rollback {target}` (or `cdc rollback --abort {target}`)",
        )
    if not tables:
        raise ConfigError(f"target {target!r} has no mapped tables: nothing to cut over")
    new_round = rec is None or rec.state in ("aborted", "rolled_back")
    if new_round and read_controls(cfg.state_dir).cutover_postponed:
        # Only a new round is refused: an interrupted one has the bots fenced already, and
        # finishing it (or `--abort`) is the way out.
        raise CutoverError(
            f"{target}: cutovers are postponed (`cdc pause --cutover`); nothing was changed",
            hint="`cdc resume --cutover` when the stage may be cut over",
        )
    if not daemon_running(cfg):
        raise DaemonError(
            f"the daemon is not running on {cfg.state_dir}: nothing would drain the last changes",
            hint="start it with `cdc run`, then run the cutover again",
        )


def _new_round(
    cfg: Config,
    plan: Plan,
    target: str,
    tables: list[TableMapping],
    rec: CutoverRecord | None,
    lag_timeout: float,
    echo: Echo,
) -> CutoverRecord:
    """Saved as `fencing` before any fence goes up, so that a crash from here on leaves a
    record the same command resumes (or `--abort` lifts)."""
    history = (rec.history + [_round(rec)]) if rec and rec.state == "rolled_back" else []
    pre_offset, proven = _preflight(cfg, plan, target, tables, lag_timeout, echo)
    rec = CutoverRecord(
        target,
        plan.targets[target],
        "fencing",
        time.time(),
        [_table(m, proven.get(f"{m.source}.{m.table}")) for m in tables],
        pre_offset=pre_offset,
        pre_verified=sorted(proven),
        history=history,
    )
    save_record(cfg.state_dir, rec)
    return rec


def _fence_and_finish(
    cfg: Config,
    plan: Plan,
    target: str,
    rec: CutoverRecord,
    tables: list[TableMapping],
    drain_timeout: float,
    echo: Echo,
) -> None:
    try:
        with Connections(cfg, plan, target, tables) as conns:
            if rec.state == "fencing":
                _stand(plan, rec, tables, conns)
            conns.prepared = prepare_proofs(cfg, tables, conns)
            early = {}
            if rec.state == "fencing":
                deadline = time.monotonic() + drain_timeout
                early = _fence(cfg, plan, rec, tables, echo, conns, deadline)
            step_done("fenced")
            _finish(cfg, plan, rec, tables, drain_timeout, echo, conns, early)
    except CdcError as e:
        rec.error = str(e)
        save_record(cfg.state_dir, rec)
        raise CutoverError(
            f"cutover of {target} stopped with the legacy tables fenced: {e.message}",
            hint=f"fix it and run `cdc cutover {target}` again, or give the bots their "
            f"tables back with `cdc cutover --abort {target}`",
        ) from e


def _table(m: TableMapping, proven: TableResult | None) -> CutoverTable:
    t = CutoverTable(m.source, m.table, m.target_table, m.tag_column, m.tag)
    if proven is not None:
        t.rows, t.digest = proven.source_rows, proven.source_digest
    return t


def _preflight(cfg, plan, target, tables, lag_timeout, echo) -> tuple[int, dict]:  # noqa: ANN001
    """Checks, then a full verification while the bots still write (position-aware), so
    that under the fence only the keys changed since need checking."""
    from verifier.continuous import read_verifier_status

    # First, so the replicator has caught up again before the fence: creating the target's
    # capture triggers holds its write lock (193 ms for analytics' 65 tables); done just
    # before the fence, that backlog doubled the drain under it (bench/README.md).
    _capture(cfg, plan.targets[target], [m.target_table for m in tables])
    # "Near zero", not zero: under a steady write load an instant with nothing in flight
    # may not come for a while, and the drain under the fence takes the rest (at the
    # daemon's 50-100k changes/s, NEAR_ZERO changes are a few ms of the pause).
    ok, state = lag.wait_zero_lag(cfg, plan, [target], lag_timeout, max_behind=NEAR_ZERO)
    behind = {s.source: s.behind for s in state if s.behind}
    if not ok:
        raise CutoverError(
            f"{target}: the targets are behind ({behind}) after {lag_timeout:.0f}s; not fencing",
            hint="see `cdc status`; retry when the backlog is near zero",
        )
    echo(f"{target}: sources caught up ({len(state)} sources)")
    vs = read_verifier_status(cfg.state_dir)
    wanted = {(m.source, m.table) for m in tables}
    bad = [
        f"{t.source}.{t.table}"
        for t in (vs.tables if vs else [])
        if (t.source, t.table) in wanted and t.state == "diverged"
    ]
    if bad:
        raise CutoverError(
            f"{target}: the verifier found differences in {', '.join(bad)}; not fencing",
            hint="repair them (`cdc repair`), then cut over",
        )
    pre_offset = read_checkpoint(plan.targets[target])  # before the pass: see _changed_keys
    report = verify_parallel(cfg, plan, tables)
    bad = [t for t in report.tables if t.state == "diverged"]
    if bad:
        raise CutoverError(
            f"{target}: verification before the fence found differences in "
            + ", ".join(f"{t.source}.{t.table}" for t in bad),
            hint="repair them (`cdc repair`), then cut over",
        )
    proven = {f"{t.source}.{t.table}": t for t in report.tables if t.state == "equal"}
    echo(f"{target}: {len(proven)} of {len(tables)} tables verified equal before the fence")
    if not is_postgres(plan.targets[target]):
        _checkpoint_target(cfg, plan.targets[target])
    return pre_offset, proven


def _capture(cfg: Config, path: str, tables: list[str]) -> None:
    if is_postgres(path):
        from cdc.cutover.pg_cutover import capture_pg_target

        capture_pg_target(path, tables)
    else:
        target_capture.capture_target(cfg, path, tables)


def _checkpoint_target(cfg: Config, path: str) -> None:
    """Fold the target's WAL into the database before the bots arrive: a bot connects with
    SQLite's defaults (checkpoint at 1000 pages) and its first commit would otherwise copy
    the tens of MiB the applier left there (measured: 54-103 ms of its pause)."""
    conn = open_target(path, cfg.daemon.busy_timeout_ms)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def _stand(plan: Plan, rec: CutoverRecord, tables: list[TableMapping], conns) -> None:  # noqa: ANN001
    """The fences created ahead, unarmed (`fence.stand`), all files at once: fencing then
    only inserts rows, and changes no schema (which would have every statement prepared
    on these files compiled again under the fence: the proof's joins, the bots' own)."""

    def one(item: tuple[str, dict[str, str]]) -> None:
        source, moved = item
        fence.stand(conns.legacy[source], plan.source(source).path, moved, stage=rec.target)

    by_source = moved(plan, tables)
    with ThreadPoolExecutor(max_workers=min(32, len(by_source))) as pool:
        list(pool.map(one, sorted(by_source.items())))


def _fence(cfg, plan, rec: CutoverRecord, tables, echo, conns, deadline) -> dict:  # noqa: ANN001
    """Fence every file of the stage at once, each in its own thread, which then waits
    for the target to apply that file up to its fence and proves its tables there
    (`fence_proof.early_proofs`); returns those proofs by (source, table)."""
    # Normally in place since the preflight (a cheap check then): the way back needs it.
    target_capture.capture_target(cfg, rec.path, [m.target_table for m in tables])
    by_source = moved(plan, tables)
    t0 = time.monotonic()
    conns.cpu0 = time.process_time()

    def one(item: tuple[str, dict[str, str]]) -> fence.FenceMark:
        source, moved = item
        path = plan.source(source).path
        return fence.fence(conns.legacy[source], source, path, moved, stage=rec.target)

    def prove(mark: fence.FenceMark) -> list:
        compile_proofs(conns, mark.source)
        if not _wait_applied(conns.target[mark.source], mark, deadline):
            return []  # `_finish` waits again, and says which file stayed behind
        return early_proofs(cfg, rec, conns, mark)

    # All files at once: the bots' pause starts at the first fence, so fencing the files
    # one after the other would add their commit times up. Then each file's proofs, in
    # its own thread; not as soon as its own fence is up: their reading and compiling
    # delayed the other files' fences (the corpus's analytics: 102 ms for the last one
    # instead of ~30), and every ms of that is pause.
    with ThreadPoolExecutor(max_workers=min(32, len(by_source))) as pool:
        marks = list(pool.map(one, sorted(by_source.items())))
        fenced = time.monotonic()
        proving = pool.map(prove, marks)
        for m in marks:  # a file's mark also lists what earlier stages fenced in it
            mine = len(by_source[m.source])
            also = f" ({len(m.tables)} of its tables fenced, with earlier stages')"
            echo(
                f"{rec.target}: fenced {mine} tables of {m.source}"
                f"{also if len(m.tables) > mine else ''}"
            )
        rec.steps_ms = {"fence": round((fenced - t0) * 1000.0, 2)}
        rec.fences = marks
        rec.fenced_at = min(m.fenced_at for m in marks)
        rec.state = "fenced"
        save_record(cfg.state_dir, rec)  # while the files' proofs run
        rec.steps_ms["record"] = round((time.monotonic() - fenced) * 1000.0, 2)
        early = [r for rs in proving for r in rs]
    rec.steps_ms["proofs"] = round((time.monotonic() - fenced) * 1000.0, 2)
    return {(r.source, r.table): r for r in early}


def _wait_applied(conn: apsw.Connection, mark: fence.FenceMark, deadline: float) -> bool:
    """Whether the target applied `mark`'s file up to its fence before `deadline`."""
    while True:
        row = conn.execute(
            f"SELECT through_seq FROM {SOURCES} WHERE consumer='replicator' AND source=?",
            (mark.source,),
        ).fetchone()
        if (row[0] if row else 0) >= mark.fence_seq:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


def _refuse_kept_out(cfg: Config, rec: CutoverRecord, conn: apsw.Connection) -> None:
    """A legacy table a stale process changed under the fence (DROP, RENAME, a new shape)
    is kept out of the target (`cdc.moved`): the target holds its rows as of the fence,
    but nothing can prove them against it any more, and a dropped table would not even
    be verified. The operator decides (`--abort` gives the tables back to be copied)."""
    kept = kept_out_of(cfg.state_dir, rec.target, conn)
    if kept:
        raise TargetError(
            "changed under the fence and kept out of the target: "
            + ", ".join(f"{k.source}.{k.table} ({k.reason}, {k.path})" for k in kept)
        )


def _finish(cfg, plan, rec: CutoverRecord, tables, drain_timeout, echo, conns, early) -> None:  # noqa: ANN001
    deadline = time.monotonic() + drain_timeout
    clock = Clock(rec.steps_ms)
    _drain(conns.writer, rec, deadline, drain_timeout)
    clock.lap("drain")
    _carry_sequences(rec, conns.writer)
    clock.lap("sequences")
    _refuse_kept_out(cfg, rec, conns.writer)
    report = final_verification(cfg, plan, rec, tables, conns, early)
    clock.lap("verify")
    bad = [t for t in report.tables if t.state != "equal"]
    if bad:
        raise TargetError(
            "final verification: " + ", ".join(f"{t.source}.{t.table} {t.state}" for t in bad)
        )
    by_key = {(t.source, t.table): t for t in report.tables}
    for t in rec.tables:  # a table unchanged since the pass keeps the pass's rows and digest
        v = by_key[(t.source, t.table)]
        if v.chunks:
            t.rows = v.source_rows
            t.digest = v.source_digest or t.digest
    row = conns.writer.execute(
        f"SELECT log_offset FROM {CHECKPOINT} WHERE consumer='replicator'"
    ).fetchone()
    rec.log_offset = row[0] if row else 0
    target_capture.open_for_bots(rec, conns.writer)
    clock.lap("go")
    if conns.cpu0 is not None:  # the cutover's own CPU time under the fence, all threads
        rec.steps_ms["cpu"] = round((time.process_time() - conns.cpu0) * 1000.0, 2)
    rec.done_at = time.time()
    rec.pause_ms = (rec.done_at - rec.fenced_at) * 1000.0
    rec.state, rec.error = "done", None
    save_record(cfg.state_dir, rec)
    echo(f"{rec.target}: drained, verified equal ({sum(t.rows for t in rec.tables)} rows)")


def _drain(conn: apsw.Connection, rec: CutoverRecord, deadline: float, timeout: float) -> None:
    """Wait until the target applied every source up to its fence sequence, polling on one
    connection (opened before the fence, see `Connections`: per poll, a new one cost the
    corpus's analytics drain 184 ms instead of 20)."""
    sql = f"SELECT source, through_seq FROM {SOURCES} WHERE consumer='replicator'"
    wait_fences_applied(
        lambda: dict(conn.execute(sql).fetchall()), rec, deadline, timeout, poll=0.002
    )


def _carry_sequences(rec: CutoverRecord, conn: apsw.Connection) -> None:
    """Copied AUTOINCREMENT tables: the target's counter becomes at least the legacy one,
    so a bot's first insert into the target cannot take an id a deleted legacy row had.
    The legacy counters were read in the fencing transactions (`FenceMark.sequences`)."""
    marks = {m.source: m for m in rec.fences}
    for t in rec.tables:
        if t.tag_column is None and t.source in marks:
            t.sequence = marks[t.source].sequences.get(t.table)
    counters = {t.target_table: t.sequence for t in rec.tables if t.sequence is not None}
    if (
        not counters
        or not conn.execute("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'").fetchone()
    ):
        return  # no AUTOINCREMENT table in the target
    with write_transaction(conn):
        for table, seq in counters.items():
            conn.execute(
                "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, table)
            )
            if conn.changes() == 0:
                conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, seq))


def abort(cfg: Config, plan: Plan, target: str, echo: Echo = lambda _s: None) -> CutoverRecord:
    """Give the bots their legacy tables back (a stage not yet done)."""
    rec = read_record(cfg.state_dir, target)
    if rec is None or rec.state in ("aborted", "rolled_back"):
        raise CutoverError(f"{target}: no cutover in progress")
    if rec.state in ("done", "finalized", "rolling_back"):
        raise CutoverError(
            f"{target}: the cutover is done and the bots may have written to {rec.path}",
            hint=f"go back with `cdc rollback {target}`, which brings their writes along"
            if rec.state != "finalized"
            else "the stage is finalized: the legacy files are archived",
        )
    for source in sorted({t.source for t in rec.tables}):
        sp = plan.source(source)
        conn = open_legacy(sp.path, cfg.daemon.busy_timeout_ms)
        try:
            lifted = fence.unfence(
                conn, sp.path, [t.table for t in rec.tables if t.source == source]
            )
        finally:
            conn.close()
        echo(f"{target}: unfenced {len(lifted)} tables of {source}")
    rec.state = "aborted"
    save_record(cfg.state_dir, rec)
    return rec


def _round(rec: CutoverRecord) -> str:
    rb = rec.rollback
    return (
        f"cut over {_when(rec.done_at)} (pause {rec.pause_ms or 0:.0f} ms), rolled back "
        f"{_when(rb.rolled_back_at if rb else None)} (pause {(rb.pause_ms if rb else 0) or 0:.0f} ms)"
    )


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def instructions(plan: Plan, rec: CutoverRecord) -> list[str]:
    """What to point the bots at, table by table."""
    out = [f"point the bots at {rec.path} for these tables:"]
    for t in rec.tables:
        line = f"  {plan.source(t.source).path} : {t.table}  ->  {rec.path} : {q(t.target_table)}"
        if t.tag_column:
            line += f"  (merged: write {t.tag_column} = '{t.tag}')"
        out.append(line)
    return out
