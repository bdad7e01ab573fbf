"""What our capture triggers cost a legacy bot, per write, in both journal modes.

The bots are the production system: capture is only acceptable if it keeps their writes
cheap (budget: at most 1.3x per single-row commit, 1.5x for a bulk insert). Each case is
timed twice in the same session, without and then with the triggers, on a fresh file per
round, and `pairs` stores the ratio of the medians (`trigger_ratio`, with / without).

The writer is stdlib `sqlite3` with the driver's defaults (implicit transactions,
`synchronous=FULL`), committing the way the bots do; the `insert1_reconnect` shape also
opens a new connection per commit, the bots' habit, which makes SQLite re-read the schema
(our triggers included) on every write.
"""

from __future__ import annotations

import itertools
import os
import random
import sqlite3

import pytest

from bench.support import (
    TRADE_INSERT,
    TRADES_DDL,
    create_db,
    install_capture,
    scaled,
    trade_rows,
)

SINGLE_COMMITS = scaled(200, 10)
BULK_ROWS = scaled(20_000, 100)
PREFILL = max(2_000, SINGLE_COMMITS)  # rows present before an UPDATE/DELETE round
ROUNDS = 15


def insert1(conn: sqlite3.Connection, rows: list[tuple], **_) -> None:
    for r in rows:
        with conn:
            conn.execute(TRADE_INSERT, r)


def insert1_reconnect(conn: sqlite3.Connection, rows: list[tuple], path: str, **_) -> None:
    for r in rows:
        c = sqlite3.connect(path, timeout=5.0)
        try:
            with c:
                c.execute(TRADE_INSERT, r)
        finally:
            c.close()


def update1(conn: sqlite3.Connection, ids: list[int], rows: list[tuple], **_) -> None:
    for i, r in zip(ids, rows, strict=True):
        with conn:
            conn.execute("UPDATE trades SET price = ?, status = ? WHERE id = ?", (r[3], r[6], i))


def delete1(conn: sqlite3.Connection, ids: list[int], **_) -> None:
    for i in ids:
        with conn:
            conn.execute("DELETE FROM trades WHERE id = ?", (i,))


def bulk(conn: sqlite3.Connection, rows: list[tuple], **_) -> None:
    with conn:
        conn.executemany(TRADE_INSERT, rows)


SHAPES = {
    "insert1": insert1,
    "insert1_reconnect": insert1_reconnect,
    "update1": update1,
    "delete1": delete1,
    "bulk": bulk,
}
CASES = [
    pytest.param(journal, shape, variant, id=f"{shape}-{journal}-{variant}")
    for journal in ("wal", "delete")
    for shape in SHAPES
    for variant in ("plain", "triggers")  # adjacent, so the pair is measured side by side
]


@pytest.mark.parametrize(("journal", "shape", "variant"), CASES)
def test_bot_write_cost(benchmark, pairs, tmp_path, journal, shape, variant):
    """Median time of one round of bot writes; `trigger_ratio` = with / without triggers."""
    counter = itertools.count()
    rng = random.Random(7)
    n = BULK_ROWS if shape == "bulk" else SINGLE_COMMITS

    def setup():
        path = str(tmp_path / f"r{next(counter)}.db")
        create_db(path, journal, TRADES_DDL)
        if shape in ("update1", "delete1"):
            c = sqlite3.connect(path)
            with c:
                c.executemany(TRADE_INSERT, trade_rows(PREFILL, seed=3))
            c.close()
        if variant == "triggers":
            install_capture(path, ["trades"])
        conn = sqlite3.connect(path, timeout=5.0)
        ids = rng.sample(range(1, PREFILL + 1), n) if shape in ("update1", "delete1") else []
        rows = trade_rows(n, seed=rng.randrange(1 << 30))
        return (conn,), {"rows": rows, "ids": ids, "path": path}

    def teardown(conn, path, **_):
        conn.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)

    benchmark.group = f"bot write: {shape} ({journal})"
    benchmark.extra_info.update(
        journal=journal, shape=shape, variant=variant, writes_per_round=n,
        budget=1.5 if shape == "bulk" else 1.3,
    )
    benchmark.pedantic(SHAPES[shape], setup=setup, teardown=teardown, rounds=ROUNDS,
                       warmup_rounds=1)
    if benchmark.stats is not None:
        benchmark.extra_info["per_write_us"] = benchmark.stats.stats.median / n * 1e6
    pairs.add(f"trigger cost {shape} ({journal})", variant, benchmark,
              ratio=("trigger_ratio", "triggers", "plain"))
