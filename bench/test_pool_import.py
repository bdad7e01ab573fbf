"""What `from cdc import pool` costs a bot process at start-up, against `import sqlite3`.

A bot switched to the pool replaces `import sqlite3` with `from cdc import pool`; this is the
price of that line. Each round runs two fresh interpreters (`python -c`) side by side (A B A
B, `Baseline`): one runs `import sqlite3`, the other `from cdc import pool`. Each child times
its own import statement with `perf_counter` (the interpreter's start-up, the same on both
sides, is left out) and reports the modules it loaded and its RSS afterwards
(`/proc/self/statm`). pytest-benchmark times the whole child process (start-up included),
which is the second ratio reported. Each pool child runs right after a sqlite3 child, so
both meet the same load; the first 2 pairs are warm-ups, and medians are reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bench.support import Baseline, scaled

REPO = Path(__file__).resolve().parents[1]
ROUNDS = scaled(30, 5)
WARMUP = 2
SIDES = {"sqlite3": "import sqlite3", "pool": "from cdc import pool"}

_CHILD = r"""
import os, sys, time
before = len(sys.modules)
t = time.perf_counter()
exec(sys.argv[1])
took = time.perf_counter() - t
loaded = len(sys.modules) - before
with open("/proc/self/statm") as f:
    rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
import json
print(json.dumps({"import_s": took, "modules": loaded, "rss": rss}))
"""


def _child(statement: str, sink: list[dict]) -> None:
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, statement],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert r.returncode == 0, r.stderr
    sink.append(json.loads(r.stdout))


def test_pool_import_vs_sqlite3(benchmark, summary):
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/statm")
    baseline = Baseline(warmup_rounds=WARMUP)
    seen: dict[str, list[dict]] = {side: [] for side in SIDES}

    def setup() -> None:
        baseline.run(_child, SIDES["sqlite3"], seen["sqlite3"])

    benchmark.group = "import in a fresh process"
    benchmark.pedantic(
        _child,
        args=(SIDES["pool"], seen["pool"]),
        setup=setup,
        rounds=ROUNDS,
        warmup_rounds=WARMUP,
        iterations=1,
    )
    wall_ratio = baseline.record(benchmark, "process_wall_ratio")
    if wall_ratio is None:
        return
    med = {
        side: {k: statistics.median(r[k] for r in runs[WARMUP:]) for k in runs[0]}
        for side, runs in seen.items()
    }
    pool, base = med["pool"], med["sqlite3"]
    ratio = pool["import_s"] / base["import_s"]
    figures = {
        "import_ms_pool": round(pool["import_s"] * 1e3, 2),
        "import_ms_sqlite3": round(base["import_s"] * 1e3, 2),
        "import_ratio": round(ratio, 2),
        "import_ms_pool_min": round(min(r["import_s"] for r in seen["pool"][WARMUP:]) * 1e3, 2),
        "import_ms_sqlite3_min": round(
            min(r["import_s"] for r in seen["sqlite3"][WARMUP:]) * 1e3, 2
        ),
        "modules_pool": pool["modules"],
        "modules_sqlite3": base["modules"],
        "rss_mib_pool": round(pool["rss"] / 2**20, 2),
        "rss_mib_sqlite3": round(base["rss"] / 2**20, 2),
        "rounds": len(seen["pool"]) - WARMUP,
    }
    benchmark.extra_info.update(figures)
    summary(
        f"pool import (median of {figures['rounds']} fresh processes each): "
        f"`from cdc import pool` {figures['import_ms_pool']:.1f} ms "
        f"({figures['modules_pool']:.0f} modules, RSS {figures['rss_mib_pool']:.1f} MiB), "
        f"`import sqlite3` {figures['import_ms_sqlite3']:.1f} ms "
        f"({figures['modules_sqlite3']:.0f} modules, RSS {figures['rss_mib_sqlite3']:.1f} MiB): "
        f"{ratio:.1f}x; whole process (start-up included) {wall_ratio:.2f}x "
        f"({benchmark.stats.stats.median * 1e3:.0f} vs {baseline.median * 1e3:.0f} ms)"
    )
