"""Changes per second through harvest -> change log -> apply (goal: at least 100k/s).

A legacy file with three bot-like tables (an AUTOINCREMENT table with an index, a TEXT-keyed
table written with INSERT OR REPLACE, a WITHOUT ROWID table with a BLOB) is captured while
empty, its snapshot is taken (trivially), and then bots make CHANGES inserts, updates and
deletes. That file and its log are the template; each round starts from a copy of both and
a fresh target, and times the daemon's two halves, driven in-process as the daemon drives
them (`Harvester.harvest` per batch, then `Replicator.step` until caught up), until the
target has every change. The split between harvest and apply time is in `extra_info`.

`test_daemon_drains_backlog` times the same backlog through the real `Daemon` (its harvest
and apply threads, watchdog on), from start until the target is caught up: what an
operator sees after the daemon was down for a while.

"Changes" are capture rows (one per row written by a bot statement); "events" are log
frames, fewer because several changes to one key within a batch collapse into one.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sqlite3
import statistics
import threading

import apsw
import pytest

from bench.support import (
    SYMBOLS,
    TRADE_INSERT,
    TRADES_DDL,
    Pipeline,
    create_db,
    install_capture,
    make_config,
    scaled,
    trade_row,
    wait_until,
)
from cdc.daemon.daemon import Daemon
from verifier import compare_plan

CHANGES = scaled(200_000, 2_000)
COMMIT_EVERY = 500  # changes per bot transaction while building the template
ROUNDS = 2
GOAL = 100_000

DDL = (
    *TRADES_DDL,
    """CREATE TABLE positions (
    id TEXT PRIMARY KEY,
    wallet TEXT NOT NULL,
    symbol TEXT NOT NULL,
    qty REAL,
    avg_price REAL,
    pnl REAL,
    updated_at TEXT DEFAULT CURRENT_TIMESTAMP
)""",
    """CREATE TABLE fills (
    trade_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    px REAL NOT NULL,
    qty REAL NOT NULL,
    sig BLOB,
    PRIMARY KEY (trade_id, n)
) WITHOUT ROWID""",
)
TABLES = ["fills", "positions", "trades"]


def bot_changes(path: str, n: int, seed: int = 11) -> None:
    """n single-row changes in a bot-like mix, committed every COMMIT_EVERY changes.

    Per 20 changes: 10 trade inserts, 3 trade updates, 1 trade delete, 2 position
    upserts (REPLACE), 2 position updates, 2 fill inserts.
    """
    rng = random.Random(seed)
    live: list[int] = []
    next_id = 1
    positions: list[str] = []
    fill_n = itertools.count()
    mix = ["ti"] * 10 + ["tu"] * 3 + ["td"] + ["pr"] * 2 + ["pu"] * 2 + ["fi"] * 2
    conn = sqlite3.connect(path)
    done = 0
    while done < n:
        with conn:
            for _ in range(min(COMMIT_EVERY, n - done)):
                op = mix[done % len(mix)]
                done += 1
                if op in ("tu", "td") and not live:
                    op = "ti"
                if op == "pu" and not positions:
                    op = "pr"
                if op == "ti":
                    conn.execute(TRADE_INSERT, trade_row(rng))
                    live.append(next_id)
                    next_id += 1
                elif op == "tu":
                    conn.execute(
                        "UPDATE trades SET price = ?, status = ? WHERE id = ?",
                        (rng.random(), rng.choice(("open", "closed")), rng.choice(live)),
                    )
                elif op == "td":
                    i = rng.randrange(len(live))
                    live[i], live[-1] = live[-1], live[i]
                    conn.execute("DELETE FROM trades WHERE id = ?", (live.pop(),))
                elif op == "pr":
                    key = f"pos-{rng.randrange(scaled(20_000, 100)):05d}"
                    conn.execute(
                        "INSERT OR REPLACE INTO positions (id, wallet, symbol, qty, avg_price, pnl) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            key,
                            f"W{rng.randrange(50):02d}",
                            rng.choice(SYMBOLS),
                            rng.random() * 1e3,
                            rng.lognormvariate(-3, 2),
                            None if rng.random() < 0.2 else rng.gauss(0, 50),
                        ),
                    )
                    positions.append(key)
                elif op == "pu":
                    conn.execute(
                        "UPDATE positions SET qty = qty + 1, pnl = ? WHERE id = ?",
                        (rng.gauss(0, 50), rng.choice(positions)),
                    )
                else:
                    conn.execute(
                        "INSERT INTO fills VALUES (?, ?, ?, ?, ?)",
                        (
                            rng.choice(live) if live else 0,
                            next(fill_n),
                            rng.random(),
                            rng.random() * 10,
                            rng.randbytes(rng.choice((0, 16, 64))),
                        ),
                    )
    conn.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """legacy.db with CHANGES captured changes + a log whose snapshots are done."""
    root = tmp_path_factory.mktemp("e2e-template")
    legacy = str(root / "legacy.db")
    create_db(legacy, "wal", DDL)
    install_capture(legacy, TABLES)
    p = Pipeline(make_config(root, {"bots": legacy}))
    p.run_snapshot()  # empty tables: cursors done, schemas logged
    p.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(root / f"target.db{suffix}"):
            os.unlink(root / f"target.db{suffix}")
    bot_changes(legacy, CHANGES)
    c = apsw.Connection(legacy)
    changes, max_seq = c.execute("SELECT count(*), max(seq) FROM _cdc_changes").fetchone()
    c.close()
    return root, changes, max_seq


def copy_template(root, d):
    """A round's own legacy file and log, copied from the template; a fresh target."""
    d.mkdir()
    shutil.copyfile(root / "legacy.db", d / "legacy.db")
    shutil.copytree(root / "state", d / "state")
    return make_config(d, {"bots": str(d / "legacy.db")})


def test_end_to_end_changes_per_second(benchmark, summary, template, tmp_path):
    """Wall time from 'changes captured' to 'target caught up', harvest and apply in turn."""
    root, changes, _ = template
    counter = itertools.count()
    done: list[Pipeline] = []

    def setup():
        return (Pipeline(copy_template(root, tmp_path / f"r{next(counter)}")),), {}

    def run(p: Pipeline) -> None:
        p.run_stream()
        done.append(p)

    benchmark.group = "end to end"
    benchmark.pedantic(run, setup=setup, teardown=Pipeline.close, rounds=ROUNDS)

    last = done[-1]
    last.close()  # again: --benchmark-disable skips teardown
    assert last.applied == last.events > 0
    diffs = [d for d in compare_plan(last.plan) if not d.equal]
    assert not diffs, diffs
    if benchmark.stats is None:
        return
    median = benchmark.stats.stats.median
    harvest_s = statistics.median(p.harvest_s for p in done)
    apply_s = statistics.median(p.apply_s for p in done)
    info = benchmark.extra_info
    info.update(
        changes=changes,
        events=last.events,
        changes_per_s=round(changes / median),
        events_per_s=round(last.events / median),
        harvest_only_changes_per_s=round(changes / harvest_s),
        apply_only_events_per_s=round(last.events / apply_s),
        apply_only_changes_per_s=round(changes / apply_s),
        harvest_s_median=harvest_s,
        apply_s_median=apply_s,
        goal_changes_per_s=GOAL,
        meets_goal=changes / median >= GOAL,
    )
    summary(
        f"end to end: {info['changes_per_s']:,} changes/s ({changes:,} changes -> "
        f"{last.events:,} events, median {median:.2f} s; goal {GOAL:,}/s); "
        f"harvest only {info['harvest_only_changes_per_s']:,} changes/s, "
        f"apply only {info['apply_only_events_per_s']:,} events/s"
    )


def test_daemon_drains_backlog(benchmark, summary, template, tmp_path):
    """The same backlog through `Daemon.run` (threads, watchdog): start to caught up."""
    root, changes, max_seq = template
    counter = itertools.count()
    runs: list[tuple[Daemon, threading.Thread]] = []

    def caught_up(daemon: Daemon) -> bool:
        end = daemon.writer.end_offset
        return all(h.position.through_seq >= max_seq for h in daemon.harvesters) and all(
            off >= end for off in daemon.target_offsets().values()
        )

    def setup():
        return (Daemon(copy_template(root, tmp_path / f"r{next(counter)}")),), {}

    def drain(daemon: Daemon) -> None:
        t = threading.Thread(target=daemon.run, kwargs={"install_signals": False})
        runs.append((daemon, t))
        t.start()
        wait_until(lambda: caught_up(daemon) or not t.is_alive(), 300, 0.02, "daemon to catch up")

    def stop(daemon: Daemon) -> None:
        daemon.stop_event.set()
        runs[-1][1].join(60)
        assert daemon.fatal is None, daemon.fatal

    benchmark.group = "end to end"
    benchmark.pedantic(drain, setup=setup, teardown=stop, rounds=3)

    daemon = runs[-1][0]
    stop(daemon)  # again: --benchmark-disable skips teardown
    assert caught_up(daemon)
    diffs = [d for d in compare_plan(daemon.plan) if not d.equal]
    assert not diffs, diffs
    if benchmark.stats is None:
        return
    median = benchmark.stats.stats.median
    info = benchmark.extra_info
    info.update(
        changes=changes,
        changes_per_s=round(changes / median),
        goal_changes_per_s=GOAL,
        meets_goal=changes / median >= GOAL,
    )
    summary(
        f"daemon drains backlog: {info['changes_per_s']:,} changes/s "
        f"({changes:,} changes, median {median:.2f} s)"
    )
