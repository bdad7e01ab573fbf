"""Memory of a bot process that reaches 3 consolidated databases through `cdc.pool`, against
the same process holding 29 connections, one per legacy file.

Both sides do the same work on the same tables: per legacy file, `count(*)` and the first
20 rows of each of its tables, and one INSERT into a small `_bench_ping` table. The legacy
side opens each file with a plain `apsw.Connection` (the same SQLite library as the pool, so
`apsw.memory_used()` counts both sides alike) and keeps all 29 open, as long-running bots
keep theirs. The pool side reads the same tables consolidated into `core`, `analytics` and
`cache` (each legacy file's tables, renamed `<source>__<table>` with their indexes, go to one
target, round-robin), through `pool.connection(target)` with the default `[pool]` settings
(size 8: a one-thread bot opens one connection per database). A third side is the bot as it
was before the switch: the same 29 files and work through the stdlib's `sqlite3` (no apsw
imported; autocommit, so the INSERT commits as apsw's does), the issue's comparison
(whole-process RSS, pool / sqlite3, goal <= 0.8). Its SQLite heap is not visible from Python.

Each figure is measured in a fresh interpreter (`python -c`), after the work: the current
RSS from `/proc/self/statm`, the peak RSS (`VmHWM` in `/proc/self/status`), and SQLite's heap
(`apsw.memory_used()`, `apsw.memory_high_water()`). `ru_maxrss` is recorded in `extra_info`
too, but Linux carries it over `execve` from the forking parent, so in a child of pytest it
reports pytest's own peak (about 45 MB on every side) and is not used for the comparison.
Three baseline processes per round do no work: one imports apsw only, one the stdlib's
sqlite3 only, the other imports `cdc.pool` and configures it, so "above baseline" is what the
connections themselves cost.
Rounds alternate the order of the sides; medians are reported.

With the jarvis corpus beside the repo (`../shared/corpus/jarvis/legacy`), its 29 real files
(copied) are the legacy side; otherwise 29 small synthetic bot files. Virtual tables (FTS)
and the legacy files' own triggers are not copied into the targets.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from bench.support import scaled
from cdc.sqlident import q, rename_create_index, rename_create_table
from tests.support.corpus import copy_legacy, source_names

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "jarvis" / "legacy"
TARGETS = ("core", "analytics", "cache")
FILES = 29
ROUNDS = scaled(5, 3)
PING = "_bench_ping"

_CHILD = r"""
import json, os, resource, sys
mode, spec_path, config, scan = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "scan"
if mode.endswith("sqlite3"):
    import sqlite3  # a bot before the switch: stdlib only, no apsw
else:
    import apsw
if "pool" in mode:
    from cdc import pool
    pool.configure(config)
with open(spec_path) as f:
    spec = json.load(f)

def work(conn, tables, ping):
    for t in tables:
        if scan:
            conn.execute(f"SELECT count(*) FROM {t}").fetchall()
        conn.execute(f"SELECT * FROM {t} LIMIT 20").fetchall()
    conn.execute(f"INSERT INTO {ping}(at) VALUES (julianday('now'))")

held = []
if mode == "legacy":
    for path, tables, ping in spec["legacy"]:
        conn = apsw.Connection(path)
        conn.set_busy_timeout(5000)
        held.append(conn)
        work(conn, tables, ping)
elif mode == "sqlite3":
    for path, tables, ping in spec["legacy"]:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)  # autocommit, as apsw
        held.append(conn)
        work(conn, tables, ping)
elif mode == "pool":
    for target, tables, ping in spec["pool"]:
        with pool.connection(target) as conn:
            work(conn, tables, ping)
    held = [m.open for m in pool.metrics()]
with open("/proc/self/statm") as f:
    rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
out = {
    "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "peak_rss": hwm,
    "rss": rss,
    "connections": len(held) if mode in ("legacy", "sqlite3") else sum(held),
}
if "apsw" in sys.modules:  # the stdlib's SQLite heap is not visible from Python
    out.update(sqlite=apsw.memory_used(), sqlite_peak=apsw.memory_high_water())
print(json.dumps(out))
"""


# -- the files -------------------------------------------------------------------------------


def _synthetic(root: Path) -> list[Path]:
    """29 small bot-like files: a trades table (AUTOINCREMENT, index), a key-value table and
    an event log, a few hundred rows, rollback journal (as most of the corpus)."""
    paths = []
    for i in range(FILES):
        p = root / f"bot{i:02d}.db"
        conn = apsw.Connection(str(p))
        conn.execute(
            "CREATE TABLE trades(id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT NOT NULL,"
            " qty REAL, px REAL, meta TEXT, at TEXT DEFAULT CURRENT_TIMESTAMP);"
            "CREATE INDEX trades_symbol ON trades(symbol, at);"
            "CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;"
            "CREATE TABLE events(id INTEGER PRIMARY KEY, kind TEXT, body TEXT, at REAL);"
            "CREATE INDEX events_kind ON events(kind);"
        )
        with conn:
            conn.executemany(
                "INSERT INTO trades(symbol, qty, px, meta) VALUES (?, ?, ?, ?)",
                [(f"S{j % 17}", j * 0.5, 100 + j, json.dumps({"j": j})) for j in range(300)],
            )
            conn.executemany(
                "INSERT INTO settings VALUES (?, ?)", [(f"k{j}", "v" * 40) for j in range(50)]
            )
            conn.executemany(
                "INSERT INTO events(kind, body, at) VALUES (?, ?, ?)",
                [(f"e{j % 5}", "x" * 80, j) for j in range(200)],
            )
        conn.close()
        paths.append(p)
    return paths


def _corpus(root: Path) -> list[Path]:
    copy_legacy(CORPUS, root)
    return sorted(p for p in root.rglob("*.db") if p.is_file())


def _tables(conn: apsw.Connection) -> list[tuple[str, str]]:
    """(name, CREATE) of ordinary tables: not SQLite's, not virtual, not an FTS shadow."""
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    virtual = [n for n, sql in rows if sql.upper().startswith("CREATE VIRTUAL")]
    return [
        (n, sql)
        for n, sql in rows
        if n not in virtual and not any(n.startswith(v + "_") for v in virtual)
    ]


def _consolidate(paths: list[Path], root: Path, targets_dir: Path) -> dict:
    """Build the targets and the work list of both sides."""
    names = source_names([str(p.relative_to(root)) for p in paths])
    targets = {t: apsw.Connection(str(targets_dir / f"{t}.db")) for t in TARGETS}
    for conn in targets.values():
        conn.execute("PRAGMA journal_mode=WAL")
    spec: dict[str, list] = {"legacy": [], "pool": []}
    for i, p in enumerate(paths):
        source = names[str(p.relative_to(root))]
        target = TARGETS[i % len(TARGETS)]
        tconn = targets[target]
        src = apsw.Connection(str(p))
        src.execute(f"CREATE TABLE IF NOT EXISTS {PING}(id INTEGER PRIMARY KEY, at REAL)")
        tables = _tables(src)
        src.close()
        tconn.execute("ATTACH ? AS src", (str(p),))
        with tconn:
            for name, sql in tables:
                new = f"{source}__{name}"
                tconn.execute(rename_create_table(sql, new))
                cols = [
                    q(r[0])
                    for r in tconn.execute(
                        "SELECT name FROM src.pragma_table_xinfo(?) WHERE hidden = 0", (name,)
                    )
                ]
                tconn.execute(
                    f"INSERT INTO main.{q(new)} ({', '.join(cols)}) "
                    f"SELECT {', '.join(cols)} FROM src.{q(name)}"
                )
                for index, isql in tconn.execute(
                    "SELECT name, sql FROM src.sqlite_schema "
                    "WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                    (name,),
                ).fetchall():
                    tconn.execute(rename_create_index(isql, f"{source}__{index}", new))
        tconn.execute("DETACH src")
        work = [q(n) for n, _ in tables if n != PING]
        spec["legacy"].append([str(p), work, q(PING)])
        spec["pool"].append(
            [target, [q(f"{source}__{n}") for n, _ in tables if n != PING], q(f"{source}__{PING}")]
        )
    for conn in targets.values():
        conn.close()
    return spec


def _config(root: Path, targets_dir: Path) -> Path:
    lines = ['state_dir = "state"', "sources = []", "", "[targets]"]
    lines += [f'{t} = "{targets_dir / f"{t}.db"}"' for t in TARGETS]
    path = root / "cdc.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- measuring -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, bool]:
    """(work list, cdc.toml, real corpus?): built once for both workloads."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/statm and /proc/self/status")
    root = tmp_path_factory.mktemp("pool_memory")
    legacy_root = root / "legacy"
    legacy_root.mkdir()
    real = CORPUS.is_dir()
    paths = _corpus(legacy_root) if real else _synthetic(legacy_root)
    assert len(paths) == FILES, f"expected {FILES} legacy files, found {len(paths)}"
    targets_dir = root / "targets"
    targets_dir.mkdir()
    spec = root / "spec.json"
    spec.write_text(json.dumps(_consolidate(paths, legacy_root, targets_dir)))
    return spec, _config(root, targets_dir), real


def _child(mode: str, spec: Path, config: Path, work: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(spec), str(config), work],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


MODES = ("pool", "legacy", "sqlite3", "base-pool", "base-legacy", "base-sqlite3")


@pytest.mark.parametrize("work", ["touch", "scan"])
def test_pool_memory_vs_29_legacy_connections(benchmark, summary, files, work):
    """`touch`: the first 20 rows of each table and one INSERT per legacy file. `scan`: the
    same plus `count(*)` of each table, which pulls every page through the page caches."""
    spec, config, real = files
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(ROUNDS):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            runs[mode].append(_child(mode, spec, config, work))
    benchmark.pedantic(_child, args=("pool", spec, config, work), rounds=3, iterations=1)

    med = {m: {k: statistics.median(s[k] for s in ss) for k in ss[0]} for m, ss in runs.items()}
    pool, legacy = med["pool"], med["legacy"]
    assert pool["connections"] == len(TARGETS) and legacy["connections"] == FILES
    assert med["sqlite3"]["connections"] == FILES
    sides = ("pool", "legacy", "sqlite3")
    above = {side: med[side]["rss"] - med[f"base-{side}"]["rss"] for side in sides}
    figures = {
        "legacy_files": "jarvis corpus" if real else "synthetic",
        "work": work,
        "rounds": ROUNDS,
        "sqlite_heap_ratio": legacy["sqlite"] / pool["sqlite"],
        "rss_ratio": legacy["rss"] / pool["rss"],
        "rss_above_baseline_ratio": above["legacy"] / above["pool"] if above["pool"] > 0 else None,
        # the comparison: the bot on the pool against the same bot on 29 stdlib
        # sqlite3 connections, whole-process RSS (goal: pool / sqlite3 <= 0.8)
        "pool_over_sqlite3_rss": pool["rss"] / med["sqlite3"]["rss"],
        "pool_over_legacy_rss": pool["rss"] / legacy["rss"],
    }
    for side in sides:
        figures.update({f"{side}_{k}": v for k, v in med[side].items()})
        figures[f"{side}_rss_above_baseline"] = above[side]
        figures[f"baseline_{side}_rss"] = med[f"base-{side}"]["rss"]
    benchmark.extra_info.update(figures)

    def side(name: str, label: str) -> str:
        m = med[name]
        heap = (
            f", SQLite heap {_mib(m['sqlite'])} (peak {_mib(m['sqlite_peak'])})"
            if "sqlite" in m
            else ""
        )
        return (
            f"{label}: RSS {_mib(m['rss'])} ({_mib(above[name])} above its baseline, peak "
            f"{_mib(m['peak_rss'])}){heap}"
        )

    ratio = figures["rss_above_baseline_ratio"]
    summary(
        f"pool memory, {work} ({'jarvis corpus' if real else 'synthetic files'}, median of "
        f"{ROUNDS} rounds): {side('pool', '3 targets through cdc.pool')}; "
        f"{side('legacy', '29 legacy connections (apsw)')}; "
        f"{side('sqlite3', '29 stdlib sqlite3 connections')}; legacy/pool: SQLite heap "
        f"{figures['sqlite_heap_ratio']:.2f}x, RSS {figures['rss_ratio']:.2f}x"
        + (f", RSS above baseline {ratio:.2f}x" if ratio is not None else "")
        + f"; pool/sqlite3 RSS {figures['pool_over_sqlite3_rss']:.2f}x"
    )
