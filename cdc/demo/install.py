"""`cdc install` as the demo runs it, once at start; a table a bot creates later is the
daemon's to adopt (`cdc.demo.adoption`)."""

from __future__ import annotations

import os
from pathlib import Path

from cdc.capture.install import install
from cdc.config import Config
from cdc.demo.show import Echo
from cdc.planning.plan import Plan


def _install(cfg: Config, plan: Plan, echo: Echo) -> None:
    report = install(cfg, plan)
    for s in report.sources:
        rel = os.path.relpath(s.path, Path(cfg.config_path).parent)
        echo(
            f"  {s.source}: capturing {len(s.captured)} tables, {len(s.excluded)} excluded ({rel})"
        )
    echo(f"  installed: {report.tables} tables in {len(report.sources)} databases")
