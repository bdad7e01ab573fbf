"""What every simulated bot shares: connection habits, schema drift, the run loop, the stats.

The habits are copied from the real bots on purpose, because they are what a replicator must
survive: a NEW `sqlite3.connect(path, timeout=5.0)` for every operation (no busy_timeout
pragma; lock waits rely on the driver's connect timeout), Python's default implicit
transactions, `CREATE TABLE IF NOT EXISTS` at start-up and `ALTER TABLE ... ADD COLUMN` when a
column is missing. A locked database is an everyday event for them: it is counted, the
operation is retried a little later, and the bot carries on.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cdc.demo.schema import FileSpec, quote

CONNECT_TIMEOUT = 5.0
MAX_RETRIES = 3


class Bot:
    """One kind of legacy writer. Subclasses set `kind`, `spec`, `OPS` and write the ops.

    Each op is a method that opens its own connection(s) through `tx()`; it runs one logical
    write the way the real bot did (a single statement or one multi-statement transaction).
    """

    kind: ClassVar[str]
    spec: ClassVar[FileSpec]
    OPS: ClassVar[tuple[tuple[str, int], ...]]  # (method name, weight)

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.path = Path(root) / "legacy" / self.spec.relpath
        self.rng = rng

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection, committed on success, rolled back on error, always closed."""
        conn = sqlite3.connect(self.path, timeout=CONNECT_TIMEOUT)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def setup(self, alter: bool) -> None:
        """Start-up schema work: re-run the module's DDL and, with `alter`, drift the schema."""
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such legacy file (run the generator first)")
        with self.tx() as conn:
            for stmt in self.spec.ddl:
                conn.execute(stmt)
        if alter:
            self.drift()

    def drift(self) -> None:
        """Schema changes a newer bot version makes at start-up; subclasses override."""

    def columns(self, table: str) -> list[str]:
        with self.tx() as conn:
            return [r[1] for r in conn.execute(f"PRAGMA table_info({quote(table)})")]

    @staticmethod
    def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
        """Checked per op on the op's own connection: another process may alter the table."""
        return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({quote(table)})"))

    def add_column(self, table: str, column: str, decl: str) -> bool:
        """`ALTER TABLE ... ADD COLUMN` if the column is missing, as the real bots did."""
        if column in self.columns(table):
            return False
        with self.tx() as conn:
            conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column)} {decl}")
        return True

    def pick_key(self, conn: sqlite3.Connection, table: str, key: str) -> object | None:
        """A random existing key value (None if the table is empty)."""
        row = conn.execute(
            f"SELECT {quote(key)} FROM {quote(table)} ORDER BY random() LIMIT 1"
        ).fetchone()
        return None if row is None else row[0]

    def pick_op(self) -> str:
        names, weights = zip(*self.OPS, strict=True)
        return self.rng.choices(names, weights)[0]


@dataclass
class Stats:
    """What a bot reports at exit; `max_stall_ms` is the longest single write call."""

    bot: str
    ops: int = 0
    errors: int = 0
    max_stall_ms: float = 0.0
    elapsed_s: float = 0.0
    ops_by_name: Counter[str] = field(default_factory=Counter)
    error_messages: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "bot": self.bot,
            "ops": self.ops,
            "errors": self.errors,
            "max_stall_ms": round(self.max_stall_ms, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "ops_by_name": dict(self.ops_by_name),
            "error_messages": dict(self.error_messages.most_common(10)),
        }


def run_bot(
    bot: Bot,
    seconds: float,
    rate: float | None = None,
    alter: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> Stats:
    """Run `bot` until `seconds` pass or `should_stop()`; `rate` caps ops/second (None: flat out).

    Only `sqlite3.Error` is absorbed (counted, and an OperationalError such as "database is
    locked" retried up to MAX_RETRIES times); anything else is a bug in the demo and raises.
    """
    stats = Stats(bot.kind)
    start = time.monotonic()
    deadline = start + seconds

    def record_error(e: sqlite3.Error) -> None:
        stats.errors += 1
        stats.error_messages[f"{type(e).__name__}: {e}"] += 1

    while True:  # start-up DDL can meet a locked file too
        try:
            bot.setup(alter)
            break
        except sqlite3.OperationalError as e:
            record_error(e)
            if not _sleep(0.1, deadline, should_stop):
                stats.elapsed_s = time.monotonic() - start
                return stats

    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    retry: str | None = None
    attempts = 0
    while not should_stop() and time.monotonic() < deadline:
        name = retry or bot.pick_op()
        t0 = time.perf_counter()
        try:
            getattr(bot, name)()
            stats.ops += 1
            stats.ops_by_name[name] += 1
            retry, attempts = None, 0
        except sqlite3.OperationalError as e:
            record_error(e)
            attempts += 1
            retry = name if attempts <= MAX_RETRIES else None
            attempts = attempts if retry else 0
        except sqlite3.Error as e:  # e.g. IntegrityError: the real bots logged and moved on
            record_error(e)
            retry, attempts = None, 0
        stats.max_stall_ms = max(stats.max_stall_ms, (time.perf_counter() - t0) * 1000)
        if retry:
            _sleep(0.02 * attempts + bot.rng.random() * 0.03, deadline, should_stop)
        elif interval:
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            _sleep(next_at - time.monotonic(), deadline, should_stop)
    stats.elapsed_s = time.monotonic() - start
    return stats


def _sleep(seconds: float, deadline: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep in small steps so a stop request is honoured quickly; False if time is up."""
    end = min(time.monotonic() + max(seconds, 0.0), deadline)
    while not should_stop():
        left = end - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, 0.05))
    return not should_stop() and time.monotonic() < deadline
