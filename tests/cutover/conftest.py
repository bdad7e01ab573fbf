"""What the cutover tests share: whether a cut-over stage's tables are equal on both sides."""

from __future__ import annotations

from pathlib import Path

import apsw

from cdc.config import load_config
from cdc.planning.resolve import resolve_plan
from verifier.compare import compare_table


def stage_equal(cfg_path: Path, target: str) -> list:
    """Every table of the stage: legacy == target (the legacy side is fenced, so quiet)."""
    cfg = load_config(cfg_path)
    plan = resolve_plan(cfg)
    bad = []
    for sp in plan.sources:
        src = apsw.Connection(sp.path, flags=apsw.SQLITE_OPEN_READONLY)
        tgt = apsw.Connection(plan.targets[target], flags=apsw.SQLITE_OPEN_READONLY)
        src.set_busy_timeout(10000)
        tgt.set_busy_timeout(10000)
        try:
            for m in sp.tables:
                if m.target == target:
                    d = compare_table(src, tgt, m)
                    if not d.equal:
                        bad.append(d)
        finally:
            src.close()
            tgt.close()
    return bad
