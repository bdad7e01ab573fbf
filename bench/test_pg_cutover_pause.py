"""The bots' pause at a cutover into PostgreSQL beside the same cutover into a SQLite target
(issue 19): one legacy file of three tables (ROWS rows in all), a real `cdc run`, a bot
writing through the cutover, `cdc cutover core` as a command; the pause is the record's
(first fence to done) with its steps. Rounds alternate SQLite, PostgreSQL (A B A B), a
fresh copy of the file and a fresh target each. No timed assertion: medians and ratio."""

from __future__ import annotations

import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.pg_support import fresh_database, start_cluster
from cdc.stages.record import read_record

ROWS = int(os.environ.get("CDC_BENCH_PG_CUTOVER_ROWS", "30000"))
ROUNDS = int(os.environ.get("CDC_BENCH_PG_CUTOVER_ROUNDS", "3"))
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def cluster():
    yield from start_cluster()


def _legacy(path: Path) -> None:
    c = sqlite3.connect(path, isolation_level=None)
    c.executescript(
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE fills(id INTEGER PRIMARY KEY AUTOINCREMENT, sym TEXT, px REAL,"
        " qty INTEGER, note TEXT);"
        "CREATE TABLE pos(sym TEXT PRIMARY KEY, qty INTEGER, px REAL);"
        "CREATE TABLE ticks(ts REAL, sym TEXT, px REAL);"
    )
    third = ROWS // 3
    c.execute("BEGIN")
    c.executemany(
        "INSERT INTO fills(sym, px, qty, note) VALUES (?, ?, ?, ?)",
        ((f"S{i % 50}", i / 7, i, "x" * (i % 40)) for i in range(third)),
    )
    c.executemany("INSERT INTO pos VALUES (?, ?, ?)", ((f"P{i}", i, i / 3) for i in range(third)))
    c.executemany(
        "INSERT INTO ticks VALUES (?, ?, ?)", ((i / 10, "SOL", i / 9) for i in range(third))
    )
    c.execute("COMMIT")
    c.close()


def _cdc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args], capture_output=True, text=True, env=ENV,
        timeout=timeout, cwd=REPO,
    )  # fmt: skip


class _Bot(threading.Thread):
    """Inserts fills at ~100/s until stopped, through the cutover (its writes meet the
    fence and are refused: only the time matters here)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.stop = path, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                c = sqlite3.connect(self.path, timeout=5)
                with c:
                    c.execute("INSERT INTO fills(sym, px, qty) VALUES ('B', 1.5, 1)")
                c.close()
            except sqlite3.Error:
                pass
            time.sleep(0.01)


def _round(root: Path, target: str) -> dict:
    root.mkdir()
    _legacy(root / "a.db")
    cfg = root / "cdc.toml"
    cfg.write_text(
        f'state_dir = "{root}/state"\n[targets]\ncore = "{target}"\n'
        f'[[sources]]\nname = "a"\npath = "{root}/a.db"\n[[rules]]\ntable = "*"\ntarget = "core"\n'
    )
    assert _cdc("install", "-c", str(cfg)).returncode == 0
    log = open(root / "daemon.log", "w")  # noqa: SIM115 - closed below
    d = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run", "-c", str(cfg)], stdout=log, stderr=log, env=ENV
    )
    bot = _Bot(root / "a.db")
    try:
        r = _cdc("wait", "--zero-lag", "core", "-c", str(cfg), "--timeout", "120")
        assert r.returncode == 0, r.stderr
        bot.start()
        time.sleep(0.5)
        r = _cdc("cutover", "core", "-c", str(cfg))
        assert r.returncode == 0, (r.stdout, r.stderr)
    finally:
        bot.stop.set()
        d.send_signal(signal.SIGTERM)
        d.wait(30)
        log.close()
    rec = read_record(str(root / "state"), "core")
    return {"pause_ms": rec.pause_ms, "steps_ms": dict(rec.steps_ms)}


def test_cutover_pause_postgresql_beside_sqlite(cluster, tmp_path: Path) -> None:
    load0 = os.getloadavg()[0]
    got: dict[str, list[dict]] = {"sqlite": [], "postgresql": []}
    for i in range(ROUNDS):
        got["sqlite"].append(_round(tmp_path / f"s{i}", f"{tmp_path}/s{i}-core.db"))
        dsn = fresh_database(cluster, f"cut{i}")
        got["postgresql"].append(_round(tmp_path / f"p{i}", dsn))
    load1 = os.getloadavg()[0]
    med = {k: statistics.median(r["pause_ms"] for r in v) for k, v in got.items()}
    print(
        f"\ncutover pause, {ROWS} rows in 3 tables, {ROUNDS} rounds A B (load {load0:.2f} -> {load1:.2f})"
    )
    for k, v in got.items():
        steps = {s: round(statistics.median(r["steps_ms"].get(s, 0.0) for r in v), 1)
                 for s in v[0]["steps_ms"]}  # fmt: skip
        pauses = ", ".join(f"{r['pause_ms']:.0f}" for r in v)
        print(f"  {k:10s} pause median {med[k]:.0f} ms ({pauses}); steps median {steps}")
    print(f"  ratio PostgreSQL / SQLite: {med['postgresql'] / med['sqlite']:.1f}x")
