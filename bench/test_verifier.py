"""One full verification pass of a 1M-row table, against what SQLite and apsw cost alone.

A legacy file holds one bot-like table of ROWS rows (an AUTOINCREMENT key, TEXT/REAL/
INTEGER columns, a nullable JSON-ish TEXT note, one secondary index), built in one
transaction from a recursive CTE. The in-process pipeline (`tests/support/pipeline.py`) installs
capture, snapshots it and applies it to a target once per session; the rounds reuse
those files and only read them.

The benchmark times one `verify_tables` pass over that table (no rate limit, chunk_rows
1000 and 5000). Before each round, the baselines run on the same files (`Baseline`, so the
ratios compare rounds that ran side by side):

- `count_index`: `SELECT count(*) FROM fills`, which SQLite answers from the smallest
  b-tree, here the covering secondary index;
- `count_table`: `SELECT count(*) FROM fills NOT INDEXED`, the table b-tree itself (SQLite
  counts cells page by page and decodes no row);
- `count_note`: `SELECT count(note) FROM fills`, a table scan that decodes every row;
- `fetch_both`: `SELECT * ... ORDER BY id` fetched into Python with apsw, legacy then target:
  the floor of any comparison made in Python.

`ratio_vs_<baseline>` = verifier median / baseline median. The verifier is one thread, so
rows/s is per core; `rows_per_cpu_s` (process CPU time of the pass) says the same from the
CPU side.
"""

from __future__ import annotations

import time

import msgspec
import pytest

from bench.conftest import Files, build_replicated, count, fetch_both, open_readonly
from bench.support import Baseline, scaled
from verifier import select_tables, verify_tables

ROWS = scaled(1_000_000, 10_000)
ROUNDS = 5  # the VM is noisy: one pass takes 2.0-4.5 s of CPU for the same work


COUNTS = {
    "count_index": "SELECT count(*) FROM fills",
    "count_table": "SELECT count(*) FROM fills NOT INDEXED",
    "count_note": "SELECT count(note) FROM fills",
}
QUERY_PLANS = {  # asserted, so the labels below say what SQLite really did
    "count_index": "SCAN fills USING COVERING INDEX fills_symbol_ts",
    "count_table": "SCAN fills",
    "count_note": "SCAN fills",
}
LABELS = {
    "count_index": "count(*) [covering index]",
    "count_table": "count(*) NOT INDEXED [table b-tree, no row decoded]",
    "count_note": "count(note) [table scan, every row decoded]",
    "fetch_both": "fetchall both sides",
}


@pytest.fixture(scope="session")
def replicated(tmp_path_factory) -> Files:
    """The legacy file and its replicated target, built once per session (not timed)."""
    files = build_replicated(tmp_path_factory.mktemp("verifier-bench"), ROWS)
    legacy = files.legacy
    c = open_readonly(legacy)
    try:
        for name, sql in COUNTS.items():
            detail = c.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()[-1][-1]
            assert detail == QUERY_PLANS[name], (name, detail)
            expect = ROWS - ROWS // 4 if name == "count_note" else ROWS  # a NULL note in 4
            assert c.execute(sql).fetchone()[0] == expect, name
    finally:
        c.close()
    return files


@pytest.mark.parametrize("chunk_rows", [1000, 5000], ids=["chunk1000", "chunk5000"])
def test_verifier_full_pass(benchmark, summary, replicated: Files, chunk_rows: int):
    """One `verify_tables` pass, unthrottled; baselines run before each round."""
    f = replicated
    tables = select_tables(f.plan)
    settings = msgspec.structs.replace(f.cfg.verify, rows_per_second=0, chunk_rows=chunk_rows)
    baselines = {name: Baseline() for name in LABELS}
    passes, cpu = [], []

    def setup():
        for name, sql in COUNTS.items():
            baselines[name].run(count, f.legacy, sql)
        assert baselines["fetch_both"].run(fetch_both, f) == (ROWS, ROWS)

    def one_pass():
        t = time.process_time()
        passes.append(verify_tables(f.cfg, f.plan, tables, settings))
        cpu.append(time.process_time() - t)

    benchmark.group = "verifier"
    benchmark.pedantic(one_pass, setup=setup, rounds=ROUNDS)

    for p in passes:  # correctness of every round, not its time
        (t,) = p.report.tables
        assert (t.state, t.reason) == ("equal", None)
        assert t.source_rows == t.target_rows == t.compared_rows == ROWS
        assert t.source_digest == t.target_digest and not p.keys

    ratios = {}
    for name, b in baselines.items():
        ratio = b.record(benchmark, f"ratio_vs_{name}")
        if ratio is None:
            return  # --benchmark-disable: nothing was timed
        ratios[name] = ratio
        benchmark.extra_info[f"{name}_median_s"] = benchmark.extra_info.pop("baseline_median_s")
    info = benchmark.extra_info
    info.update(
        rows=ROWS,
        chunk_rows=chunk_rows,
        chunks=passes[-1].report.tables[0].chunks,
        rows_per_s=round(ROWS / info["median_s"]),
        rows_per_cpu_s=round(ROWS / sorted(cpu)[len(cpu) // 2]),
    )
    summary(
        f"verifier chunk_rows={chunk_rows}: {ROWS:,} rows in {info['median_s']:.3f} s = "
        f"{info['rows_per_s']:,} legacy rows/s ({info['rows_per_cpu_s']:,} per CPU-s, one core)"
    )
    for name, label in LABELS.items():
        summary(
            f"  vs {label:<52} {info[f'{name}_median_s']:8.3f} s  "
            f"verifier/baseline = {ratios[name]:.2f}x"
        )
