"""Install and uninstall capture across every source of a plan (the engine behind the CLI)."""

from __future__ import annotations

import logging
import os

import msgspec

from cdc.capture import triggers as capture
from cdc.config import Config, expand_sources
from cdc.cutover import target_capture
from cdc.guard import is_guard
from cdc.inventory import list_tables
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan
from cdc.sqlconn import open_legacy, open_target
from cdc.stages.record import finalized_sources

log = logging.getLogger(__name__)


class SourceInstall(msgspec.Struct):
    source: str
    path: str
    install_id: str
    captured: list[str]
    excluded: list[str]


class InstallReport(msgspec.Struct):
    sources: list[SourceInstall]

    @property
    def tables(self) -> int:
        return sum(len(s.captured) for s in self.sources)


def install(cfg: Config, plan: Plan | None = None) -> InstallReport:
    """Resolve the plan (failing before touching any file if it is wrong), then install."""
    plan = plan or resolve_plan(cfg)
    released = finalized_sources(cfg.state_dir)
    out = []
    for sp in plan.sources:
        if not sp.tables or sp.name in released:
            continue
        conn = open_legacy(sp.path, cfg.daemon.busy_timeout_ms)
        try:
            wanted = {m.table for m in sp.tables}
            infos = [t for t in list_tables(conn) if t.name in wanted]
            iid = capture.install(conn, infos, sp.path, sp.needs_unique_probes())
        finally:
            conn.close()
        out.append(SourceInstall(sp.name, sp.path, iid, sorted(wanted), sp.excluded))
        log.info("source %s: capturing %d tables", sp.name, len(wanted))
    return InstallReport(out)


class SourceUninstall(msgspec.Struct):
    source: str
    path: str
    tables_released: int


def uninstall(cfg: Config, plan: Plan | None = None) -> list[SourceUninstall]:
    out = []
    for name, path, _required in expand_sources(cfg):
        if not os.path.exists(path) or is_guard(path):
            continue  # nothing to uninstall: a missing file, or a finalized source's guard
        # anything else that cannot be opened (read-only, corrupt, not a database) is said,
        # not skipped: its triggers would stay behind unnoticed
        conn = open_legacy(path, cfg.daemon.busy_timeout_ms)
        try:
            n = capture.uninstall(conn)
        finally:
            conn.close()
        out.append(SourceUninstall(name, path, n))
    for name, path in sorted(cfg.targets.items()):
        # A cutover leaves capture (and, after a rollback, fences) on the target's tables:
        # with the legacy side gone, nothing would ever read or trim it.
        if not os.path.exists(path):
            continue
        conn = open_target(path, cfg.daemon.busy_timeout_ms)
        try:
            n = target_capture.remove_target_capture(conn)
            if n:
                out.append(SourceUninstall(f"target {name}", path, n))
        finally:
            conn.close()
    return out
