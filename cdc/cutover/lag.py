"""Whether the targets have everything the bots committed: the question a cutover asks.

"Caught up" is measured in capture sequences, source by source: the newest sequence in
the legacy file's capture table (read first) against the sequence each target says it
applied for that source (read after). Reading the legacy side first means a true answer
is never early: anything committed before the check has a sequence at most the one read.
"""

from __future__ import annotations

import time

import apsw
import msgspec

from cdc.capture import triggers as capture
from cdc.config import Config
from cdc.errors import SourceError
from cdc.planning.plan import Plan
from cdc.postgres.dsn import is_postgres
from cdc.sqlconn import open_legacy
from checkpoints.pg_store import pg_snapshots_done
from checkpoints.store import SNAPSHOTS, target_state


class SourceLag(msgspec.Struct):
    source: str
    captured: int
    applied: dict[str, int]  # target -> applied sequence of this source
    copying: list[str] = []  # tables whose initial copy the target does not have yet

    @property
    def behind(self) -> int:
        """Changes not applied (at least 1 while an initial copy is missing: the snapshot's
        rows carry no capture sequence, so sequences alone would call it caught up)."""
        seqs = max([self.captured - a for a in self.applied.values()] + [0])
        return max(seqs, 1) if self.copying else seqs


def applied_seq(target_path: str, source: str) -> int:
    """The capture sequence of `source` that the target has applied (0: none yet)."""
    return target_state(target_path)[3].get(source, 0)


def snapshots_done(target_path: str, source: str) -> set[str]:
    if is_postgres(target_path):
        return pg_snapshots_done(target_path, source)
    try:
        conn = apsw.Connection(target_path, flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.CantOpenError:
        return set()
    try:
        conn.set_busy_timeout(2000)
        return {
            r[0]
            for r in conn.execute(
                f"SELECT tbl FROM {SNAPSHOTS} WHERE consumer='replicator' AND source=?",
                (source,),
            )
        }
    except apsw.SQLError:
        return set()
    finally:
        conn.close()


def captured_seq(cfg: Config, path: str) -> int:
    conn = open_legacy(path, cfg.daemon.busy_timeout_ms, readonly=True)
    try:
        if not capture.is_installed(conn):
            raise SourceError(f"{path}: capture is not installed", hint="run `cdc install`")
        return conn.execute(f"SELECT coalesce(max(seq), 0) FROM {capture.CHANGES}").fetchone()[0]
    finally:
        conn.close()


def lag(cfg: Config, plan: Plan, targets: list[str]) -> list[SourceLag]:
    out = []
    for sp in plan.sources:
        fed = sorted({m.target for m in sp.tables if m.target in targets})
        if not fed:
            continue
        captured = captured_seq(cfg, sp.path)  # first: see the module docstring
        applied = {t: applied_seq(plan.targets[t], sp.name) for t in fed}
        done = {t: snapshots_done(plan.targets[t], sp.name) for t in fed}
        copying = sorted(
            f"{m.table} -> {m.target}"
            for m in sp.tables
            if m.target in done and m.table not in done[m.target]
        )
        out.append(SourceLag(sp.name, captured, applied, copying))
    return out


def wait_zero_lag(
    cfg: Config,
    plan: Plan,
    targets: list[str],
    timeout: float,
    interval: float = 0.02,
    max_behind: int = 0,
) -> tuple[bool, list[SourceLag]]:
    """Poll until every source feeding `targets` is at most `max_behind` changes behind
    there (and no initial copy is missing), or `timeout`."""
    deadline = time.monotonic() + timeout

    def near(s: SourceLag) -> bool:
        return not s.copying and s.behind <= max_behind

    while True:
        state = lag(cfg, plan, targets)
        if all(near(s) for s in state) or time.monotonic() >= deadline:
            return all(near(s) for s in state), state
        time.sleep(interval)
