"""`cdc inventory` on the real corpus and on a large synthetic folder (goal: the corpus in a
couple of seconds), beside a baseline that does the least an inventory must: open each file
read-only, read its schema and count each table's rows.

`ratio` = inventory time / baseline time, measured side by side in one run (the machine is
shared: compare ratios, not absolute times across runs).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import statistics
import time
from pathlib import Path

import pytest

from bench.support import scaled
from cdc.planning.inventory_report import run_inventory

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "jarvis" / "legacy"
FILES = scaled(300, 30)


def _baseline(root: Path) -> int:
    rows = 0
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm", "-journal")):
            continue
        with open(p, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                continue
        with contextlib.closing(sqlite3.connect(f"file:{p}?mode=ro", uri=True)) as c:
            for (name,) in c.execute(
                "SELECT name FROM sqlite_master WHERE type='table'"
            ).fetchall():
                rows += c.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    return rows


def _side_by_side(root: Path, out: Path, rounds: int = 5) -> tuple[float, float]:
    ours, base = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        _baseline(root)
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_inventory([str(root)], str(out))
        ours.append(time.perf_counter() - t)
    return statistics.median(ours), statistics.median(base)


def _record(benchmark, summary, what: str, ours: float, base: float, n: int) -> None:
    benchmark.extra_info.update(
        {"inventory_s_median": ours, "baseline_s_median": base, "ratio": ours / base, "files": n}
    )
    summary(
        f"inventory {what} ({n} files): median {ours * 1000:.0f} ms, baseline (open, schema, "
        f"count) {base * 1000:.0f} ms, ratio {ours / base:.2f}x"
    )


def test_inventory_of_the_corpus(benchmark, summary, tmp_path):
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    root = tmp_path / "legacy"
    shutil.copytree(CORPUS, root)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    out = tmp_path / "out"
    benchmark.pedantic(run_inventory, args=([str(root)], str(out)), rounds=3, iterations=1)
    ours, base = _side_by_side(root, out)
    _record(benchmark, summary, "of the corpus", ours, base, 29)


def test_inventory_of_a_large_folder(benchmark, summary, tmp_path):
    root = tmp_path / "many"
    for i in range(FILES):
        p = root / f"bot{i % 10}" / f"db{i}.sqlite"
        p.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(p)) as c:
            c.executescript(
                "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT UNIQUE, x REAL);"
                "CREATE INDEX t_x ON t(x); CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;"
            )
            c.executemany(
                "INSERT INTO t(v, x) VALUES (?, ?)", [(f"v{j}", j * 0.5) for j in range(200)]
            )
            c.commit()
    out = tmp_path / "out"
    benchmark.pedantic(run_inventory, args=([str(root)], str(out)), rounds=3, iterations=1)
    ours, base = _side_by_side(root, out, rounds=3)
    _record(benchmark, summary, "of a synthetic folder", ours, base, FILES)
