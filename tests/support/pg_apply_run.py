"""Applies a change log into a PostgreSQL target a few frames at a time, as a process a
test kills with SIGKILL at any instant: `python -m tests.support.pg_apply_run CONFIG`."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from cdc.changelog.segments import LogReader
from cdc.errors import TargetBusyError
from replicator.pg_apply import PgTarget
from tests.support.pg_world import load


def main() -> int:
    cfg, plan = load(Path(sys.argv[1]))
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    target = PgTarget("core", cfg.targets["core"])
    reader = LogReader(cfg.log_dir)
    while True:
        try:
            cp = target.load()
            entries = reader.read(cp.offset, None, max_frames=frames)
            if not entries:
                return 0
            target.apply(plan, entries, cp)
        except TargetBusyError:
            time.sleep(0.2)
        time.sleep(random.random() * 0.01)


if __name__ == "__main__":
    sys.exit(main())
