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


def wait_fences_applied(
    applied: Callable[[], dict[str, int]],
    rec,
    deadline: float,
    timeout: float,
    poll: float,  # noqa: ANN001
) -> None:
    """Wait until the target applied every source of `rec` up to its fence sequence;
    `applied` reads the target's sequence per source (each engine its own way, on a
    connection opened before the fence)."""
    from cdc.errors import TargetError

    while True:
        done = applied()
        behind = [m for m in rec.fences if done.get(m.source, 0) < m.fence_seq]
        if not behind:
            return
        if time.monotonic() > deadline:
            m = behind[0]
            raise TargetError(
                f"{rec.target} did not apply {m.source} up to its fence "
                f"(sequence {m.fence_seq}) within {timeout:.0f}s"
            )
        time.sleep(poll)
