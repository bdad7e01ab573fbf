"""Rollback of a cut-over stage: the bots get their legacy files back, with every write they
made to the target since the cutover.

Steps, each recorded in the stage's cutover record before the next one starts (a crash
anywhere leaves a state `cdc status` explains, and `cdc rollback TARGET` completes it;
`CDC_TEST_KILL_AT=<step>` makes the process SIGKILL itself right after a step):

1. `rolling_back`: the daemon must run (its backflow writes the target's changes back);
2. `rollback_fenced`: the stage's target tables are fenced for the bots, recording the
   target's capture sequence at that instant;
3. drain: every legacy file of the stage has the target's changes up to that sequence (the
   backflow writes them, and its checkpoint, in one legacy transaction);
4. AUTOINCREMENT counters go back to the legacy tables, so no id the target gave is reused;
5. verify, both sides quiet: the keys the bots changed in the target since the stage was
   last proven equal (remembered by the way back), one by one, with the row counts;
6. `rollback_unfencing`: the legacy fences are lifted (the target's capture stays: it
   records only the bots' writes, and they are fenced there; replication keeps the target
   current for the next cutover);
7. `rolled_back`: the bots may write to their legacy files; the target stays fenced for
   them and keeps following the legacy files, so `cdc cutover TARGET` can be run again.

Until step 6 `cdc rollback --abort` gives the target back to the bots instead.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from cdc.capture import fence
from cdc.config import Config
from cdc.cutover import backflow, pg_cutover, target_capture
from cdc.cutover.cutover import Clock, CutoverError, Echo, step_done, verify_parallel
from cdc.errors import CdcError, DaemonError
from cdc.planning.plan import Plan
from cdc.postgres.dsn import is_postgres
from cdc.sqlconn import open_legacy, open_target, write_transaction
from cdc.stages.record import CutoverRecord, RollbackInfo, read_record, save_record
from cdc.status_file import daemon_running
from verifier.model import TableResult
from verifier.run import unchanged, verify_keys

TARGET_NOTE = "the stage was rolled back: this copy is read-only until the next cutover"


def rollback(
    cfg: Config,
    plan: Plan,
    target: str,
    drain_timeout: float = 30.0,
    echo: Echo = lambda _s: None,
) -> CutoverRecord:
    tables = plan.stage(target)
    rec = read_record(cfg.state_dir, target)
    if rec is not None and rec.state == "rolled_back":
        echo(f"{target}: already rolled back at {time.ctime(rec.rollback.rolled_back_at)}")
        return rec
    if rec is None or rec.state not in ("done", "rolling_back"):
        raise CutoverError(
            f"{target}: nothing to roll back (cutover state: {rec.state if rec else 'none'})",
            hint="a rollback follows a finished cutover and must come before `cdc finalize`",
        )
    if rec.finalizing_at is not None:
        raise CutoverError(
            f"{target}: `cdc finalize` began at {time.ctime(rec.finalizing_at)}: "
            "the way back is closed",
            hint=f"run `cdc finalize {target}` again to finish it",
        )
    if not daemon_running(cfg):
        raise DaemonError(
            f"the daemon is not running on {cfg.state_dir}: nothing would write the "
            "target's last changes back",
            hint=f"start it with `cdc run`, then run `cdc rollback {target}` again",
        )
    if rec.state == "done":
        rec.state, rec.rollback, rec.error = "rolling_back", RollbackInfo(time.time()), None
        save_record(cfg.state_dir, rec)
    step_done("rolling_back")
    rb = rec.rollback
    if not rb.unfencing:
        _fence_drain_verify(cfg, plan, rec, tables, drain_timeout, echo)
        rb.unfencing = True
        save_record(cfg.state_dir, rec)
    _hand_back(cfg, plan, rec, echo)
    step_done("rollback_unfencing")
    rb.rolled_back_at = time.time()
    rb.pause_ms = (rb.rolled_back_at - rb.fence.fenced_at) * 1000.0
    rec.state, rec.error = "rolled_back", None
    save_record(cfg.state_dir, rec)
    echo(
        f"{target}: rolled back; {rb.verified_tables} tables verified equal; the bots' tables "
        f"are writable in their legacy files again (pause {rb.pause_ms:.0f} ms)"
    )
    step_done("rolled_back")
    return rec


def _fence_drain_verify(cfg, plan, rec, tables, drain_timeout, echo) -> None:  # noqa: ANN001
    rb = rec.rollback
    clock = Clock(rb.steps_ms)
    try:
        _fence_target(cfg, plan, rec, echo)
        step_done("rollback_fenced")
        clock.lap("fence")
        _drain(cfg, plan, rec, drain_timeout)
        clock.lap("drain")
        _carry_sequences_back(cfg, plan, rec)
        clock.lap("sequences")
        results = _verify_back(cfg, plan, rec, tables)
        clock.lap("verify")
        bad = [t for t in results if t.state != "equal"]
        if bad:
            raise CutoverError(
                "verification of the way back: "
                + ", ".join(f"{t.source}.{t.table} {t.state}" for t in bad)
            )
        rb.verified_tables = len(results)
    except CdcError as e:
        rec.error = str(e)
        save_record(cfg.state_dir, rec)
        target = rec.target
        raise CutoverError(
            f"rollback of {target} stopped with both sides fenced: {e.message}",
            hint=f"fix it and run `cdc rollback {target}` again, or give the bots the target "
            f"back with `cdc rollback --abort {target}`",
        ) from e


def _verify_back(cfg, plan, rec: CutoverRecord, tables) -> list[TableResult]:  # noqa: ANN001
    """Both sides quiet. The stage was proven equal when it was cut over; since then only
    the bots changed the target (every key they touched is captured and remembered) and
    only the way back changed the legacy tables, from those keys. So those keys are
    compared one by one, with the row counts; a table the bots did not touch is not read.
    Without that record (a target captured by an older version), everything in full."""
    if is_postgres(rec.path):  # no record of the keys the bots touched there yet
        rec.rollback.keys_checked = -1
        return pg_cutover.prove_quiet(cfg, plan, tables)[0]
    conn = open_target(rec.path, cfg.daemon.busy_timeout_ms)
    try:
        keys = target_capture.touched_keys(conn, sorted({t.target_table for t in rec.tables}))
    finally:
        conn.close()
    if keys is None:
        rec.rollback.keys_checked = -1
        return verify_parallel(cfg, plan, tables).tables
    per_table: dict[tuple[str, str], list[list]] = {}
    for m in tables:
        ks = keys.get(m.target_table, [])
        if m.tag_column:  # the target key starts with the tag: this source's rows only
            ks = [k[1:] for k in ks if k and k[0] == m.tag]
        if ks:
            per_table[(m.source, m.table)] = ks
    results = [
        unchanged(m, "not changed by the bots since it was proven equal")
        for m in tables
        if (m.source, m.table) not in per_table
    ]
    touched = [m for m in tables if (m.source, m.table) in per_table]
    if touched:
        with ThreadPoolExecutor(max_workers=min(8, len(touched))) as pool:
            results += list(
                pool.map(
                    lambda m: verify_keys(cfg, plan, m, per_table[(m.source, m.table)]), touched
                )
            )
    rec.rollback.keys_checked = sum(len(k) for k in per_table.values())
    return results


def _fence_target(cfg: Config, plan: Plan, rec: CutoverRecord, echo: Echo) -> None:
    homes: dict[str, list[str]] = {}
    for t in rec.tables:
        homes.setdefault(t.target_table, []).append(
            f"{plan.source(t.source).path} (table {t.table})"
        )
    moved = {tt: "; ".join(hs) for tt, hs in homes.items()}
    if is_postgres(rec.path):
        mark = pg_cutover.fence_target(rec, moved, TARGET_NOTE)
    else:
        conn = open_target(rec.path, cfg.daemon.busy_timeout_ms)
        try:
            mark = fence.fence(conn, rec.target, rec.path, moved, note=TARGET_NOTE)
        finally:
            conn.close()
    rec.rollback.fence = mark
    save_record(cfg.state_dir, rec)
    echo(
        f"{rec.target}: fenced {len(mark.tables)} target tables (capture sequence {mark.fence_seq})"
    )


def _drain(cfg: Config, plan: Plan, rec: CutoverRecord, timeout: float) -> None:
    """Wait until every legacy file of the stage has the target's changes up to the fence."""
    want = rec.rollback.fence.fence_seq
    deadline = time.monotonic() + timeout
    while True:
        have = backflow.legacy_applied(cfg, plan, rec.target)
        behind = {s: want - n for s, n in have.items() if n < want}
        if not behind:
            return
        if time.monotonic() > deadline:
            raise CutoverError(
                f"{rec.target}: the daemon did not write the target's changes back within "
                f"{timeout:.0f}s (behind, by capture sequence: {behind})",
                hint="see `cdc status` (backflow) for its error",
            )
        time.sleep(0.01)


def _carry_sequences_back(cfg: Config, plan: Plan, rec: CutoverRecord) -> None:
    """Copied AUTOINCREMENT tables: the legacy counter becomes at least the target's, so an
    id the target handed out (even to a row deleted since) is not handed out again."""
    copied = [t for t in rec.tables if t.tag_column is None]
    if is_postgres(rec.path):  # read in the target's fencing transaction
        _write_sequences_back(cfg, plan, copied, rec.rollback.fence.sequences)
        return
    conn = open_target(rec.path, cfg.daemon.busy_timeout_ms)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'").fetchone():
            return
        seqs = {
            t.target_table: row[0]
            for t in copied
            if (
                row := conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name=?", (t.target_table,)
                ).fetchone()
            )
        }
    finally:
        conn.close()
    _write_sequences_back(cfg, plan, copied, seqs)


def _write_sequences_back(cfg: Config, plan: Plan, copied: list, seqs: dict[str, int]) -> None:
    for t in copied:
        if t.target_table not in seqs:
            continue
        lc = open_legacy(plan.source(t.source).path, cfg.daemon.busy_timeout_ms)
        try:
            with write_transaction(lc):
                if lc.execute(
                    "SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'"
                ).fetchone():
                    lc.execute(
                        "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
                        (seqs[t.target_table], t.table),
                    )
        finally:
            lc.close()


def _hand_back(cfg: Config, plan: Plan, rec: CutoverRecord, echo: Echo) -> None:
    if not is_postgres(rec.path):  # PostgreSQL keeps no record of touched keys yet
        conn = open_target(rec.path, cfg.daemon.busy_timeout_ms)
        try:  # proven equal just now: the next rollback's record of touched keys starts empty
            with write_transaction(conn):
                target_capture.forget_touched(conn)
        finally:
            conn.close()
    for source in sorted({t.source for t in rec.tables}):
        sp = plan.source(source)
        lc = open_legacy(sp.path, cfg.daemon.busy_timeout_ms)
        try:
            lifted = fence.unfence(lc, sp.path, [t.table for t in rec.tables if t.source == source])
        finally:
            lc.close()
        echo(f"{rec.target}: unfenced {len(lifted)} tables of {source}")


def abort(cfg: Config, plan: Plan, target: str, echo: Echo = lambda _s: None) -> CutoverRecord:
    """Give the target back to the bots: an unfinished rollback that has not yet lifted any
    legacy fence (after that the legacy files are the live copy)."""
    rec = read_record(cfg.state_dir, target)
    if rec is None or rec.state != "rolling_back":
        raise CutoverError(f"{target}: no rollback in progress")
    if rec.rollback.unfencing:
        raise CutoverError(
            f"{target}: the rollback is already lifting the legacy fences",
            hint=f"finish it with `cdc rollback {target}`",
        )
    names = sorted({t.target_table for t in rec.tables})
    if is_postgres(rec.path):
        pg_cutover.unfence_target(rec.path, names)
    else:
        conn = open_target(rec.path, cfg.daemon.busy_timeout_ms)
        try:
            fence.unfence(conn, rec.path, names)
        finally:
            conn.close()
    rec.state, rec.rollback, rec.error = "done", None, None
    save_record(cfg.state_dir, rec)
    echo(f"{target}: rollback aborted; the bots write to {rec.path} again")
    return rec
