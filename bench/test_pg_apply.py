"""The change log applied into PostgreSQL beside the same log applied into a SQLite target
(issue 19's throughput figure): a 50k-row snapshot of a bot-like table through the log,
applied A B A B into a fresh target each round (a new database on a private PostgreSQL 15
cluster, `tests/support/postgres.py`; a new SQLite file). Rows per second of each and the
ratio of the medians. No timed assertion."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import msgspec
import psycopg
import pytest

from cdc.changelog.segments import LogReader
from replicator import Replicator
from replicator.pg_apply import PgTarget
from tests.support.pg_world import Capture, load
from tests.support.postgres import Cluster, server_bin

ROWS = 50_000
ROUNDS = 3


@pytest.fixture(scope="module")
def cluster():
    if server_bin() is None:
        pytest.skip("no PostgreSQL server installed (Debian: postgresql)")
    c = Cluster(server_bin())
    yield c
    c.close()


def _world(root: Path, dsn: str):  # noqa: ANN202
    import sqlite3

    c = sqlite3.connect(root / "a.db", isolation_level=None)
    c.executescript(
        "CREATE TABLE fills(id INTEGER PRIMARY KEY, sym TEXT, px REAL, qty INTEGER, note TEXT);"
    )
    c.executemany(
        "INSERT INTO fills VALUES (?, ?, ?, ?, ?)",
        ((i, f"S{i % 97}", i / 7, i * 3, "n" * (i % 40)) for i in range(ROWS)),
    )
    c.close()
    (root / "cdc.toml").write_text(
        f'state_dir = "{root}/state"\n[daemon]\nsnapshot_copy = "log"\n'
        f'[targets]\ncore = "{dsn}"\n[[sources]]\nname = "a"\npath = "{root}/a.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\n'
    )
    cfg, plan = load(root / "cdc.toml")
    cap = Capture(cfg, plan)
    cap.sync()
    cap.close()
    return cfg, plan


def _pg_round(cluster: Cluster, cfg, plan, n: int) -> float:  # noqa: ANN001
    name = f"bench{n}"
    with psycopg.connect(cluster.dsn, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = cluster.dsn.rsplit("/", 1)[0] + "/" + name
    target = PgTarget("core", dsn)
    reader = LogReader(cfg.log_dir)
    t = time.perf_counter()
    while True:
        cp = target.load()
        entries = reader.read(cp.offset, None, max_frames=cfg.daemon.apply_batch)
        if not entries:
            break
        target.apply(plan, entries, cp)
    elapsed = time.perf_counter() - t
    assert target.load().events == ROWS
    target.close()
    return elapsed


def _sqlite_round(root: Path, cfg, plan, n: int) -> float:  # noqa: ANN001
    path = root / f"core{n}.db"
    local = msgspec.structs.replace(plan, targets={"core": str(path)})
    r = Replicator(local, cfg.log_dir, cfg.daemon)
    t = time.perf_counter()
    while r.step(None):
        pass
    elapsed = time.perf_counter() - t
    r.close()
    return elapsed


def test_pg_apply_beside_sqlite(benchmark, cluster, tmp_path: Path, summary) -> None:
    cfg, plan = _world(tmp_path, cluster.dsn)
    pg_times, lite_times = [], []
    rounds = iter(range(ROUNDS))

    def one() -> None:
        n = next(rounds)
        lite_times.append(_sqlite_round(tmp_path, cfg, plan, n))
        pg_times.append(_pg_round(cluster, cfg, plan, n))

    benchmark.pedantic(one, rounds=ROUNDS, iterations=1)
    pg, lite = statistics.median(pg_times), statistics.median(lite_times)
    benchmark.extra_info.update(
        {"pg_rows_per_s": ROWS / pg, "sqlite_rows_per_s": ROWS / lite, "ratio": lite / pg}
    )
    summary(
        f"apply of a {ROWS}-row snapshot: PostgreSQL {ROWS / pg:,.0f} rows/s, SQLite target "
        f"{ROWS / lite:,.0f} rows/s (PostgreSQL at {lite / pg:.2f}x), medians of {ROUNDS}"
    )
