"""Fixtures for the benchmarks: an end-of-run summary of the derived figures; and what two
bench modules share (a bench module never imports another one).

pytest-benchmark's table shows timings only, while what the issue asks about are derived
figures (with/without ratios, changes/s, lag percentiles). Each benchmark stores them in
`benchmark.extra_info`, where `--benchmark-json` keeps them, and adds a line here so
they are also printed at the end of the run.

Shared below, by the benches that use them: the corpus cutover benches' bot writes and
daemon helpers (test_cutover_pause, test_rollback_pause), a replicated table of fills
(test_verifier, test_fence_digest), and the lag setting (test_lag, test_verifier_impact).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest

from bench.support import SCALE, create_db, make_config, percentile
from cdc.config import Config
from cdc.daemon.status import collect_status
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan
from cdc.sqlident import q
from tests.support.corpus import config_to_toml, copy_legacy, corpus_root, read_plan_json, run_cli
from tests.support.corpus import make_config as make_corpus_config
from tests.support.pipeline import Pipeline
from verifier import select_tables

_SUMMARY: list[str] = []


@pytest.fixture
def summary():
    """`summary(line)` adds a line to the "sqlite-cdc derived figures" section."""
    return _SUMMARY.append


@pytest.fixture(autouse=True)
def _machine_load(request):
    """Record the load average: this 2-core VM may be shared, and load skews every figure."""
    if "benchmark" in request.fixturenames:
        bench = request.getfixturevalue("benchmark")
        bench.extra_info["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)


def pytest_terminal_summary(terminalreporter) -> None:
    if _SUMMARY:
        terminalreporter.section("sqlite-cdc derived figures")
        for line in _SUMMARY:
            terminalreporter.write_line(line)


# -- the corpus cutover benches (test_cutover_pause, test_rollback_pause) --------------------


RATE = 50.0  # writes per second, per bot


RETRY_S = 0.002  # a refused bot retries its legacy write this often


WARMUP_S = 1.0  # bots writing before the first cutover


# (source, table) per stage: copied tables, journal modes mixed; jarvis.db holds one table
# of analytics and one of core, so after the first stage that file is partly fenced.
BOT_TABLES: dict[str, list[tuple[str, str]]] = {
    "analytics": [("jarvis", "trade_learnings"), ("bot_health", "bot_errors")],
    "cache": [("rate_limiter", "request_log"), ("custom", "products")],
    "core": [("jarvis", "error_logs"), ("telegram_memory", "messages")],
}


def row_insert(conn: sqlite3.Connection, table: str) -> tuple[str, list[str]]:
    """An INSERT that fits `table` as it is declared: every column without a default gets a
    value of its affinity (a TEXT key a fresh uuid), a rowid alias is left to SQLite."""
    info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    if not info:
        raise RuntimeError(f"no table {table}")
    keys = [c for c in info if c[5]]
    cols, kinds = [], []
    for _cid, name, decl, _notnull, default, pk in info:
        decl = (decl or "").upper()
        if pk and len(keys) == 1 and decl == "INTEGER":
            continue  # rowid alias (AUTOINCREMENT or not): SQLite picks the id
        if default is not None:
            continue
        if pk:
            kind = "key"
        elif "INT" in decl:
            kind = "int"
        elif any(a in decl for a in ("REAL", "FLOA", "DOUB")):
            kind = "real"
        elif "BLOB" in decl:
            kind = "blob"
        else:
            kind = "text"
        cols.append(f'"{name}"')
        kinds.append(kind)
    if not cols:
        return f'INSERT INTO "{table}" DEFAULT VALUES', []
    marks = ", ".join("?" * len(cols))
    return f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES ({marks})', kinds


def row_values(kinds: list[str], n: int, rng: random.Random) -> tuple:
    out: list[object] = []
    for k in kinds:
        if k == "key":
            out.append(uuid.UUID(int=rng.getrandbits(128)).hex)
        elif k == "int":
            out.append(10**9 + n)
        elif k == "real":
            out.append(rng.random() * 100)
        elif k == "blob":
            out.append(rng.randbytes(8))
        else:
            out.append(f"bench-{n}-{rng.getrandbits(32):08x}")
    return tuple(out)


def write_once(path: str, sql: str, params: tuple) -> str | None:
    """One bot write on its own connection; None when it committed, else the error."""
    try:
        c = sqlite3.connect(path, timeout=5.0)
        try:
            with c:
                c.execute(sql, params)
        finally:
            c.close()
    except sqlite3.Error as e:
        return str(e) or type(e).__name__
    return None


def marked(kinds: list[str], n: int, rng: random.Random, marker: str) -> tuple:
    """`row_values` with the first TEXT column holding `marker` (to find the row later)."""
    vals = list(row_values(kinds, n, rng))
    vals[kinds.index("text")] = marker
    return tuple(vals)


def insert_row(path: str, sql: str, params: tuple) -> tuple[int | None, str | None]:
    """`write_once` that also returns the new row's id: (id, None) or (None, error)."""
    try:
        c = sqlite3.connect(path, timeout=5.0)
        try:
            with c:
                rowid = c.execute(sql, params).lastrowid
        finally:
            c.close()
    except sqlite3.Error as e:
        return None, str(e) or type(e).__name__
    return rowid, None


def installed_corpus(root: Path) -> Path:
    """A fresh copy of the corpus's legacy tree in root, its resolved plan as out/cdc.toml,
    installed with `cdc install`; the cdc.toml."""
    corpus = corpus_root()
    legacy = copy_legacy(corpus / "legacy", root / "legacy")
    out = root / "out"
    data, _ = make_corpus_config(read_plan_json(corpus), legacy, out, resolve=True)
    toml = out / "cdc.toml"
    toml.write_text(config_to_toml(data), encoding="utf-8")
    r = run_cli("install", toml, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return toml


def go(record: str) -> bool:
    """Whether the stage's cutover record says "done" (the record is replaced atomically)."""
    try:
        with open(record, "rb") as f:
            return json.loads(f.read()).get("state") == "done"
    except FileNotFoundError:
        return False


def snapshot_applied(cfg: Config, daemon: subprocess.Popen) -> bool:
    assert daemon.poll() is None, f"the daemon exited ({daemon.returncode})"
    st = collect_status(cfg)
    return st.daemon.state == "running" and all(
        s.snapshot == "done" and s.backlog_events == 0 and s.last_error is None
        for s in st.sources
        if s.tables
    )


def log_tail(log: Path, n: int = 3000) -> str:
    return "\n-- daemon log (tail) --\n" + log.read_text(errors="replace")[-n:]


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def pct(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
        "n": len(values),
    }


# -- a replicated table, verified (test_verifier, test_fence_digest) --------------------------


FILLS_DDL = (
    """CREATE TABLE fills (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol TEXT NOT NULL,
    qty REAL,
    px REAL NOT NULL,
    ts INTEGER NOT NULL,
    note TEXT
)""",
    "CREATE INDEX fills_symbol_ts ON fills(symbol, ts)",
)


# Deterministic, varied values: 200 symbols, 10% NULL qty, 25% NULL note, ~55-byte notes.
FILLS_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO fills (symbol, qty, px, ts, note)
SELECT printf('TOK%03d', (i * 7919) % 200),
       CASE WHEN i % 10 = 0 THEN NULL ELSE ((i * 2654435761) % 500000) / 100.0 END,
       ((i * 40503) % 1000003) / 1000.0 + 0.0001,
       1700000000000 + i * 37,
       CASE WHEN i % 4 = 0 THEN NULL
            ELSE printf('{"route":"%s","slip_bps":%d,"tx":"%016x"}',
                        char(65 + i % 3), i % 300, i * 2654435761)
       END
FROM n
"""


@dataclass(frozen=True)
class Files:
    cfg: Config
    plan: Plan
    legacy: str
    target: str
    target_table: str


def open_readonly(path: str) -> apsw.Connection:
    return apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)


def build_replicated(root, rows: int) -> Files:  # noqa: ANN001 - a pathlib.Path
    """`rows` bot-like rows in a legacy file, replicated into their target once."""
    legacy = str(root / "legacy.db")
    create_db(legacy, "wal", FILLS_DDL)
    c = apsw.Connection(legacy)
    with c:
        c.execute(FILLS_FILL, (rows,))
    c.close()
    cfg = make_config(root, {"legacy": legacy}, snapshot_chunk=20_000)
    plan = resolve_plan(cfg)
    p = Pipeline(cfg, plan)
    try:
        p.sync()
    finally:
        p.close()
    (m,) = select_tables(plan)
    return Files(cfg, plan, legacy, plan.targets[m.target], m.target_table)


def count(path: str, sql: str) -> int:
    c = open_readonly(path)
    try:
        return c.execute(sql).fetchone()[0]
    finally:
        c.close()


def fetch_both(f: Files) -> tuple[int, int]:
    """Every row of both sides in Python lists, in key order: what any Python comparison reads."""
    src, tgt = open_readonly(f.legacy), open_readonly(f.target)
    try:
        a = src.execute("SELECT * FROM fills ORDER BY id").fetchall()
        b = tgt.execute(f"SELECT * FROM {q(f.target_table)} ORDER BY id").fetchall()
        return len(a), len(b)
    finally:
        src.close()
        tgt.close()


# -- the lag setting (test_lag, test_verifier_impact) ------------------------------------------


LAG_RATE = 200  # commits per second


LAG_SECONDS = max(2.0, 10.0 * min(1.0, SCALE))


LAG_DDL = (
    """CREATE TABLE ticks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    committed_at REAL NOT NULL,
    wallet TEXT NOT NULL,
    symbol TEXT NOT NULL,
    price REAL,
    qty INTEGER,
    note TEXT
)""",
    "CREATE INDEX idx_ticks_symbol ON ticks(symbol)",
)


class Poller(threading.Thread):
    """Notes when each target row first becomes visible to a reader."""

    def __init__(self, path: str, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READONLY)
        conn.set_busy_timeout(1000)
        last = 0
        try:
            while not self.stop.is_set():
                ids = conn.execute(
                    "SELECT id FROM ticks WHERE id > ? ORDER BY id", (last,)
                ).fetchall()
                now = time.time()
                for (i,) in ids:
                    self.seen[i] = now
                if ids:
                    last = ids[-1][0]
                time.sleep(self.interval)
        finally:
            conn.close()


def write_toml(root: Path, journal: str, watch: bool, poll_interval: float) -> Path:
    p = root / "cdc.toml"
    p.write_text(
        f"""targets = {{ main = "target.db" }}
state_dir = "state"

[[sources]]
name = "bot"
path = "legacy-{journal}.db"

[[rules]]
table = "*"
target = "main"

[daemon]
watch = {str(watch).lower()}
poll_interval = {poll_interval}
"""
    )
    return p
