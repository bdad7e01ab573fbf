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
from tests.support.pg_world import Capture, load, log_end
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


CHANGE_ROWS = 2_000  # the table the changes go to
CHANGES = 30_000  # single-statement transactions: updates, deletes, inserts


def _changes_world(root: Path, dsn: str):  # noqa: ANN202
    """A small table copied first, then CHANGES bot transactions harvested every 250 (so
    few collapse into one event per key): the log a live system's apply sees."""
    import random
    import sqlite3

    root.mkdir()
    c = sqlite3.connect(root / "a.db", isolation_level=None)
    c.execute("CREATE TABLE pos(id INTEGER PRIMARY KEY, sym TEXT, px REAL, qty INTEGER)")
    c.executemany(
        "INSERT INTO pos VALUES (?, ?, ?, ?)", ((i, f"S{i}", i / 7, i) for i in range(CHANGE_ROWS))
    )
    (root / "cdc.toml").write_text(
        f'state_dir = "{root}/state"\n[daemon]\nsnapshot_copy = "log"\n'
        f'[targets]\ncore = "{dsn}"\n[[sources]]\nname = "a"\npath = "{root}/a.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\n'
    )
    cfg, plan = load(root / "cdc.toml")
    cap = Capture(cfg, plan)
    cap.sync()
    first = log_end(cfg)
    rng = random.Random(7)
    for n in range(CHANGES):
        k, roll = rng.randrange(CHANGE_ROWS * 2), rng.random()
        if roll < 0.7:
            c.execute("UPDATE pos SET px = ?, qty = qty + 1 WHERE id = ?", (rng.random(), k))
        elif roll < 0.85:
            c.execute("DELETE FROM pos WHERE id = ?", (k,))
        else:
            c.execute("INSERT OR REPLACE INTO pos VALUES (?, ?, ?, ?)", (k, "N", 1.5, n))
        if n % 250 == 249:
            cap.sync()
    cap.sync()
    cap.close()
    c.close()
    return cfg, plan, first


def _events_between(cfg, first: int) -> int:  # noqa: ANN001
    from cdc.events import RowBatch

    reader, n, offset = LogReader(cfg.log_dir), 0, first
    while got := reader.read(offset, None, max_frames=10_000):
        n += sum(len(e.frame.events) for e in got if isinstance(e.frame, RowBatch))
        offset = got[-1].next_offset
    return n


def test_pg_changes_beside_sqlite(benchmark, cluster, tmp_path: Path, summary) -> None:
    """Changes/s: the stream after the copy, applied into PostgreSQL and into a SQLite
    target from the same log, A B A B; only the stream is timed (the copy is applied
    first, untimed)."""
    cfg, plan, first = _changes_world(tmp_path / "w", cluster.dsn)
    events = _events_between(cfg, first)
    pg_times, lite_times = [], []
    rounds = iter(range(ROUNDS))

    def one() -> None:
        n = next(rounds)
        path = tmp_path / f"chg{n}.db"
        local = msgspec.structs.replace(plan, targets={"core": str(path)})
        r = Replicator(local, cfg.log_dir, cfg.daemon)
        lite_times.append(_timed(r.step, r, first))
        r.close()
        with psycopg.connect(cluster.dsn, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "chg{n}"')
            c.execute(f'CREATE DATABASE "chg{n}"')
        target = PgTarget("core", cluster.dsn.rsplit("/", 1)[0] + f"/chg{n}")
        pg_times.append(_pg_timed(target, cfg, plan, first))
        target.close()

    benchmark.pedantic(one, rounds=ROUNDS, iterations=1)
    pg, lite = statistics.median(pg_times), statistics.median(lite_times)
    benchmark.extra_info.update(
        {"events": events, "pg_per_s": events / pg, "sqlite_per_s": events / lite}
    )
    summary(
        f"apply of {events} change events ({CHANGES} bot transactions): PostgreSQL "
        f"{events / pg:,.0f} changes/s, SQLite target {events / lite:,.0f} changes/s "
        f"(PostgreSQL at {lite / pg:.2f}x), medians of {ROUNDS}"
    )


def _timed(step, r, first: int) -> float:  # noqa: ANN001
    """Apply up to `first` (the copy) untimed, then time the rest."""
    while step(first):
        pass
    t = time.perf_counter()
    while step(None):
        pass
    return time.perf_counter() - t


def _pg_timed(target: PgTarget, cfg, plan, first: int) -> float:  # noqa: ANN001
    reader = LogReader(cfg.log_dir)

    def step(limit: int | None) -> bool:
        cp = target.load()
        entries = reader.read(cp.offset, limit, max_frames=cfg.daemon.apply_batch)
        if entries:
            target.apply(plan, entries, cp)
        return bool(entries)

    return _timed(step, None, first)
