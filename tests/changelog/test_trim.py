"""The trim of harvested capture rows holds the bots' write lock one slice at a time.

One unbounded DELETE of a million harvested rows held a bot's write for about half a
second (bench/README.md, "Trim"). Now every write transaction of the trim deletes at most
`trim_slice` rows and lets go of the lock before the next. What is checked here does not
depend on how fast the machine is: the rows each write transaction deleted (SQLite's
commit hook, on the harvester's own connection), the rows left after a kill inside the
second slice, and a bot process that commits between two slices. How long a slice holds
the lock is measured in bench/.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

from cdc.config import load_config
from cdc.planning.resolve import resolve_plan
from tests.conftest import cdc_cmd, make_db, wait_until, write_config
from verifier import compare_plan

SCHEMA = "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);"
CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
trim_slice = {slice}
trim_interval = {interval}
harvest_batch = 1000000
[[sources]]
name = "bot"
path = "legacy/bot.db"
[[rules]]
table = "*"
target = "core"
"""


def _setup(tmp_path, rows: int, slice_: int, interval: float = 0.0):
    db = make_db(tmp_path / "legacy" / "bot.db", SCHEMA)
    cfg = write_config(tmp_path, CONFIG.format(slice=slice_, interval=interval))
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("BEGIN")
    c.executemany("INSERT INTO kv VALUES (?, 'x')", ((i,) for i in range(1, rows + 1)))
    c.execute("COMMIT")
    c.close()
    return cfg, db


def _capture_bounds(db) -> tuple[int, int, int]:
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT min(seq), max(seq), count(*) FROM _cdc_changes").fetchone()
    finally:
        c.close()


def _unequal(cfg) -> list:
    return [d for d in compare_plan(resolve_plan(load_config(cfg))) if not d.equal]


def test_a_trim_deletes_one_slice_per_write_transaction(tmp_path, pipeline_for):
    cfg, db = _setup(tmp_path, 100_000, 10_000)
    p = pipeline_for(cfg)
    (h,) = p.harvesters
    deleted: list[int] = []
    last = [h.conn.total_changes()]

    def on_commit() -> bool:  # SQLite calls it inside each COMMIT, before it happens
        now = h.conn.total_changes()
        if now > last[0]:
            deleted.append(now - last[0])
        last[0] = now
        return False  # go on with the commit

    h.conn.set_commit_hook(on_commit)
    p.sync()  # the harvest writes the batch, then trims: trim_interval is 0
    h.conn.set_commit_hook(None)
    assert len(deleted) == 10 and max(deleted) == 10_000, deleted
    assert sum(deleted) == 99_999  # the newest row stays, so the numbering never restarts
    assert _capture_bounds(db) == (100_000, 100_000, 1)
    assert p.diffs() == []


def test_a_kill_inside_the_second_slice_keeps_the_first(tmp_path, daemons):
    """Each slice commits on its own: a SIGKILL inside the second leaves the first done and
    the rest of the harvested rows in place, and the next start trims them."""
    cfg, db = _setup(tmp_path, 5000, 1000, interval=1.0)
    d = daemons(cfg, extra_env={"CDC_CRASH_AT": "trim:2"})
    d.proc.wait(timeout=60)
    assert d.kill() == -signal.SIGKILL, d.output()
    assert _capture_bounds(db) == (1001, 5000, 4000)  # one slice of 1000 went, no more
    d = daemons(cfg)
    wait_until(lambda: _capture_bounds(db)[2] == 1, 60, what="the rest of the trim")
    d.wait_synced()
    assert d.stop() == 0, d.output()
    assert _capture_bounds(db) == (5000, 5000, 1)
    assert _unequal(cfg) == []


BOT = """
import os, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
i = 10**9
while not os.path.exists(sys.argv[2]):
    c.execute("BEGIN IMMEDIATE")
    (low,) = c.execute("SELECT min(seq) FROM _cdc_changes").fetchone()
    c.execute("INSERT INTO kv VALUES (?, 'bot')", (i,))
    c.execute("COMMIT")
    print(low, flush=True)
    i += 1
    time.sleep(0.001)
"""


def test_a_bot_process_commits_between_slices(tmp_path, pipeline_for):
    """A bot writing while 200k rows are trimmed gets its writes in before the trim is
    over: it sees capture rows of which only some slices are gone, a state one DELETE
    never shows (its rows are at 1 until the trim commits, past 200000 after)."""
    rows, slice_ = 200_000, 1000
    cfg, db = _setup(tmp_path, rows, slice_)
    p = pipeline_for(cfg)
    stop = tmp_path / "stop-bot"
    bot = subprocess.Popen(
        [sys.executable, "-c", BOT, str(db), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: _capture_bounds(db)[1] > rows, 30, what="the bot's first write")
        p.snapshot()
        while _capture_bounds(db)[0] <= rows:  # a busy trim is deferred to the next harvest
            p.harvest()
    finally:
        stop.touch()
        out, _ = bot.communicate(timeout=60)
    assert bot.returncode == 0
    seen = [int(v) for v in out.split()]
    between = [v for v in seen if 1 < v < rows]
    assert between, f"the bot saw only {sorted(set(seen))[:5]}... of {len(seen)} writes"
    assert all((v - 1) % slice_ == 0 for v in between), between  # slice bounds, no other
    p.sync()
    assert p.diffs() == []
