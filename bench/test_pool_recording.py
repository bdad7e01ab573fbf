"""What `pool.record_queries` costs a bot's statements through a pooled connection.

The workload is what the recording is meant to stay on for: small statements, where a fixed
cost per statement shows most. Each round borrows a connection and runs a SELECT by key
(every row fetched) and an autocommit INSERT, `STATEMENTS` times, on a target (WAL,
synchronous=NORMAL, so no fsync per commit hides the cost). Three sides, interleaved per
round (A B C, A B C, ...) so they share the machine's moods, each on its own pool and file:

- `off`: `record_queries = false` (the default);
- `on`: `record_queries = true` (apsw `exec_trace` for the start and the parameters,
  `trace_v2` SQLITE_TRACE_PROFILE for the end: the time covers every row fetched);
- `wrapped`: the alternative weighed against it and not taken: `execute` wrapped in
  Python, timing only the call (apsw runs a statement to its first row there; the rows the
  borrower fetches later are not in the time), with the same counters.

The ratios compare the medians of each round's time per statement. No timed assertion.
"""

from __future__ import annotations

import bisect
import statistics
import time

from bench.support import scaled
from cdc.config import PoolSettings
from cdc.pool import Pool

STATEMENTS = scaled(2000, 200)
ROUNDS = 9
_BOUNDS = tuple(m * 10**e * 1000 for e in range(8) for m in (1, 2, 5))


def _wrap(conn) -> None:  # noqa: ANN001 - a PooledConnection
    """The `wrapped` side: the same bookkeeping around `execute` itself."""
    inner = conn.execute
    stats: dict[str, list] = {}

    def execute(sql, bindings=None):  # noqa: ANN001, ANN202
        t = time.perf_counter_ns()
        cur = inner(sql, bindings)
        ns = time.perf_counter_ns() - t
        st = stats.get(sql)
        if st is None:
            st = stats[sql] = [0, 0, [0] * (len(_BOUNDS) + 1), bindings]
        st[0] += 1
        st[1] += ns
        st[2][bisect.bisect_left(_BOUNDS, ns)] += 1
        return cur

    conn.execute = execute


def _round(p: Pool, wrapped: bool, base: int) -> float:
    """Seconds per statement of one round."""
    with p.connection() as c:
        if wrapped and not hasattr(c, "_bench_wrapped"):
            _wrap(c)
            c._bench_wrapped = True
        t = time.perf_counter()
        for i in range(STATEMENTS // 2):
            c.execute("SELECT id, v FROM t WHERE id = ?", (base + i,)).fetchall()
            c.execute("INSERT INTO t(v) VALUES (?)", (i,))
        return (time.perf_counter() - t) / STATEMENTS


def test_pool_recording_cost(benchmark, summary, tmp_path):
    pools = {}
    for side in ("off", "on", "wrapped"):
        s = PoolSettings(record_queries=side == "on", synchronous="NORMAL")
        pools[side] = Pool(side, str(tmp_path / f"{side}.db"), s, is_target=True)
        with pools[side].connection() as c:
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    per: dict[str, list[float]] = {k: [] for k in pools}
    for r in range(ROUNDS):
        for side, p in pools.items():
            if side == "on" and r == ROUNDS - 1:
                per[side].append(
                    benchmark.pedantic(_round, (p, False, r * STATEMENTS), rounds=1, iterations=1)
                )
            else:
                per[side].append(_round(p, side == "wrapped", r * STATEMENTS))
    recorded = {s.sql: s.count for s in pools["on"].recorded() if not s.sql.startswith("CREATE")}
    for p in pools.values():
        p.close()
    med = {k: statistics.median(v[1:]) for k, v in per.items()}  # round 0: warm-up
    on, wrapped = med["on"] / med["off"], med["wrapped"] / med["off"]
    benchmark.extra_info.update(
        {
            "median_us_per_statement": {k: round(v * 1e6, 2) for k, v in med.items()},
            "on_ratio": round(on, 3),
            "wrapped_ratio": round(wrapped, 3),
            "statements_recorded": sum(recorded.values()),
        }
    )
    summary(
        f"pool recording: off {med['off'] * 1e6:.2f} us/statement, on {med['on'] * 1e6:.2f} "
        f"({on:.2f}x), wrapped execute {med['wrapped'] * 1e6:.2f} ({wrapped:.2f}x), "
        f"{STATEMENTS} statements x {ROUNDS} rounds"
    )
    assert sum(recorded.values()) == ROUNDS * STATEMENTS  # what was measured was recorded
