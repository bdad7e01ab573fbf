"""Repair diverged rows through the running daemon, then prove them equal again.

The fix is never written into the target directly: a direct write could land under a
newer change still in the log and revert it. The daemon re-sends the legacy image of each
key through the log (see `cdc.repair`), the replicator applies it in order, and the
tables are verified again once every target holds it. Each table that second pass proves
equal is recorded as the repair's proof (`verifier.continuous.record_repair_proofs`): it
stands in for the daemon's verifier's older verdict, which would otherwise refuse a cutover
until that verifier's next pass.
"""

from __future__ import annotations

import time

import msgspec

from cdc.config import Config, VerifySettings
from cdc.control import repair_requests as repair
from cdc.errors import DaemonError
from cdc.planning.plan import Plan
from cdc.status_file import daemon_running
from checkpoints.store import read_checkpoint
from verifier.continuous import record_repair_proofs
from verifier.run import PassResult, verify_tables


def repair_diverged(
    cfg: Config,
    plan: Plan,
    found: PassResult,
    settings: VerifySettings | None = None,
    timeout: float = 120.0,
) -> PassResult:
    """Re-send every diverged key of `found`; returns the pass with the repaired tables
    verified again."""
    if not found.keys:
        return PassResult(found.report, {})
    if not daemon_running(cfg):
        raise DaemonError(
            f"repairs travel through the change log, and no daemon is running on {cfg.state_dir}",
            hint="start it with `cdc run`, then repair again",
        )
    need: dict[str, int] = {}
    for (source, table), keys in sorted(found.keys.items()):
        req = repair.submit(cfg.state_dir, source, table, keys)
        done = repair.wait_done(cfg.state_dir, req, timeout, lambda: daemon_running(cfg))
        if done.error:
            raise DaemonError(f"repair of {source}.{table} failed: {done.error}")
        target = plan.mapping(source, table).target
        need[target] = max(need.get(target, 0), done.log_offset)
    deadline = time.monotonic() + timeout
    for target, offset in need.items():
        while read_checkpoint(plan.targets[target]) < offset:
            if time.monotonic() > deadline or not daemon_running(cfg):
                raise DaemonError(
                    f"target {target} did not apply the repair (needs log offset {offset})",
                    hint="see `cdc status` for the apply error",
                )
            time.sleep(0.05)
    tables = [plan.mapping(s, t) for s, t in found.keys]
    again = verify_tables(cfg, plan, tables, settings)
    record_repair_proofs(
        cfg.state_dir, again.report.tables, {k: len(v) for k, v in found.keys.items()}
    )
    # the pass as a whole: repaired tables as verified now, the others as found
    redone = {(t.source, t.table): t for t in again.report.tables}
    report = msgspec.structs.replace(
        found.report,
        tables=[redone.get((t.source, t.table), t) for t in found.report.tables],
        finished_at=again.report.finished_at,
    )
    return PassResult(report, again.keys)
