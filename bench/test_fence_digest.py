"""What the cutover's proof under the fence costs: counts and digests of a 100k-row table.

Under the fence the bots cannot write, so every millisecond of the final check is pause.
The check no longer trusts the change log to have seen every change: each table the pass
before the fence proved is counted and digested on both sides (`verifier.digest`). This
measures that read for one bot-like table of ROWS rows (the `fills` table of
`bench/test_verifier.py`: AUTOINCREMENT key, TEXT/REAL/INTEGER columns, a nullable
JSON-ish TEXT note, one secondary index), replicated once per session by the in-process
pipeline; the rounds only read.

The benchmark times one `digest_check` (legacy and target, each in one read transaction,
as the cutover runs it per legacy file). Before each round the baseline `fetch_both`
(`SELECT * ... ORDER BY id` of both sides into Python with apsw, the floor of any check
made in Python) runs on the same files, so `ratio_vs_fetch_both` compares side by side.
"""

from __future__ import annotations

import apsw
import pytest

from bench.conftest import Files, build_replicated, fetch_both
from bench.support import Baseline, scaled
from verifier import select_tables
from verifier.digest import attach_target, digest_check

ROWS = scaled(100_000, 5_000)
ROUNDS = 9


@pytest.fixture(scope="session")
def replicated_100k(tmp_path_factory) -> Files:
    """The legacy file and its replicated target, built once per session (not timed)."""
    return build_replicated(tmp_path_factory.mktemp("fence-digest-bench"), ROWS)


@pytest.mark.parametrize("compared_by", ["join", "digest"])
def test_fence_digest(benchmark, summary, replicated_100k: Files, compared_by: str) -> None:
    """`join`: both files in one connection, one query (what the cutover runs);
    `digest`: each side read into Python and digested (where the join cannot be used)."""
    f = replicated_100k
    (m,) = select_tables(f.plan)
    src = apsw.Connection(f.legacy, flags=apsw.SQLITE_OPEN_READONLY)
    tgt = apsw.Connection(f.target, flags=apsw.SQLITE_OPEN_READONLY)
    joined = attach_target(f.legacy, f.target, 5000) if compared_by == "join" else None
    base = Baseline()
    results = []

    def setup():
        assert base.run(fetch_both, f) == (ROWS, ROWS)

    try:
        benchmark.group = "cutover"
        benchmark.pedantic(
            lambda: results.append(digest_check(src, tgt, m, f.cfg.verify, joined)),
            setup=setup,
            rounds=ROUNDS,
        )
    finally:
        src.close()
        tgt.close()
        if joined is not None:
            joined.close()
    for r in results:  # correctness of every round, not its time
        assert (r.state, r.source_rows, r.target_rows) == ("equal", ROWS, ROWS), r
        assert r.source_digest == r.target_digest  # both "" when joined
    ratio = base.record(benchmark, "ratio_vs_fetch_both")
    if ratio is None:
        return  # --benchmark-disable
    info = benchmark.extra_info
    info.update(rows=ROWS, rows_per_s=round(ROWS / info["median_s"]))
    summary(
        f"fence proof ({compared_by}): {ROWS:,} rows, both sides, in {info['median_s'] * 1000:.1f} ms "
        f"(median) = {info['rows_per_s']:,} rows/s; {ratio:.2f}x fetching both sides "
        f"({info['baseline_median_s'] * 1000:.1f} ms); load {info['loadavg_1m_at_start']}"
    )
