"""What our capture triggers cost a legacy bot, per write, in both journal modes.

The bots are the production system: capture is only acceptable if it keeps their writes
cheap (budget: at most 1.3x per single-row commit, 1.5x for a bulk insert). The benchmark
times a round of writes with the triggers installed; before each such round the same
writes run without triggers (`Baseline`), each round on a fresh file, so `trigger_ratio`
(median with / median without) compares rounds that ran side by side. Interleaving
matters here: a commit costs an fsync, and fsync latency on this VM drifts a lot. Each
commit is also timed alone, and `commit_ratio` compares the median commit with and
without triggers over all rounds, which a few slow fsyncs cannot skew.

The writer is stdlib `sqlite3` with the driver's defaults (implicit transactions,
`synchronous=FULL`), committing the way the bots do; the `insert1_reconnect` shape also
opens a new connection per commit, the bots' habit, which makes SQLite re-read the schema
(our four triggers per table included) on every write. The `*_unique` shapes write a table
that also has a UNIQUE index, which gets two extra probing triggers.
"""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import statistics
import time

import pytest

from bench.support import (
    TRADE_INSERT,
    TRADES_DDL,
    Baseline,
    create_db,
    install_capture,
    scaled,
    trade_rows,
)

SINGLE_COMMITS = scaled(70, 10)
BULK_ROWS = scaled(20_000, 100)
PREFILL = max(2_000, SINGLE_COMMITS)  # rows present before an UPDATE/DELETE round
ROUNDS = 13
WARMUP = 1

# Each write function times its own commits into `lat` (the bulk shape has one commit), so
# besides the round medians there is a median per commit over all rounds: a handful of
# slow fsyncs move a round's total but barely move that median.


def insert1(conn: sqlite3.Connection, rows: list[tuple], lat: list[float], **_) -> None:
    for r in rows:
        t = time.perf_counter()
        with conn:
            conn.execute(TRADE_INSERT, r)
        lat.append(time.perf_counter() - t)


def insert1_reconnect(
    conn: sqlite3.Connection, rows: list[tuple], lat: list[float], path: str, **_
) -> None:
    for r in rows:
        t = time.perf_counter()
        c = sqlite3.connect(path, timeout=5.0)
        try:
            with c:
                c.execute(TRADE_INSERT, r)
        finally:
            c.close()
        lat.append(time.perf_counter() - t)


def update1(
    conn: sqlite3.Connection, ids: list[int], rows: list[tuple], lat: list[float], **_
) -> None:
    # Changes an indexed column too, as a bot closing a position does.
    for i, r in zip(ids, rows, strict=True):
        t = time.perf_counter()
        with conn:
            conn.execute("UPDATE trades SET price = ?, status = ? WHERE id = ?", (r[3], r[6], i))
        lat.append(time.perf_counter() - t)


def delete1(conn: sqlite3.Connection, ids: list[int], lat: list[float], **_) -> None:
    for i in ids:
        t = time.perf_counter()
        with conn:
            conn.execute("DELETE FROM trades WHERE id = ?", (i,))
        lat.append(time.perf_counter() - t)


def bulk(conn: sqlite3.Connection, rows: list[tuple], lat: list[float], **_) -> None:
    t = time.perf_counter()
    with conn:
        conn.executemany(TRADE_INSERT, rows)
    lat.append(time.perf_counter() - t)


# A bot table with a UNIQUE besides its key gets two more (BEFORE) triggers that probe the
# unique index, because INSERT OR REPLACE can delete a row through it without a trigger.
UNIQUE_DDL = (*TRADES_DDL, "CREATE UNIQUE INDEX idx_trades_wallet ON trades(wallet)")

SHAPES = {
    "insert1": (insert1, TRADES_DDL),
    "insert1_reconnect": (insert1_reconnect, TRADES_DDL),
    "update1": (update1, TRADES_DDL),
    "delete1": (delete1, TRADES_DDL),
    "bulk": (bulk, TRADES_DDL),
    "insert1_unique": (insert1, UNIQUE_DDL),
    "bulk_unique": (bulk, UNIQUE_DDL),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_bot_write_cost(benchmark, summary, tmp_path, journal, shape):
    """Median time of one round of bot writes with triggers; `trigger_ratio` vs without."""
    counter = itertools.count()
    rng = random.Random(7)
    n = BULK_ROWS if shape.startswith("bulk") else SINGLE_COMMITS
    write, ddl = SHAPES[shape]
    baseline = Baseline(warmup_rounds=WARMUP)
    lat: dict[bool, list[float]] = {False: [], True: []}  # triggers? -> commit latencies
    rounds = itertools.count()
    opened: list[sqlite3.Connection] = []

    def prepare(triggers: bool, warm: bool):
        path = str(tmp_path / f"r{next(counter)}.db")
        create_db(path, journal, ddl)
        if shape in ("update1", "delete1"):
            c = sqlite3.connect(path)
            with c:
                c.executemany(TRADE_INSERT, trade_rows(PREFILL, seed=3))
            c.close()
        if triggers:
            install_capture(path, ["trades"])
        ids = rng.sample(range(1, PREFILL + 1), n) if shape in ("update1", "delete1") else []
        rows = trade_rows(n, seed=rng.randrange(1 << 30))
        conn = sqlite3.connect(path, timeout=5.0)
        opened.append(conn)
        sink = [] if warm else lat[triggers]
        return (conn,), {"rows": rows, "ids": ids, "path": path, "lat": sink}

    def cleanup(conn, path, **_):
        conn.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)

    def setup():
        warm = next(rounds) < WARMUP
        args, kwargs = prepare(triggers=False, warm=warm)
        baseline.run(write, *args, **kwargs)
        cleanup(*args, **kwargs)
        return prepare(triggers=True, warm=warm)

    benchmark.group = f"bot writes with capture triggers ({journal})"
    budget = 1.5 if shape.startswith("bulk") else 1.3
    benchmark.extra_info.update(journal=journal, shape=shape, writes_per_round=n, budget=budget)
    benchmark.pedantic(write, setup=setup, teardown=cleanup, rounds=ROUNDS, warmup_rounds=WARMUP)
    for c in opened:  # --benchmark-disable skips teardown
        c.close()
    ratio = baseline.record(benchmark, "trigger_ratio")
    if ratio is None:
        return
    plain_commit, trig_commit = statistics.median(lat[False]), statistics.median(lat[True])
    commit_ratio = trig_commit / plain_commit
    info = benchmark.extra_info
    info.update(
        commit_median_us_plain=round(plain_commit * 1e6, 1),
        commit_median_us_triggers=round(trig_commit * 1e6, 1),
        commit_ratio=round(commit_ratio, 4),
        within_budget=ratio <= budget,
    )
    summary(
        f"trigger cost {shape:<17} {journal:<6}: round medians {ratio:.3f}x, commit medians "
        f"{commit_ratio:.3f}x, fastest rounds {info['trigger_ratio_of_min']:.3f}x "
        f"(budget {budget}x); per commit plain {plain_commit * 1e6:.0f} us, "
        f"triggers {trig_commit * 1e6:.0f} us"
    )
