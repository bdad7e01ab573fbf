"""What every cutover step shares, whichever the target's engine: the error, the test
hook that kills the process after a step, the step clock, the fences' messages."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from cdc.errors import CdcError
from cdc.planning.plan import Plan, TableMapping


class CutoverError(CdcError):
    """A cutover step could not complete; the record says where it stands."""

    exit_code = 12


def step_done(step: str) -> None:
    if os.environ.get("CDC_TEST_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


Echo = Callable[[str], None]


def moved(plan: Plan, tables: list[TableMapping]) -> dict[str, dict[str, str]]:
    """By legacy file, each table's new home, as a fence's message names it."""
    by_source: dict[str, dict[str, str]] = {}
    for m in tables:
        where = f"{plan.targets[m.target]} (table {m.target_table}"
        where += f", {m.tag_column} = '{m.tag}')" if m.tag_column else ")"
        by_source.setdefault(m.source, {})[m.table] = where
    return by_source


class Clock:
    """Times the steps under a fence into `steps` (ms), for the record."""

    def __init__(self, steps: dict[str, float]) -> None:
        self.steps, self.t = steps, time.monotonic()

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self.steps[step] = round((now - self.t) * 1000.0, 2)
        self.t = now
