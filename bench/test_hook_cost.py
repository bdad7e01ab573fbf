"""What hook capture (`cdc.hooks`) costs an apsw writer, beside trigger capture (goal: at most
1.15x for single-row transactions).

Three writers do the same single-row transactions on the bot-like `trades` table, each on
its own fresh file, in interleaved rounds (A B C, A B C, ...) so they share the machine's
moods:

- `plain`: an apsw connection to a file without capture: the baseline;
- `hooks`: a `PooledConnection` with `HookCapture` (the pool's connection for a source
  configured `capture = "hooks"`) on a file where capture is installed: its triggers are
  off for this connection, the hook's keys go into the capture table in the transaction;
- `triggers`: an apsw connection on a file where capture is installed: the triggers fire.

Shapes: an autocommit INSERT per transaction (`insert1`), `BEGIN; INSERT; COMMIT`
(`insert1_explicit`), an UPDATE of an indexed column per transaction (`update1`). Both
journal modes, `synchronous=FULL` (the pool's default for legacy files) and, for WAL,
`synchronous=NORMAL` too, where no fsync per commit hides the cost. Each commit is timed
alone; the ratios compare medians over every commit of every round.
"""

from __future__ import annotations

import statistics
import time

import apsw
import pytest

from bench.support import (
    TRADE_INSERT,
    TRADES_DDL,
    create_db,
    install_capture,
    scaled,
    trade_rows,
)
from cdc.capture.hooks import HookCapture
from cdc.pool.pooled import PooledConnection

COMMITS = scaled(200, 20)
ROUNDS = 7
PREFILL = 500


def insert1(conn, rows, lat) -> None:  # noqa: ANN001
    for r in rows:
        t = time.perf_counter()
        conn.execute(TRADE_INSERT, r)
        lat.append(time.perf_counter() - t)


def insert1_explicit(conn, rows, lat) -> None:  # noqa: ANN001
    for r in rows:
        t = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute(TRADE_INSERT, r)
        conn.execute("COMMIT")
        lat.append(time.perf_counter() - t)


def update1(conn, rows, lat) -> None:  # noqa: ANN001
    for i, r in enumerate(rows, start=1):
        t = time.perf_counter()
        conn.execute("UPDATE trades SET price = ?, status = ? WHERE id = ?", (r[3], r[6], i))
        lat.append(time.perf_counter() - t)


SHAPES = {"insert1": insert1, "insert1_explicit": insert1_explicit, "update1": update1}
MODES = [("delete", "FULL"), ("wal", "FULL"), ("wal", "NORMAL")]


def _writer(path: str, kind: str, sync: str):  # noqa: ANN202
    raw = apsw.Connection(path)
    raw.execute(f"PRAGMA synchronous={sync}")
    if kind == "hooks":
        return raw, PooledConnection(raw, HookCapture(raw, "bench"))
    return raw, raw


def _fresh(tmp_path, tag: str, journal: str, captured: bool) -> str:
    path = str(tmp_path / f"{tag}-{time.monotonic_ns()}.db")
    create_db(path, journal, TRADES_DDL)
    c = apsw.Connection(path)
    with c:
        c.executemany(TRADE_INSERT, trade_rows(PREFILL, seed=9))
    c.close()
    if captured:
        install_capture(path, ["trades"])
    return path


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("journal,sync", MODES, ids=[f"{j}-{s.lower()}" for j, s in MODES])
def test_hook_capture_cost(benchmark, summary, tmp_path, shape, journal, sync):
    fn = SHAPES[shape]
    rows = trade_rows(COMMITS, seed=3)
    lat: dict[str, list[float]] = {"plain": [], "hooks": [], "triggers": []}

    def one_round(kind: str) -> None:
        path = _fresh(tmp_path, kind, journal, captured=kind != "plain")
        raw, conn = _writer(path, kind, sync)
        try:
            fn(conn, rows, lat[kind])
        finally:
            raw.close()

    def timed() -> None:  # what pytest-benchmark times: the hooks writer
        one_round("hooks")

    for i in range(ROUNDS):  # interleaved: plain, triggers, hooks; the last round is timed
        one_round("plain")
        one_round("triggers")
        if i < ROUNDS - 1:
            timed()
        else:
            benchmark.pedantic(timed, rounds=1, iterations=1)
    med = {k: statistics.median(v) for k, v in lat.items()}
    hook_ratio = med["hooks"] / med["plain"]
    trig_ratio = med["triggers"] / med["plain"]
    benchmark.extra_info.update(
        {
            "median_commit_us": {k: round(v * 1e6, 1) for k, v in med.items()},
            "hook_ratio": round(hook_ratio, 3),
            "trigger_ratio": round(trig_ratio, 3),
            "commits_per_kind": len(lat["plain"]),
        }
    )
    summary(
        f"hook cost {shape:17} {journal:6} sync={sync:6}: plain {med['plain'] * 1e6:7.1f} us, "
        f"hooks {med['hooks'] * 1e6:7.1f} us ({hook_ratio:.2f}x), "
        f"triggers {med['triggers'] * 1e6:7.1f} us ({trig_ratio:.2f}x)"
    )
