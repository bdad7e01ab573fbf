"""The lines a supervisor and an operator expect from `cdc run`: one when the daemon is
up, one when it stops (or starts over to capture new tables), with no `-v` needed.

They go through their own logger, `cdc.lifecycle`, which `cdc.log_output.configure`
keeps at INFO whatever the level, so the default output stays quiet otherwise (nothing
until something goes wrong) and `--log-format json` ships them like any other record.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

from cdc.errors import CdcError
from cdc.log_output import LIFECYCLE

log = logging.getLogger(LIFECYCLE)


def announce_up(
    sources: int, targets: Iterable[str], state_dir: str, metrics_url: str | None
) -> None:
    names = sorted(targets)
    log.info(
        "daemon up: pid %d, %d sources, %d targets (%s), state dir %s, metrics %s",
        os.getpid(),
        sources,
        len(names),
        ", ".join(names),
        os.path.abspath(state_dir),
        metrics_url or "off (no --metrics-addr)",
    )


def announce_stop(code: int, started_at: float, fatal: CdcError | None, replan: bool) -> None:
    ran = f"after {time.time() - started_at:.1f} s"
    if fatal is not None:
        log.info("daemon stopped on an error, exit %d (%s): %s", code, ran, fatal)
    elif replan:
        log.info("daemon starting over to capture new tables (%s; pid %d)", ran, os.getpid())
    else:
        log.info("daemon stopped, exit %d (%s; pid %d)", code, ran, os.getpid())
