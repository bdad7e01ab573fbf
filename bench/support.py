"""Workloads and drivers shared by the benchmarks.

Everything here works on real SQLite files: a bot's cost and the pipeline's throughput are
dominated by page writes, fsyncs and lock handoffs, which no in-memory stand-in has. The
legacy side is written with Python's stdlib `sqlite3`, as the legacy bots do; the engine
side is driven through its own classes, exactly as `cdc.daemon` wires them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import statistics
import time
from pathlib import Path

import apsw

from cdc.capture import triggers as capture
from cdc.capture.harvester import Harvester
from cdc.changelog.segments import LogWriter
from cdc.config import Config, config_from_dict
from cdc.inventory import table_info
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan
from replicator import Replicator
from tests.conftest import wait_until  # noqa: F401 - re-exported for the bench files

REPO = Path(__file__).resolve().parents[1]

SCALE = float(os.environ.get("CDC_BENCH_SCALE", "1"))
"""Shrinks every workload (e.g. 0.05 for a smoke run); the README figures use 1."""


def scaled(n: int, minimum: int = 1) -> int:
    return max(minimum, int(n * SCALE))


# -- the legacy table ------------------------------------------------------------------------
# Modelled on the bots' trade tables: an AUTOINCREMENT key, TEXT/REAL/INTEGER columns, a
# nullable JSON blob-in-TEXT, a CURRENT_TIMESTAMP default and one secondary index, so a
# write touches two B-trees plus sqlite_sequence, as a real bot write does.
TRADES_DDL = (
    """CREATE TABLE trades (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    wallet TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    price REAL NOT NULL,
    amount_sol REAL,
    lamports INTEGER NOT NULL,
    status TEXT DEFAULT 'open',
    meta_json TEXT,
    created_at TEXT DEFAULT CURRENT_TIMESTAMP
)""",
    "CREATE INDEX idx_trades_symbol_status ON trades(symbol, status)",
)
TRADE_COLS = "wallet, symbol, side, price, amount_sol, lamports, status, meta_json"
TRADE_INSERT = f"INSERT INTO trades ({TRADE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
SYMBOLS = [f"TOK{i:03d}" for i in range(200)]
STATUSES = ["open", "closed", "stopped", "tp1", "tp2"]


def trade_row(rng: random.Random) -> tuple:
    """One bot-like trade: mixed storage classes, some NULLs, a small JSON document."""
    price = rng.lognormvariate(-3, 2)
    meta = None
    if rng.random() < 0.7:
        meta = json.dumps(
            {
                "slippage_bps": rng.randrange(300),
                "route": rng.choice("ABC"),
                "tx": f"{rng.getrandbits(128):032x}",
            }
        )
    return (
        f"W{rng.randrange(50):02d}{rng.getrandbits(64):016x}",
        rng.choice(SYMBOLS),
        rng.choice(("buy", "sell")),
        price,
        None if rng.random() < 0.1 else round(rng.uniform(0.01, 5.0), 6),
        rng.randrange(10**7, 10**10),
        rng.choice(STATUSES),
        meta,
    )


def trade_rows(n: int, seed: int = 1) -> list[tuple]:
    rng = random.Random(seed)
    return [trade_row(rng) for _ in range(n)]


def create_db(path: str | os.PathLike[str], journal: str, ddl: tuple[str, ...]) -> None:
    """A fresh legacy file in the given journal mode ("wal" or "delete")."""
    c = sqlite3.connect(path, isolation_level=None)
    try:
        mode = c.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
        assert mode == journal, mode
        for stmt in ddl:
            c.execute(stmt)
    finally:
        c.close()


def install_capture(path: str | os.PathLike[str], tables: list[str]) -> None:
    """Our triggers, installed the way `cdc install` does it, on named tables."""
    conn = apsw.Connection(str(path))
    try:
        capture.install(conn, [table_info(conn, t) for t in tables], str(path))
    finally:
        conn.close()


def copy_db(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a closed (checkpointed) database file; a -wal left behind would be lost."""
    assert not os.path.exists(f"{src}-wal") or os.path.getsize(f"{src}-wal") == 0, src
    shutil.copyfile(src, dst)


def make_config(root: str | os.PathLike[str], sources: dict[str, str], **daemon) -> Config:
    """Every table of every source goes to one target, `root/target.db`."""
    return config_from_dict(
        {
            "targets": {"main": "target.db"},
            "sources": [{"name": n, "path": p} for n, p in sources.items()],
            "rules": [{"table": "*", "target": "main"}],
            "state_dir": "state",
            "daemon": daemon,
        },
        root,
    )


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the value below which p% of the samples lie."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


class Baseline:
    """The other side of a comparison, timed between the benchmark's own rounds.

    pytest-benchmark times one callable per test; a ratio against a baseline measured in a
    separate test would be skewed by whatever the disk did in between (fsync latency on a
    shared VM drifts by several x over minutes). So the benchmark's `setup` runs one
    baseline round before each measured round (A B A B ...) and the ratio compares medians
    of rounds that ran side by side.
    """

    def __init__(self, warmup_rounds: int = 0) -> None:
        self.warmup_rounds = warmup_rounds
        self.times: list[float] = []

    def run(self, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times.append(time.perf_counter() - t)
        return out

    @property
    def median(self) -> float:
        return statistics.median(self.times[self.warmup_rounds :])

    def record(self, benchmark, ratio_name: str, invert: bool = False) -> float | None:
        """Put both medians and their ratio (measured / baseline, or inverted) in extra_info."""
        if benchmark.stats is None or len(self.times) <= self.warmup_rounds:
            return None  # --benchmark-disable: nothing was timed
        measured = benchmark.stats.stats.median
        ratio = self.median / measured if invert else measured / self.median
        # Noise only ever adds time, so the ratio of the fastest rounds is a second opinion.
        fastest, base_fastest = benchmark.stats.stats.min, min(self.times[self.warmup_rounds :])
        min_ratio = base_fastest / fastest if invert else fastest / base_fastest
        benchmark.extra_info.update(
            {
                "median_s": measured,
                "baseline_median_s": self.median,
                "baseline_rounds": len(self.times) - self.warmup_rounds,
                ratio_name: round(ratio, 4),
                f"{ratio_name}_of_min": round(min_ratio, 4),
            }
        )
        return ratio


class Pipeline:
    """The daemon's harvest and apply halves, driven in one thread with timers around each.

    Constructed as `cdc.daemon.Daemon` constructs them (one `LogWriter`, one `Harvester` per
    source with tables, one `Replicator`), minus the threads and the state-dir lock, so a
    benchmark can tell how the time splits between reading the legacy files and applying.
    """

    def __init__(self, cfg: Config, plan: Plan | None = None) -> None:
        self.cfg = cfg
        self.settings = cfg.daemon
        self.plan = plan or resolve_plan(cfg)
        os.makedirs(cfg.state_dir, exist_ok=True)
        self.writer = LogWriter(cfg.log_dir, self.settings.segment_bytes)
        self.harvesters: list[Harvester] = []
        for sp in self.plan.sources:
            if sp.tables:
                h = Harvester(sp, self.writer, self.settings)
                h.open()
                self.harvesters.append(h)
        self.replicator = Replicator(self.plan, cfg.log_dir, self.settings)
        self.harvest_s = self.snapshot_s = self.apply_s = 0.0
        self.events = self.snapshot_rows = self.applied = 0

    def harvest_round(self) -> int:
        """One `harvest()` per source, as one pass of the daemon's harvest loop."""
        n = 0
        t = time.perf_counter()
        for h in self.harvesters:
            n += h.harvest().events
        self.harvest_s += time.perf_counter() - t
        self.events += n
        return n

    def snapshot_round(self) -> int:
        n = 0
        t = time.perf_counter()
        for h in self.harvesters:
            if h.snapshot_pending:
                n += h.snapshot_chunk()
        self.snapshot_s += time.perf_counter() - t
        self.snapshot_rows += n
        return n

    @property
    def snapshot_pending(self) -> bool:
        return any(h.snapshot_pending for h in self.harvesters)

    def caught_up(self) -> bool:
        end = self.writer.end_offset
        return all(c.offset >= end for c in self.replicator.checkpoints.values())

    def apply_all(self) -> int:
        """`Replicator.step` until every target's checkpoint is at the log's durable end."""
        n = 0
        t = time.perf_counter()
        while not self.caught_up():
            n += self.replicator.step(self.writer.end_offset)
        self.apply_s += time.perf_counter() - t
        self.applied += n
        return n

    def run_stream(self) -> None:
        """Harvest a batch, apply it, until the capture tables hold nothing new."""
        while self.harvest_round():
            self.apply_all()
        self.apply_all()

    def run_snapshot(self) -> None:
        """The daemon's harvest-loop order: a stream harvest, then a snapshot chunk."""
        while self.snapshot_pending:
            self.harvest_round()
            self.snapshot_round()
            self.apply_all()
        self.run_stream()

    def close(self) -> None:
        for h in self.harvesters:
            h.close()
        self.replicator.close()
        self.writer.close()
