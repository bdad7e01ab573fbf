"""Comparing both sides inside SQLite instead of in Python: what it would save, measured.

The verifier's pass and the cutover's proof under the fence read every row of both sides
into Python and encode it exactly (storage class, REAL bits, TEXT bytes: `verifier.values`).
The performance issue asks whether SQLite can do that work itself. Two ways are timed
here, side by side with the shipped one (`digest_check`, the proof under the fence), on
the 100k-row `fills` table of bench/test_fence_digest.py, both sides quiet:

- `sqlite_text`: each side builds, per chunk of 5,000 keys, one text of its rows with an
  exact encoding (`TEXT_VALUE` below: storage class first, an INTEGER in decimal, a REAL
  by `quote()` with a mark for -0.0, TEXT and BLOB in hex; checked by hand against the
  verifier's encoding, not shipped) in key order (`group_concat(... ORDER BY key)`), and
  Python hashes each text;
- `sqlite_join`: the target attached to the legacy connection, one join on the key and an
  exact comparison of every column (`SAME` below: storage class, `=` for numbers with the
  sign of a zero, bytes for TEXT and BLOB), counting the rows that differ.

Neither is shipped: the measured figures (bench/README.md, "Comparing inside SQLite") say
what stands in the way. Each round asserts the sides are found equal, so no method is
timed doing less than the comparison.
"""

from __future__ import annotations

import hashlib

import apsw
import pytest

from bench.conftest import Files, build_replicated, open_readonly
from bench.support import Baseline, scaled
from cdc.sqlident import q
from verifier import select_tables
from verifier.digest import digest_check

ROWS = scaled(100_000, 5_000)
ROUNDS = 7
CHUNK = 5000
COLUMNS = ["id", "symbol", "qty", "px", "ts", "note"]  # FILLS_DDL


def TEXT_VALUE(e: str) -> str:  # noqa: N802 - reads as the SQL it is
    return (
        f"CASE typeof({e}) WHEN 'integer' THEN 'i' || {e}"
        f" WHEN 'real' THEN 'r' || quote({e}) || iif({e} = 0 AND atan2({e}, -1) < 0, '-', '')"
        f" WHEN 'text' THEN 't' || hex({e}) WHEN 'blob' THEN 'b' || hex({e}) ELSE 'n' END"
    )


def SAME(a: str, b: str) -> str:  # noqa: N802
    return (
        f"(typeof({a}) = typeof({b}) AND CASE typeof({a}) WHEN 'null' THEN 1"
        f" WHEN 'real' THEN {a} = {b} AND ({a} <> 0 OR atan2({a}, -1) = atan2({b}, -1))"
        f" WHEN 'integer' THEN {a} = {b} ELSE CAST({a} AS BLOB) = CAST({b} AS BLOB) END)"
    )


def sqlite_text(f: Files) -> tuple[str, str]:
    row = " || ',' || ".join(TEXT_VALUE(c) for c in COLUMNS)
    out = []
    for path, table in ((f.legacy, "fills"), (f.target, f.target_table)):
        c = open_readonly(path)
        try:
            h = hashlib.blake2b(digest_size=16)
            for lo in range(0, ROWS, CHUNK):
                (text,) = c.execute(
                    f"SELECT group_concat({row}, char(10) ORDER BY id) FROM {q(table)} "
                    "WHERE id > ? AND id <= ?",
                    (lo, lo + CHUNK),
                ).fetchone()
                h.update((text or "").encode())
            out.append(h.hexdigest())
        finally:
            c.close()
    return out[0], out[1]


def sqlite_join(f: Files) -> tuple[int, int, int, int]:
    c = apsw.Connection(
        f"file:{f.legacy}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
    )
    try:
        c.execute(f"ATTACH 'file:{f.target}?mode=ro' AS tgt")
        same = " AND ".join(SAME(f"s.{c_}", f"t.{c_}") for c_ in COLUMNS[1:])
        t = q(f.target_table)
        joined, differ = c.execute(
            f"SELECT count(*), total(NOT ({same})) FROM main.fills s JOIN tgt.{t} t ON t.id = s.id"
        ).fetchone()
        src, tgt = c.execute(
            f"SELECT (SELECT count(*) FROM main.fills), (SELECT count(*) FROM tgt.{t})"
        ).fetchone()
        return src, tgt, joined, int(differ)
    finally:
        c.close()


@pytest.fixture(scope="session")
def replicated_quiet(tmp_path_factory) -> Files:
    return build_replicated(tmp_path_factory.mktemp("compare-in-sql"), ROWS)


@pytest.mark.parametrize("method", ["sqlite_text", "sqlite_join"])
def test_compare_in_sql(benchmark, summary, replicated_quiet: Files, method: str) -> None:
    f = replicated_quiet
    (m,) = select_tables(f.plan)
    src, tgt = open_readonly(f.legacy), open_readonly(f.target)
    shipped = Baseline()
    results = []

    def setup():
        r = shipped.run(digest_check, src, tgt, m, f.cfg.verify)
        assert (r.state, r.source_rows, r.target_rows) == ("equal", ROWS, ROWS)

    run = {"sqlite_text": sqlite_text, "sqlite_join": sqlite_join}[method]
    try:
        benchmark.group = "compare-in-sql"
        benchmark.pedantic(lambda: results.append(run(f)), setup=setup, rounds=ROUNDS)
    finally:
        src.close()
        tgt.close()
    for r in results:  # found equal, as digest_check did: no method timed doing less
        if method == "sqlite_text":
            assert r[0] == r[1]
        else:
            assert r == (ROWS, ROWS, ROWS, 0), r
    ratio = shipped.record(benchmark, "ratio_vs_digest_check")
    if ratio is None:
        return
    info = benchmark.extra_info
    summary(
        f"compare in SQLite ({method}): {ROWS:,} rows, both sides, "
        f"{info['median_s'] * 1000:.1f} ms (median) vs digest_check in Python "
        f"{info['baseline_median_s'] * 1000:.1f} ms: {ratio:.2f}x; "
        f"load {info['loadavg_1m_at_start']}"
    )
