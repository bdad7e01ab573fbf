"""Bot processes for the lock tests (tests/capture/test_locks.py), using Python's stdlib `sqlite3`
the way the legacy bots do, each in its own process.

    python -m tests.support.lock_bot hold DB MODE SECONDS RELEASE_FILE
        MODE: immediate (BEGIN IMMEDIATE: RESERVED), exclusive (BEGIN EXCLUSIVE), or spill
        (BEGIN IMMEDIATE, then more writes than its page cache holds, so SQLite spills
        pages to the file and escalates to EXCLUSIVE before the COMMIT). Writes rows,
        prints `{"event": "holding", ...}`, keeps the transaction open for at least
        SECONDS and until RELEASE_FILE exists, then times its COMMIT and prints
        `{"event": "committed", "commit_ms": ...}` (or `{"event": "error", ...}`, exit 1).

    python -m tests.support.lock_bot write DB SECONDS TIMEOUT SEED [MIX]
        Writes continuously with busy timeout TIMEOUT (seconds; 0: none): autocommit
        inserts, INSERT OR REPLACE upserts, updates, deletes, multi-row transactions
        (starting with a write; MIX "deferred": BEGIN, SELECT, then UPDATE) and whole-table
        rewrites (BEGIN IMMEDIATE). Until SECONDS pass or SIGTERM, then prints one JSON
        line: ops, errors by message and by the statement that failed, the longest
        operation (`max_stall_ms`), and when errors and operations over 50 ms happened.

Every connection is in rollback-journal mode (the files are made so; checked here).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections import Counter

SCHEMA = """
CREATE TABLE IF NOT EXISTS positions(id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT UNIQUE,
    qty REAL, px REAL, meta BLOB);
CREATE TABLE IF NOT EXISTS kv(k TEXT PRIMARY KEY, v);
CREATE TABLE IF NOT EXISTS log_lines(msg TEXT, lvl INTEGER);
"""


def _emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def _rollback_journal(c: sqlite3.Connection) -> None:
    mode = c.execute("PRAGMA journal_mode").fetchone()[0]
    if mode == "wal":
        raise SystemExit(f"{mode}: the lock tests need a rollback-journal file")


# -- holder -----------------------------------------------------------------------------
def hold(db: str, mode: str, seconds: float, release: str) -> int:
    phase = "open"
    try:
        c = sqlite3.connect(db, timeout=5.0, isolation_level=None)
        _rollback_journal(c)
        if mode == "spill":
            c.execute("PRAGMA cache_size=10")  # pages: the writes below cannot stay in memory
        phase = "begin"
        t0 = time.monotonic()
        c.execute("BEGIN EXCLUSIVE" if mode == "exclusive" else "BEGIN IMMEDIATE")
        phase = "write"
        rows = 400 if mode == "spill" else 20
        for i in range(rows):
            c.execute("INSERT INTO log_lines VALUES (?, ?)", (f"held {i} " + "x" * 900, i % 5))
        c.execute("INSERT OR REPLACE INTO kv VALUES ('held', ?)", (rows,))
        c.execute("UPDATE positions SET qty = qty + 1 WHERE id % 3 = 0")
        locked_at = time.monotonic()
        _emit(event="holding", mode=mode, write_ms=(locked_at - t0) * 1000, pid=os.getpid())
        while time.monotonic() - locked_at < seconds or not os.path.exists(release):
            if time.monotonic() - locked_at > seconds + 60:
                raise SystemExit("no release file after 60 s")
            time.sleep(0.02)
        phase = "commit"
        held = time.monotonic() - locked_at
        tc = time.monotonic()
        c.execute("COMMIT")
        _emit(event="committed", commit_ms=(time.monotonic() - tc) * 1000, held_s=held)
        c.close()
        return 0
    except sqlite3.Error as e:
        _emit(event="error", phase=phase, error=f"{type(e).__name__}: {e}")
        return 1


# -- continuous writer ------------------------------------------------------------------
class Writer:
    """One bot's connection and its operation mix; `step` names the statement running,
    so an error says which lock SQLite could not get (see `write`)."""

    def __init__(self, db: str, timeout: float, rnd: random.Random, deferred: bool) -> None:
        self.db, self.timeout, self.rnd, self.deferred = db, timeout, rnd, deferred
        self.c: sqlite3.Connection | None = None
        self.step = ""
        self.n = 0

    def x(self, step: str, sql: str, args=()) -> sqlite3.Cursor:  # noqa: ANN001
        self.step = step
        return self.c.execute(sql, args)

    def connect(self) -> None:
        self.close()
        self.step = "open"
        self.c = sqlite3.connect(self.db, timeout=self.timeout, isolation_level=None)
        _rollback_journal(self.c)

    def close(self) -> None:
        if self.c is not None:
            self.c.close()
            self.c = None

    def abort(self) -> None:
        """After an error: end the transaction it left open, or drop the connection."""
        try:
            if self.c is not None and self.c.in_transaction:
                self.c.execute("ROLLBACK")
        except sqlite3.Error:
            self.close()

    def op(self) -> None:
        if self.c is None or self.n % 50 == 0:  # a bot that reconnects now and then
            self.connect()
        self.n += 1
        rnd, n, x = self.rnd, self.n, self.x
        r = rnd.random()
        sym = f"S{rnd.randrange(80)}"
        if r < 0.25:
            x("autocommit", "INSERT INTO log_lines VALUES (?, ?)", (f"line {n}", rnd.randrange(5)))
        elif r < 0.50:
            x(
                "autocommit",
                "INSERT OR REPLACE INTO positions(symbol, qty, px, meta) VALUES (?, ?, ?, ?)",
                (sym, rnd.random() * 10, rnd.random(), rnd.randbytes(rnd.randrange(8))),
            )
        elif r < 0.62:
            x(
                "autocommit",
                "INSERT OR REPLACE INTO kv VALUES (?, ?)",
                (f"k{rnd.randrange(200)}", n),
            )
        elif r < 0.70:
            x("autocommit", "UPDATE positions SET qty = qty + 1 WHERE symbol = ?", (sym,))
        elif r < 0.75:
            x("autocommit", "DELETE FROM kv WHERE k = ?", (f"k{rnd.randrange(200)}",))
        elif r < 0.97 and self.deferred:  # a deferred transaction that reads, then writes
            x("begin", "BEGIN")
            row = x("read in txn", "SELECT qty FROM positions WHERE symbol = ?", (sym,)).fetchone()
            px = row[0] if row else None
            x("write after read", "UPDATE positions SET px = ? WHERE symbol = ?", (px, sym))
            x("write in txn", "INSERT INTO log_lines VALUES (?, ?)", (f"read {n}", 1))
            x("commit", "COMMIT")
        elif r < 0.97:  # a multi-row transaction, starting with a write
            x("begin", "BEGIN")
            for i in range(rnd.randrange(2, 30)):
                x("write in txn", "INSERT INTO log_lines VALUES (?, ?)", (f"batch {n}.{i}", i % 5))
            x(
                "write in txn",
                "INSERT OR REPLACE INTO kv VALUES (?, ?)",
                (f"k{rnd.randrange(200)}", n),
            )
            x(
                "write in txn",
                "DELETE FROM log_lines WHERE rowid IN (SELECT rowid FROM log_lines LIMIT 2)",
            )
            x("commit", "COMMIT")
        else:  # whole-table rewrite in one transaction, as the real treasury writer does
            x("begin immediate", "BEGIN IMMEDIATE")
            rows = x("write in txn", "SELECT symbol, qty, px, meta FROM positions").fetchall()
            x("write in txn", "DELETE FROM positions")
            self.step = "write in txn"
            self.c.executemany(
                "INSERT INTO positions(symbol, qty, px, meta) VALUES (?, ?, ?, ?)", rows
            )
            x("commit", "COMMIT")


def write(db: str, seconds: float, timeout: float, seed: int, mix: str = "safe") -> int:
    """`mix` "deferred": the multi-row transactions are BEGIN; SELECT; UPDATE (a deferred
    transaction that reads first), instead of starting with a write."""
    rnd = random.Random(seed)
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    w = Writer(db, timeout, rnd, deferred=mix == "deferred")
    ops = 0
    errors: Counter[str] = Counter()  # by message
    where: Counter[str] = Counter()  # by the statement that failed
    error_times: list[float] = []  # wall clock, to tell which phase of a test they fell in
    slow: list[tuple[float, float]] = []  # (wall clock, ms) of operations over 50 ms
    worst, worst_at = 0.0, 0.0
    deadline = time.monotonic() + seconds
    while not stop and time.monotonic() < deadline:
        t0, wall = time.monotonic(), time.time()
        try:
            w.op()
        except sqlite3.Error as e:
            errors[f"{type(e).__name__}: {e}"] += 1
            where[w.step] += 1
            if len(error_times) < 10000:
                error_times.append(wall)
            w.abort()
        ops += 1
        took = time.monotonic() - t0
        if took > worst:
            worst, worst_at = took, wall
        if took > 0.05 and len(slow) < 2000:
            slow.append((wall, took * 1000))
        time.sleep(rnd.random() * 0.002)
    w.close()
    _emit(
        ops=ops,
        errors=sum(errors.values()),
        by_error=dict(errors),
        by_step=dict(where),
        max_stall_ms=worst * 1000,
        max_stall_at=worst_at,
        timeout=timeout,
        error_times=error_times,
        slow_ops=slow,
    )
    return 0


def main() -> int:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "hold":
        return hold(args[0], args[1], float(args[2]), args[3])
    if cmd == "write":
        return write(args[0], float(args[1]), float(args[2]), int(args[3]), *args[4:])
    raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    sys.exit(main())
