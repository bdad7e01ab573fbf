"""Initial copy (snapshot) rows/s into a PostgreSQL target, beside PostgreSQL's own
`COPY ... FROM STDIN` of the same rows from a CSV file (issue 19). No timed assertion.

The legacy table: 50k rows, an INTEGER key, TEXT, REAL, INTEGER and BLOB columns (10% NULL
REALs and BLOBs), in a WAL file. Our side is timed as `bench/test_snapshot.py` times it,
from `install` to "snapshot applied": capture installed, `bench.support.Pipeline` driving
`Harvester.snapshot_chunk` and `Replicator.step` (which applies into PostgreSQL through
`replicator.pg_apply.PgTarget`) in one thread, with the default `snapshot_chunk` and
`apply_batch`; `daemon.snapshot_copy = "log"`, as a PostgreSQL target needs (a copy by
reference is refused there). Each round uses a fresh legacy copy and a fresh database.

The baseline (`bench.support.Baseline`, one round before each of ours: A B A B) loads the
same rows, written once to a CSV file (not timed), with `COPY <table> FROM STDIN (FORMAT
csv)` through psycopg's copy, into a fresh database holding the table made by the same DDL
(`cdc.planning.pg_ddl`: same types, same primary key), committed. `speed_ratio` = our
rows/s / COPY rows/s. Both copies are checked: ours value by value against the legacy file
(`tests.support.pg_world.differences`), COPY's by an md5 of every row against ours.
"""

from __future__ import annotations

import csv
import itertools
import random
import sqlite3
from pathlib import Path

import pytest

from bench.pg_support import fresh_database, pg_toml, start_cluster, table_digest
from bench.support import Baseline, Pipeline, copy_db, create_db, scaled
from cdc.capture import install as ops
from cdc.planning import pg_ddl
from tests.support.pg_world import differences, load

ROWS = scaled(50_000, 1_000)
ROUNDS = 5
DDL = ("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, px REAL, qty INTEGER, raw BLOB)",)


def item_rows(n: int, seed: int = 19) -> list[tuple]:
    rng = random.Random(seed)
    return [
        (
            i,
            f"item-{i}-{rng.getrandbits(48):012x}",
            None if i % 10 == 3 else rng.lognormvariate(0, 3),
            rng.randrange(-(10**12), 10**12),
            None if i % 10 == 7 else rng.randbytes(rng.randrange(1, 48)),
        )
        for i in range(1, n + 1)
    ]


@pytest.fixture(scope="module")
def cluster():
    yield from start_cluster()


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> tuple[Path, Path]:
    """The legacy template (WAL, closed) and the same rows as a CSV file in COPY's terms:
    NULL an unquoted empty field, a REAL as Python's shortest exact repr, a BLOB as bytea
    hex (every TEXT value is non-empty, so none reads back as NULL)."""
    d = tmp_path_factory.mktemp("pg-snapshot")
    path, csv_path = d / "legacy.db", d / "items.csv"
    rows = item_rows(ROWS)
    create_db(path, "wal", DDL)
    c = sqlite3.connect(path)
    with c:
        c.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", rows)
    c.close()
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        for i, name, px, qty, raw in rows:
            w.writerow(
                (
                    i,
                    name,
                    "" if px is None else repr(px),
                    qty,
                    "" if raw is None else "\\x" + raw.hex(),
                )
            )
    return path, csv_path


def copy_csv(dsn: str, table: str, csv_path: Path) -> None:
    """PostgreSQL's own load: the file streamed to `COPY ... FROM STDIN`, one transaction."""
    import psycopg

    sql = f'COPY "{table}" FROM STDIN (FORMAT csv)'
    with psycopg.connect(dsn) as c, c.cursor() as cur, open(csv_path, "rb") as f:
        with cur.copy(sql) as cp:
            while block := f.read(1 << 20):
                cp.write(block)
        c.commit()


def our_snapshot(cfg, plan) -> Pipeline:  # noqa: ANN001
    """Install + snapshot + apply, as `bench/test_snapshot.py: pipeline_snapshot` does."""
    ops.install(cfg, plan)
    p = Pipeline(cfg, plan)
    try:
        p.run_snapshot()
    finally:
        p.close()
    return p


def test_pg_snapshot_beside_copy(benchmark, summary, cluster, legacy, tmp_path) -> None:
    template, csv_path = legacy
    counter = itertools.count()
    baseline = Baseline()
    done: list[tuple] = []

    def setup():
        n = next(counter)
        d = tmp_path / f"r{n}"
        d.mkdir()
        copy_db(template, d / "legacy.db")
        dsn = fresh_database(cluster, f"snap{n}")
        cfg, plan = load(pg_toml(d, dsn, "legacy", d / "legacy.db", 'snapshot_copy = "log"\n'))
        (m,) = [m for sp in plan.sources for m in sp.tables]
        base = fresh_database(cluster, f"copy{n}")
        import psycopg

        with psycopg.connect(base, autocommit=True) as c:
            for stmt in pg_ddl.table_ddl(plan, m).statements:
                c.execute(stmt)
        baseline.run(copy_csv, base, m.target_table, csv_path)
        done.append((cfg, plan, dsn, base, m.target_table))
        return (cfg, plan), {}

    benchmark.group = "pg snapshot"
    pipes: list[Pipeline] = []
    benchmark.pedantic(lambda cfg, plan: pipes.append(our_snapshot(cfg, plan)), setup=setup,
                       rounds=ROUNDS)  # fmt: skip

    cfg, plan, dsn, base, table = done[-1]
    assert pipes[-1].snapshot_rows == ROWS and pipes[-1].applied == ROWS
    assert differences(cfg, plan, dsn) == []
    ours = table_digest(dsn, table)
    assert ours[0] == ROWS and table_digest(base, table) == ours
    ratio = baseline.record(benchmark, "speed_ratio", invert=True)
    if ratio is None:
        return
    info = benchmark.extra_info
    info.update(
        rows=ROWS,
        rows_per_s=round(ROWS / info["median_s"]),
        copy_rows_per_s=round(ROWS / info["baseline_median_s"]),
        copy_times_s=[round(t, 4) for t in baseline.times],
        last_read_log_s=round(pipes[-1].snapshot_s, 3),
        last_apply_s=round(pipes[-1].apply_s, 3),
    )
    summary(
        f"snapshot into PostgreSQL, {ROWS} rows: {info['rows_per_s']:,} rows/s vs COPY FROM "
        f"a CSV file {info['copy_rows_per_s']:,} rows/s = {ratio:.3f}x "
        f"(of fastest rounds {info['speed_ratio_of_min']:.3f}x), medians of {ROUNDS} A B rounds; "
        f"last round: read+log {pipes[-1].snapshot_s:.2f} s, apply {pipes[-1].apply_s:.2f} s"
    )
