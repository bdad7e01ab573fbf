"""Named crash points, so kill tests can SIGKILL the daemon exactly where it hurts most.

A SIGKILL sent from outside at a random moment lands where the daemon spends its time
(waiting); the windows that matter (between a log write and its fsync, between applying
rows and committing the checkpoint, inside a trim) are microseconds wide and are almost
never hit. With `CDC_CRASH_AT="trim:3"` the process kills itself with a real SIGKILL the
third time it passes the `trim` point: same signal, same kernel clean-up, chosen moment.
Several points may be given (`"append:2,apply:5"`); the first one reached fires.

Unset (every real run) a crash point is one falsy check. The apply worker is a separate
process: a point reached there kills the daemon first, since the operator's "kill -9 the
daemon" (or an OOM kill of the service's cgroup) takes both.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from cdc.errors import ConfigError

POINTS = (
    "harvest",  # captured rows read, nothing appended yet
    "schema",  # a changed table's schema frame is about to be appended
    "snapshot",  # a snapshot chunk read, not yet appended
    "append",  # part of a batch written to the log, not fsynced, no mark yet
    "appended",  # batch durable in the log, the harvester's position not yet moved
    "trim",  # inside the trim's write transaction on the legacy file, before COMMIT
    "install",  # capture (re)installed on a new or re-created table, before its snapshot
    "staged",  # copied ranges' rows read from their legacy files, apply not begun
    "apply",  # rows applied in the target transaction, checkpoint not yet written
    "checkpoint",  # checkpoint written in the same transaction, before COMMIT
    "committed",  # target transaction committed, the replicator's memory not updated
    "gc",  # between deleting two applied log segments
)

_armed: dict[str, int] = {}
kill_parent = 0  # the apply worker sets its daemon's pid: a crash there takes the daemon too


def arm(spec: str) -> None:
    """Parse `point:count[,point:count...]` (count defaults to 1) into the armed set."""
    _armed.clear()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in POINTS:
            raise ConfigError(
                f"CDC_CRASH_AT: unknown crash point {name!r}", hint=f"one of {', '.join(POINTS)}"
            )
        try:
            _armed[name] = max(1, int(count or "1"))
        except ValueError:
            raise ConfigError(f"CDC_CRASH_AT: {part!r}: the count must be an integer") from None


def crash_point(name: str, before: Callable[[], object] | None = None) -> None:
    """SIGKILL this process (and, in the apply worker, the daemon) on the armed passage;
    `before` runs first (to leave half a write behind, say)."""
    if not _armed or name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] > 0:
        return
    os.write(2, f"cdc: crash point {name!r} reached: SIGKILL\n".encode())
    if before is not None:
        before()
    if kill_parent and os.getppid() == kill_parent:  # never whoever adopted an orphan
        os.kill(kill_parent, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


arm(os.environ.get("CDC_CRASH_AT", ""))
