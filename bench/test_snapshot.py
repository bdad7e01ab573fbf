"""Initial snapshot rows/s, against SQLite copying the same rows itself (goal: at least 0.5x).

The baseline is the fastest copy SQLite offers without our machinery: `ATTACH` the legacy
file and `INSERT INTO main.trades SELECT * FROM src.trades` in one transaction, into an
empty table of the same definition (same index) in a target opened the way our targets
are (`cdc.sqlconn.open_target`). Our pipeline has to do more (key-ordered chunks in short
read transactions, a framed and fsynced log, then the apply with its checkpoint), and
this says how much that costs. The benchmark times our pipeline from `install` to
'snapshot applied'; a baseline copy runs before each round (`Baseline`), and
`speed_ratio` = pipeline rows/s / baseline rows/s.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading

import apsw
import pytest

from bench.support import (
    TRADE_INSERT,
    TRADES_DDL,
    Baseline,
    Pipeline,
    copy_db,
    create_db,
    make_config,
    scaled,
    trade_rows,
    wait_until,
)
from cdc.capture import install as ops
from cdc.daemon.daemon import Daemon
from cdc.sqlconn import open_target
from verifier import compare_plan

ROWS = scaled(200_000, 2_000)
ROUNDS = 2
GOAL = 0.5


@pytest.fixture(scope="module")
def legacy_template(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("snapshot-template") / "legacy.db")
    create_db(path, "wal", TRADES_DDL)
    c = sqlite3.connect(path)
    with c:
        c.executemany(TRADE_INSERT, trade_rows(ROWS, seed=21))
    c.close()
    return path


def raw_copy(src: str, target: str) -> None:
    conn = open_target(target)
    try:
        conn.execute("ATTACH ? AS src", (src,))
        with conn:
            conn.execute("INSERT INTO main.trades SELECT * FROM src.trades")
        conn.execute("DETACH src")
    finally:
        conn.close()


def _round_dir(d, legacy_template: str, baseline: Baseline):
    """A round's folder: the raw baseline copy is timed first, then a fresh legacy copy."""
    d.mkdir()
    raw_target = str(d / "raw.db")
    c = open_target(raw_target)
    for stmt in TRADES_DDL:
        c.execute(stmt)
    c.close()
    baseline.run(raw_copy, legacy_template, raw_target)
    copy_db(legacy_template, d / "legacy.db")
    return d


def _record(benchmark, baseline: Baseline, **extra) -> float | None:
    """Ratio against the raw copy, plus rows/s on both sides, into extra_info."""
    ratio = baseline.record(benchmark, "speed_ratio", invert=True)
    if ratio is None:
        return None
    info = benchmark.extra_info
    info.update(
        rows=ROWS,
        rows_per_s=round(ROWS / info["median_s"]),
        baseline_rows_per_s=round(ROWS / info["baseline_median_s"]),
        goal_ratio=GOAL,
        meets_goal=ratio >= GOAL,
        **extra,
    )
    return ratio


def pipeline_snapshot(cfg) -> Pipeline:
    ops.install(cfg)
    p = Pipeline(cfg)
    try:
        p.run_snapshot()
    finally:
        p.close()
    return p


@pytest.mark.parametrize(
    ("chunk", "copy"),
    [(2_000, "reference"), (20_000, "reference"), (2_000, "log")],
    ids=["chunk2000", "chunk20000", "chunk2000-log"],
)
def test_snapshot_rows_per_second(benchmark, summary, legacy_template, tmp_path, chunk, copy):
    """Install + snapshot + apply of ROWS rows; `speed_ratio` vs a raw ATTACH copy. By
    reference (the default for a table this size), and through the log as before."""
    counter = itertools.count()
    baseline = Baseline()
    done: list[Pipeline] = []

    def setup():
        d = _round_dir(tmp_path / f"r{next(counter)}", legacy_template, baseline)
        legacy = {"legacy": str(d / "legacy.db")}
        return (make_config(d, legacy, snapshot_chunk=chunk, snapshot_copy=copy),), {}

    benchmark.group = "snapshot"
    benchmark.pedantic(lambda cfg: done.append(pipeline_snapshot(cfg)), setup=setup, rounds=ROUNDS)

    last = done[-1]
    assert last.snapshot_rows == ROWS and last.applied == ROWS
    diffs = [d for d in compare_plan(last.plan) if not d.equal]
    assert not diffs, diffs
    raw = apsw.Connection(str(tmp_path / "r0" / "raw.db"))
    assert raw.execute("SELECT count(*) FROM trades").fetchone()[0] == ROWS
    raw.close()
    ratio = _record(
        benchmark,
        baseline,
        snapshot_chunk=chunk,
        snapshot_copy=copy,
        snapshot_read_s=last.snapshot_s,
        apply_s=last.apply_s,
    )
    if ratio is None:
        return
    info = benchmark.extra_info
    summary(
        f"snapshot chunk={chunk:<6} {copy:<9}: {info['rows_per_s']:,} rows/s vs raw ATTACH copy "
        f"{info['baseline_rows_per_s']:,} rows/s = {ratio:.3f}x (goal >= {GOAL}x); "
        f"last round: read+log {last.snapshot_s:.2f} s, apply {last.apply_s:.2f} s"
    )


def daemon_snapshot(cfg) -> Daemon:
    """Install, start the real daemon (apply in its worker process), wait for the copy."""
    ops.install(cfg)
    daemon = Daemon(cfg)
    t = threading.Thread(target=daemon.run, kwargs={"install_signals": False})
    t.start()

    def copied() -> bool:
        end = daemon.writer.end_offset
        return all(not h.snapshot_pending for h in daemon.harvesters) and all(
            off >= end for off in daemon.target_offsets().values()
        )

    try:
        wait_until(lambda: copied() or not t.is_alive(), 300, 0.02, "the snapshot to apply")
    finally:
        daemon.stop_event.set()
        t.join(60)
    assert daemon.fatal is None, daemon.fatal
    return daemon


def test_daemon_snapshot_rows_per_second(benchmark, summary, legacy_template, tmp_path):
    """The same copy through the real daemon: reading and applying overlap on two cores."""
    counter = itertools.count()
    baseline = Baseline()
    done: list[Daemon] = []

    def setup():
        d = _round_dir(tmp_path / f"d{next(counter)}", legacy_template, baseline)
        return (make_config(d, {"legacy": str(d / "legacy.db")}),), {}

    benchmark.group = "snapshot"
    benchmark.pedantic(lambda cfg: done.append(daemon_snapshot(cfg)), setup=setup, rounds=ROUNDS)
    diffs = [d for d in compare_plan(done[-1].plan) if not d.equal]
    assert not diffs, diffs
    ratio = _record(benchmark, baseline)
    if ratio is None:
        return
    info = benchmark.extra_info
    summary(
        f"snapshot via daemon  : {info['rows_per_s']:,} rows/s vs raw ATTACH copy "
        f"{info['baseline_rows_per_s']:,} rows/s = {ratio:.3f}x (goal >= {GOAL}x), "
        "start to applied, apply in the worker process"
    )
