"""Cutover of a stage whose target is PostgreSQL: the same steps, in the target's terms.

The record, the preflight (capture of the target for the way back, lag near zero, the
continuous verifier's verdicts, a full position-aware verification while the bots write)
and the legacy fences are the SQLite cutover's (`cdc.cutover.cutover`). Under the fence:

1. drain: the target has applied every legacy file up to its fence sequence
   (`_cdc_source_applied`, written in the apply's own transaction);
2. identities: each identity column of the stage's tables is moved past its highest key
   and the legacy AUTOINCREMENT counter read in the fencing transaction, so the first row
   a bot inserts cannot take an id a legacy row has or had (`way_back.carry_identity`);
3. verify: every table of the stage is proven whole on both sides, each side digesting
   its own rows (`verifier.pg_digest`: the server hashes its rows in SQL, none crosses
   the wire); a table that proof does not prove equal is verified in full across
   engines (`verifier.pg_table`), which names its keys. It reads every row, so this
   pause grows with the stage's rows, as the SQLite cutover's joined proof does;
4. go: the fences a rollback left on the target are lifted (its capture is in place
   since the preflight), and the record says `done`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from cdc.capture import fence
from cdc.config import Config
from cdc.cutover.fence_proof import verify_parallel
from cdc.cutover.steps import Clock, CutoverError, Echo, moved, step_done, wait_fences_applied
from cdc.errors import CdcError, TargetError
from cdc.planning.plan import Plan, TableMapping
from cdc.postgres import way_back
from cdc.postgres.connect import connect, translated
from cdc.sqlconn import open_legacy
from cdc.stages.kept_out_apply import kept_out_legacy
from cdc.stages.record import CutoverRecord, save_record
from verifier.pg_digest import quiet_proof


def capture_pg_target(dsn: str, tables: list[str]) -> None:
    """The way back's capture on the stage's target tables (idempotent; before the fence:
    creating triggers waits for the tables' locks)."""
    with translated(dsn), connect(dsn) as conn, conn.transaction():
        way_back.install(conn, sorted(set(tables)))


def fence_and_finish(
    cfg: Config,
    plan: Plan,
    rec: CutoverRecord,
    tables: list[TableMapping],
    drain_timeout: float,
    echo: Echo,
) -> None:
    conn = connect(rec.path, autocommit=True)  # before the fence: its setup is no pause
    try:
        with translated(rec.path):
            if rec.state == "fencing":
                _fence(cfg, plan, rec, tables, echo)
            step_done("fenced")
            _finish(cfg, plan, rec, tables, conn, drain_timeout, echo)
    except CdcError as e:
        rec.error = str(e)
        save_record(cfg.state_dir, rec)
        raise CutoverError(
            f"cutover of {rec.target} stopped with the legacy tables fenced: {e.message}",
            hint=f"fix it and run `cdc cutover {rec.target}` again, or give the bots their "
            f"tables back with `cdc cutover --abort {rec.target}`",
        ) from e
    finally:
        conn.close()


def _fence(cfg: Config, plan: Plan, rec: CutoverRecord, tables, echo: Echo) -> None:  # noqa: ANN001
    """Every legacy file of the stage fenced at once (the bots' pause starts at the first)."""
    busy = cfg.daemon.busy_timeout_ms
    by_source = moved(plan, tables)
    conns = {s: open_legacy(plan.source(s).path, busy) for s in by_source}
    try:
        for s, homes in by_source.items():  # unarmed first: fencing then only inserts rows
            fence.stand(conns[s], plan.source(s).path, homes, stage=rec.target)
        t0 = time.monotonic()

        def one(item: tuple[str, dict[str, str]]) -> fence.FenceMark:
            s, homes = item
            return fence.fence(conns[s], s, plan.source(s).path, homes, stage=rec.target)

        with ThreadPoolExecutor(max_workers=min(32, len(by_source))) as pool:
            marks = list(pool.map(one, sorted(by_source.items())))
    finally:
        for c in conns.values():
            c.close()
    rec.steps_ms = {"fence": round((time.monotonic() - t0) * 1000.0, 2)}
    rec.fences = marks
    rec.fenced_at = min(m.fenced_at for m in marks)
    rec.state = "fenced"
    save_record(cfg.state_dir, rec)
    for m in marks:
        echo(f"{rec.target}: fenced {len(by_source[m.source])} tables of {m.source}")


def _finish(cfg, plan, rec: CutoverRecord, tables, conn, drain_timeout, echo) -> None:  # noqa: ANN001
    clock = Clock(rec.steps_ms)
    _drain(conn, rec, drain_timeout)
    clock.lap("drain")
    _carry_identity(conn, rec)
    clock.lap("sequences")
    _refuse_kept_out(cfg, rec)
    results, rec.verified_in_full = prove_quiet(cfg, plan, tables)
    clock.lap("verify")
    bad = [t for t in results if t.state != "equal"]
    if bad:
        raise TargetError(
            "final verification: " + ", ".join(f"{t.source}.{t.table} {t.state}" for t in bad)
        )
    by_key = {(t.source, t.table): t for t in results}
    for t in rec.tables:
        v = by_key[(t.source, t.table)]
        t.rows, t.digest = v.source_rows, v.source_digest or t.digest
    row = conn.execute("SELECT log_offset FROM _cdc_checkpoint WHERE consumer='replicator'")
    rec.log_offset = (row.fetchone() or (0,))[0]
    open_for_bots(conn, rec)
    clock.lap("go")
    rec.done_at = time.time()
    rec.pause_ms = (rec.done_at - rec.fenced_at) * 1000.0
    rec.state, rec.error = "done", None
    save_record(cfg.state_dir, rec)
    echo(f"{rec.target}: drained, verified equal ({sum(t.rows for t in rec.tables)} rows)")


def prove_quiet(cfg: Config, plan: Plan, tables: list[TableMapping]) -> tuple[list, int]:
    """Every table of a fenced, drained stage: each side digests its own rows
    (`verifier.pg_digest`), one thread per legacy file; a table that proof does not
    prove equal is verified in full (which names its keys). Returns the results and how
    many tables went in full."""
    import psycopg

    busy = cfg.daemon.busy_timeout_ms
    by_source: dict[str, list[TableMapping]] = {}
    for m in tables:
        by_source.setdefault(m.source, []).append(m)

    def one(ms: list[TableMapping]) -> list:
        src = open_legacy(plan.source(ms[0].source).path, busy, readonly=True)
        try:
            with psycopg.connect(plan.targets[ms[0].target], autocommit=True) as tgt:
                return [quiet_proof(src, tgt, m) or m for m in ms]
        finally:
            src.close()

    with ThreadPoolExecutor(max_workers=min(8, len(by_source))) as pool:
        got = [r for rs in pool.map(one, by_source.values()) for r in rs]
    full = [m for m in got if isinstance(m, TableMapping)]
    results = [r for r in got if not isinstance(r, TableMapping)]
    if full:
        results += verify_parallel(cfg, plan, full).tables
    return results, len(full)


def _drain(conn, rec: CutoverRecord, timeout: float) -> None:  # noqa: ANN001
    sql = "SELECT source, through_seq FROM _cdc_source_applied"
    deadline = time.monotonic() + timeout
    wait_fences_applied(lambda: dict(conn.execute(sql)), rec, deadline, timeout, poll=0.005)


def _carry_identity(conn, rec: CutoverRecord) -> None:  # noqa: ANN001
    """Every identity column of the stage (a rowid key, AUTOINCREMENT or not): past the
    highest id, and past the legacy counter where the table is a copy (a merged table's
    members count their ids apart: past the highest of them)."""
    marks = {m.source: m for m in rec.fences}
    counters: dict[str, int] = {}
    for t in rec.tables:
        seq = marks[t.source].sequences.get(t.table) if t.source in marks else None
        if t.tag_column is None:
            t.sequence = seq
        counters[t.target_table] = max(counters.get(t.target_table, 0), seq or 0)
    with conn.transaction():
        way_back.carry_identity(conn, counters)


def _refuse_kept_out(cfg: Config, rec: CutoverRecord) -> None:
    """A legacy table a stale process changed under the fence, as the harvesters saw it
    (`cdc.moved`); the verification after this names any other difference."""
    kept = kept_out_legacy(cfg.state_dir, rec.target)
    if kept:
        raise TargetError(
            "changed under the fence and kept out of the target: "
            + ", ".join(f"{k.source}.{k.table} ({k.reason}, {k.path})" for k in kept)
        )


def open_for_bots(conn, rec: CutoverRecord) -> None:  # noqa: ANN001
    """Lift the target fences an earlier rollback left (idempotent: a cutover killed here
    does it again)."""
    names = sorted({t.target_table for t in rec.tables})
    with conn.transaction():
        if not way_back.is_capturing(conn, names):  # in place since the preflight
            way_back.install(conn, names)
        way_back.unfence(conn, names)


def fence_target(rec: CutoverRecord, moved: dict[str, str], note: str) -> fence.FenceMark:
    """A rollback's fence on the target's tables (`way_back.fence`), in one transaction."""
    with translated(rec.path), connect(rec.path) as conn, conn.transaction():
        seq, at, counters = way_back.fence(conn, rec.path, moved, note)
    return fence.FenceMark(rec.target, rec.path, sorted(moved), seq, at, counters)


def unfence_target(dsn: str, tables: list[str]) -> list[str]:
    with translated(dsn), connect(dsn) as conn, conn.transaction():
        return way_back.unfence(conn, tables)


def remove_target_capture(dsn: str, tables: list[str]) -> int:
    """`cdc finalize`: the way back's objects leave the target (`way_back.remove`)."""
    with translated(dsn), connect(dsn) as conn, conn.transaction():
        return way_back.remove(conn, tables)
