"""A bot process for crash tests: writes like the legacy bots, counts its own failures.

Run as `python -m tests.support.workload DB SECONDS SEED [--alter]`. Each operation opens a new
connection (timeout 5 s, the driver default the real bots rely on) and commits; the mix
covers inserts, REPLACE upserts, updates (REAL, TEXT, BLOB), key changes, deletes and
whole-table rewrites. With `--alter` a bot also changes the schema now and then: it adds a
column (as the real bots do at start-up) and writes it at once, before any harvest can have
seen the new shape; it creates a table (`extra_<bot>_<n>`) and fills it at once; or it
rewrites one of those by DROP + CREATE.
It prints one JSON line of counters on exit.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS positions(id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT UNIQUE,
    qty REAL, px REAL, meta BLOB, opened TEXT DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS kv(k TEXT PRIMARY KEY, v);
CREATE TABLE IF NOT EXISTS ticks(sym TEXT, ts INTEGER, px REAL, PRIMARY KEY(sym, ts)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_lines(msg TEXT, lvl INTEGER);
"""

VALUES = [None, 0, -1, 2**62, -0.0, 1e-300, 0.1 + 0.2, "é😀", "", b"\x00\x01\x00", 3.5]


ALTER_EVERY = 150  # operations between two added columns, on average (`--alter`)
MAX_ADDED = 6  # columns one bot adds to each table at most


def drift(c: sqlite3.Connection, rnd: random.Random, name: str, added: list[str]) -> None:
    """One schema change: see the module doc."""
    r = rnd.random()
    extras = [a for a in added if a.startswith("extra_")]
    if r < 0.25 or (r < 0.4 and not extras):
        table = f"extra_{name}_{len(extras)}"
        c.execute(f"CREATE TABLE IF NOT EXISTS {table}(id INTEGER PRIMARY KEY, v)")
        c.executemany(
            f"INSERT INTO {table}(v) VALUES (?)", [(rnd.choice(VALUES),) for _ in range(30)]
        )
        added.append(table)
    elif r < 0.4:
        table = rnd.choice(extras)
        c.execute("BEGIN IMMEDIATE")
        rows = c.execute(f"SELECT v FROM {table}").fetchall()
        c.execute(f"DROP TABLE {table}")
        c.execute(f"CREATE TABLE {table}(id INTEGER PRIMARY KEY, v)")
        c.executemany(f"INSERT INTO {table}(v) VALUES (?)", rows[: rnd.randrange(len(rows) + 1)])
        c.execute("COMMIT")
    else:
        add_column(c, rnd, name, added)


def add_column(c: sqlite3.Connection, rnd: random.Random, name: str, added: list[str]) -> None:
    """ADD COLUMN to a captured table, then write the new column at once."""
    table = rnd.choice(["positions", "log_lines", "kv"])
    col = f"{name}_c{len(added)}"
    c.execute(f'ALTER TABLE {table} ADD COLUMN "{col}" {rnd.choice(["TEXT", "REAL", ""])}')
    added.append(col)
    c.execute(
        f'UPDATE {table} SET "{col}" = ? WHERE rowid IN '
        f"(SELECT rowid FROM {table} ORDER BY random() LIMIT 5)",
        (rnd.choice(VALUES),),
    )


def op(c: sqlite3.Connection, rnd: random.Random) -> None:
    r = rnd.random()
    sym = f"S{rnd.randrange(60)}"
    if r < 0.25:
        c.execute(
            "INSERT OR REPLACE INTO positions(symbol, qty, px, meta) VALUES (?, ?, ?, ?)",
            (sym, rnd.random() * 10, rnd.choice(VALUES), rnd.randbytes(rnd.randrange(4))),
        )
    elif r < 0.40:
        c.execute(
            "UPDATE positions SET px = ?, qty = qty + 1 WHERE symbol = ?", (rnd.random(), sym)
        )
    elif r < 0.45:
        c.execute(
            "UPDATE OR REPLACE positions SET id = id + 100000 WHERE symbol = ? AND id < 100000",
            (sym,),
        )
    elif r < 0.50:
        c.execute("DELETE FROM positions WHERE symbol = ?", (sym,))
    elif r < 0.62:
        c.execute(
            "INSERT OR REPLACE INTO kv(k, v) VALUES (?, ?)",
            (f"k{rnd.randrange(100)}", rnd.choice(VALUES)),
        )
    elif r < 0.66:
        c.execute("DELETE FROM kv WHERE k = ?", (f"k{rnd.randrange(100)}",))
    elif r < 0.80:
        c.execute(
            "INSERT OR REPLACE INTO ticks(sym, ts, px) VALUES (?, ?, ?)",
            (sym, rnd.randrange(50), rnd.random()),
        )
    elif r < 0.83:
        c.execute("UPDATE OR REPLACE ticks SET ts = ts + 1000 WHERE sym = ? AND ts < 1000", (sym,))
    elif r < 0.95:
        c.execute(
            "INSERT INTO log_lines(msg, lvl) VALUES (?, ?)",
            (rnd.choice(["ok", "warn", "é"]), rnd.randrange(5)),
        )
        if rnd.random() < 0.2:
            c.execute("DELETE FROM log_lines WHERE rowid IN (SELECT rowid FROM log_lines LIMIT 3)")
    else:  # whole-table rewrite in one transaction, as the real treasury writer does
        c.execute("BEGIN IMMEDIATE")  # deferred would deadlock two bots against each other
        rows = c.execute("SELECT symbol, qty, px, meta FROM positions").fetchall()
        c.execute("DELETE FROM positions")
        c.executemany("INSERT INTO positions(symbol, qty, px, meta) VALUES (?, ?, ?, ?)", rows)
        c.execute("COMMIT")


FILES = (("alpha", False), ("beta", False), ("gamma", True))  # (name, WAL?)


def setup(root: Path, config: str, seed_sql: str) -> Path:
    """The three legacy files the bots write (`root/legacy/<name>.db`: two in rollback-
    journal mode, one WAL), each with SCHEMA and `seed_sql`, the config, and capture
    installed with `cdc install`. Returns the config path."""
    for name, wal in FILES:
        path = root / "legacy" / f"{name}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        c = sqlite3.connect(path, isolation_level=None)
        if wal:
            c.execute("PRAGMA journal_mode=WAL")
        c.executescript(SCHEMA + seed_sql)
        c.close()
    cfg = root / "cdc.toml"
    cfg.write_text(config)
    r = subprocess.run(
        [sys.executable, "-m", "cdc", "install", "-c", str(cfg)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0, r.stderr
    return cfg


def start(
    root: Path, dbs: list[str], seconds: float, alter: bool = False
) -> list[subprocess.Popen]:
    """One bot process per entry of `dbs` (`root/legacy/<name>.db`; a name may repeat, so
    that two processes write one file), seeded by position; `alter`: see the module doc."""
    repo = Path(__file__).resolve().parents[2]
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.workload",
                str(root / "legacy" / f"{db}.db"),
                str(seconds),
                str(i),
                *(["--alter"] if alter else []),
            ],
            stdout=subprocess.PIPE,
            cwd=repo,
        )
        for i, db in enumerate(dbs)
    ]


def main() -> None:
    db, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    alter = "--alter" in sys.argv[4:]
    added: list[str] = []
    rnd = random.Random(seed)
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    ops = errors = fenced = 0
    worst = 0.0
    last_error = None
    deadline = time.monotonic() + seconds
    while not stop and time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            c = sqlite3.connect(db, timeout=5.0, isolation_level=None)
            if alter and len(added) < 3 * MAX_ADDED and rnd.randrange(ALTER_EVERY) == 0:
                drift(c, rnd, f"bot{seed}", added)
            else:
                op(c, rnd)
            c.close()
            ops += 1
        except sqlite3.Error as e:
            errors += 1
            last_error = f"{e} [{getattr(e, 'sqlite_errorname', '?')}] in {traceback.extract_tb(e.__traceback__)[-1].line}"
            if "moved to" in last_error:  # a cutover's fence: the loud refusal it must be
                fenced += 1
        worst = max(worst, time.monotonic() - t0)
        time.sleep(rnd.random() * 0.004)
    print(
        json.dumps(
            {
                "ops": ops,
                "errors": errors,
                "fenced": fenced,
                "max_stall_ms": worst * 1000,
                "schema_changes": len(added),
                "last_error": last_error,
            }
        )
    )


if __name__ == "__main__":
    main()
