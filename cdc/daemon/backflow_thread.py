"""The daemon's backflow thread: the rollback window, kept running beside replication.

Which stages are in their rollback window changes while the daemon runs (a cutover
ends, a rollback starts, a stage is finalized), and a failure here must never stop
forward replication. That bookkeeping, one `Backflow` per cut-over target opened and
closed as the records say, is the thread's own, not the daemon's.
"""

from __future__ import annotations

import logging
import threading

import apsw

from cdc.config import Config
from cdc.cutover import backflow
from cdc.errors import CdcError
from cdc.planning.plan import Plan
from cdc.postgres.dsn import is_postgres
from cdc.stages import backflow_kept
from cdc.stages.record import CutoverRecord, read_record, read_records
from cdc.status_file import BackflowRuntime

log = logging.getLogger("cdc.daemon.daemon")  # its lines, named as before

BACKFLOW_POLL = 0.1  # seconds between looks at the cut-over targets when nothing moved


class BackflowThread:
    """Every stage cut over (and not finalized) has its target's changes written back into
    its legacy files (`cdc.backflow`); `runtime` is the daemon's status of each, by target."""

    def __init__(
        self,
        cfg: Config,
        plan: Plan,
        stop_event: threading.Event,
        runtime: dict[str, BackflowRuntime],
    ) -> None:
        self.cfg, self.plan, self.stop_event, self.runtime = cfg, plan, stop_event, runtime
        self.flows: dict[str, backflow.Backflow] = {}

    def run(self) -> None:
        """A failure is reported and retried; it never stops forward replication."""
        try:
            while not self.stop_event.is_set():
                active = {
                    r.target: r
                    for r in read_records(self.cfg.state_dir)
                    if r.state in backflow.ACTIVE and r.finalizing_at is None
                }
                for t in [t for t in self.flows if t not in active]:
                    self.flows.pop(t).close()  # finalized or rolled back: let go of the files
                for t in [t for t in self.runtime if t not in active]:
                    del self.runtime[t]
                moved, failed = 0, False
                for t, rec in active.items():
                    n = self._step(t, rec)
                    failed |= n is None
                    moved += n or 0
                if not moved:
                    self.stop_event.wait(1.0 if failed else BACKFLOW_POLL)
        finally:
            for f in self.flows.values():
                f.close()

    def _step(self, t: str, rec: CutoverRecord) -> int | None:
        """One step of target `t`'s backflow: rows moved, or None if it failed."""
        rt = self.runtime.setdefault(t, BackflowRuntime(path=rec.path))
        rt.state = rec.state
        try:
            flow = self.flows.get(t)
            if flow is None:
                flow = self.flows[t] = _backflow(self.cfg, self.plan, rec)
            moved = flow.step(
                eager=rec.state == "rolling_back",
                fenced=backflow_kept.target_fenced(rec),
            )
            rt.captured_seq, rt.applied = flow.captured_seq, dict(flow.applied)
            rt.behind, rt.events, rt.last_error = flow.behind, flow.events, None
            return moved
        except apsw.BusyError:
            return None  # a bot held a file past our busy timeout: retry
        except (CdcError, apsw.Error, OSError, *_pg_errors()) as e:
            now = read_record(self.cfg.state_dir, t)
            if now is not None and (now.finalizing_at is not None or now.state == "finalized"):
                log.info("backflow %s: stopped: `cdc finalize` closed the way back", t)
                if t in self.flows:
                    self.flows.pop(t).close()
                return None  # a step that met a file finalize had already released
            rt.last_error = f"{type(e).__name__}: {e}"
            log.error("backflow %s: %s", t, e)
            if t in self.flows:  # reopen: checkpoints are read again from the files
                self.flows.pop(t).close()
            return None


def _backflow(cfg: Config, plan: Plan, rec: CutoverRecord) -> backflow.Backflow:
    if is_postgres(rec.path):
        from cdc.cutover.pg_backflow import PgBackflow

        return PgBackflow(cfg, plan, rec)
    return backflow.Backflow(cfg, plan, rec)


def _pg_errors() -> tuple[type[Exception], ...]:
    """psycopg's errors, when a PostgreSQL target loaded it (a SQLite-only daemon never
    imports it)."""
    import sys

    psycopg = sys.modules.get("psycopg")
    return (psycopg.Error,) if psycopg is not None else ()
