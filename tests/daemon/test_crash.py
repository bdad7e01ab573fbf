"""Kill -9 at any instant, restart, and the targets converge exactly; nothing applied twice.

Bots (real processes) write to three legacy files (two rollback-journal, one WAL; two bots
share one file; they add columns as they go) while the daemon is SIGKILLed and restarted,
over and over. Most kills are aimed: the daemon is armed with a crash point (`cdc.faults`:
inside a harvest, half-way through a log append, inside a trim, between applying rows and
writing the checkpoint, ...) and kills itself there with a real SIGKILL; the others land
at a random moment. At the end the targets must equal the sources by key, value and
storage class; the log must hold every source sequence once (no duplicate harvest); and
each target must have applied exactly the events the log holds for it (no duplicate apply).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from cdc.changelog.retained import RetainedLog
from cdc.config import load_config
from cdc.faults import POINTS
from cdc.planning.resolve import resolve_plan
from checkpoints.store import TABLE
from replicator.worker import read_apply_status
from tests.conftest import SOAK_SCALE, wait_until
from tests.support import workload
from tests.support.logcount import count_log
from verifier import compare_plan

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
analytics = "out/analytics.db"
[daemon]
harvest_batch = 500
snapshot_chunk = 50
apply_batch = 700
segment_bytes = 65536
trim_interval = 0.2
[log]
retention = "archive"  # segments roll and are retired all the time, yet stay countable
[[sources]]
name = "alpha"
path = "legacy/alpha.db"
[[sources]]
name = "beta"
path = "legacy/beta.db"
[[sources]]
name = "gamma"
path = "legacy/gamma.db"
[[rules]]
table = "positions"
target = "core"
merge = true
tag_column = "bot"
[[rules]]
table = "kv"
target = "core"
as = "{source}_kv"
[[rules]]
table = "ticks"
target = "analytics"
merge = true
[[rules]]
table = "log_lines"
target = "analytics"
as = "{source}_log"
[[rules]]
table = "extra_*"
target = "analytics"
as = "{source}_{table}"
"""


def _setup(root: Path) -> Path:
    seed = "".join(
        f"INSERT INTO positions(symbol, qty, px) VALUES ('P{i}', {i}, {i * 0.5});"
        f"INSERT INTO log_lines VALUES ('seed', {i});"
        for i in range(300)
    )
    return workload.setup(root, CONFIG, seed)


def _assert_no_duplicates(cfg_path: Path) -> None:
    cfg = load_config(cfg_path)
    plan = resolve_plan(cfg)
    assert RetainedLog.of(cfg).start() == 0, "the archive lost a segment"
    counted = count_log(cfg, plan)
    assert counted.repeats == [], f"duplicate harvest {counted.repeats[:3]}"
    per_target = counted.per_target
    import apsw

    for name, path in plan.targets.items():
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        applied = conn.execute(f"SELECT events FROM {TABLE}").fetchone()[0]
        conn.close()
        assert applied == per_target[name], (
            f"{name}: applied {applied}, log holds {per_target[name]}"
        )


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # reaped or zombie
    except FileNotFoundError:
        return True


AIMED = list(POINTS)


def _kill_once(cfg: Path, daemons, rnd: random.Random, point: str | None) -> str:
    """Start the daemon, let it die at `point` (or kill it at a random moment, also when
    the point is not reached in time), wait for its apply worker; returns where it died."""
    env = {"CDC_CRASH_AT": f"{point}:{rnd.randint(1, 3)}"} if point else {}
    d = daemons(cfg, extra_env=env)
    try:
        # An aimed point gets time for the daemon to start (~1 s) and reach it; log
        # segments are retired every 5 s (`replicator.loop.GC_INTERVAL`).
        wait = {"gc": 7.0, None: rnd.uniform(0.15, 1.2)}.get(point, rnd.uniform(1.5, 5.0))
        code = d.proc.wait(timeout=wait)
        assert code == -signal.SIGKILL and f"crash point {point!r}" in d.output(), d.output()
        where = point
    except subprocess.TimeoutExpired:
        where = "random moment"
    worker = read_apply_status(str(cfg.parent / "state"))
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL, d.output()
    if worker is not None and worker.pid:
        # The apply worker sees EOF on its pipe and exits by itself: never an orphan.
        wait_until(lambda w=worker: _exited(w.pid), 30, 0.05, "the orphaned apply worker to exit")
    return str(where)


def _kill_loop(cfg: Path, daemons, kills: int, rnd: random.Random) -> Counter:
    """Aimed kills cycle through every crash point (in a shuffled order each round); every
    fourth kill is a plain random-moment SIGKILL."""
    where: Counter = Counter()
    order: list[str] = []
    for i in range(kills):
        if not order:
            order = rnd.sample(AIMED, len(AIMED))
        point = None if i % 4 == 3 else order.pop()
        where[_kill_once(cfg, daemons, rnd, point)] += 1
    return where


def _run(tmp_path, daemons, kills: int, seed: int) -> None:
    cfg = _setup(tmp_path)
    rnd = random.Random(seed)
    bots = workload.start(tmp_path, ["alpha", "alpha", "beta", "gamma"], seconds=600, alter=True)
    try:
        where = _kill_loop(cfg, daemons, kills, rnd)
    finally:
        for b in bots:
            b.send_signal(signal.SIGTERM)
    print(f"{kills} kills: {dict(where)}")
    stats = [json.loads(b.communicate(timeout=60)[0]) for b in bots]
    print(f"bots: {stats}")
    assert all(b.returncode == 0 for b in bots)
    assert sum(s["ops"] for s in stats) > 100
    assert [s["errors"] for s in stats] == [0] * len(stats), stats  # bots never fail
    if kills >= 2 * len(AIMED):  # each point was aimed at twice: most must have been hit
        hit = {p for p in AIMED if where[p]}
        assert len(hit) >= len(AIMED) - 2, f"crash points never reached: {set(AIMED) - hit}"

    d = daemons(cfg)
    d.wait_synced(timeout=120)
    assert d.stop() == 0, d.output()
    plan = resolve_plan(load_config(cfg))
    bad = [x for x in compare_plan(plan) if not x.equal]
    assert bad == [], bad[:3]
    _assert_no_duplicates(cfg)


def test_sigkill_during_bot_load_converges(tmp_path, daemons):
    _run(tmp_path, daemons, kills=8, seed=1)


@pytest.mark.slow
def test_sigkill_soak(tmp_path, daemons):
    """At least 50 kills, also in CI's bounded run (`CDC_SOAK_SCALE`); `make soak` runs 250."""
    _run(tmp_path, daemons, kills=max(50, int(250 * SOAK_SCALE)), seed=2)
