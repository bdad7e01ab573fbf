"""Commit-to-applied lag into a PostgreSQL target, beside the same into a SQLite target, under
`bench/test_lag.py`'s load, in one run (issue 19). No timed assertion.

The load is the lag bench's own: its bot (`python -m bench.test_lag --bot`, run as a
process, not imported) commits one row every 5 ms (`LAG_RATE`, 200/s) for `LAG_SECONDS`
into the `ticks` table (`LAG_DDL`) of a WAL legacy file, opening a connection per write;
the daemon is a real `python -m cdc run` process with the lag bench's settings
(`write_toml`: watchdog on, `poll_interval` 0.5 s as a fallback). Only the target differs:
`target.db`, or a fresh database on a private PostgreSQL cluster (`bench/pg_support.py`).

Lag is measured from the moment the bot's COMMIT returned, by the lag bench's two clocks:
`landed`, a row trigger on the target table stamping each row inside the apply's
transaction (PostgreSQL: `clock_timestamp()`, the same host clock); `visible`, a poller in
this process reading the target every 2 ms (SQLite: `bench.conftest.Poller`; PostgreSQL:
`PgPoller`, autocommit). Rounds alternate SQLite, PostgreSQL, SQLite, PostgreSQL; the
percentiles are over every row of a kind's rounds, and each round's p99 is kept too.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from bench.conftest import LAG_DDL, LAG_RATE, LAG_SECONDS, Poller, write_toml
from bench.pg_support import (
    PG_LANDED_DDL,
    SQLITE_LANDED_DDL,
    PgPoller,
    fresh_database,
    start_cluster,
)
from bench.support import REPO, create_db, percentile, wait_until
from cdc.capture import install as ops
from cdc.config import load_config

ROUNDS = 2  # of each kind, alternating
TABLE = "ticks"
# The daemon and the bot run from other folders: they find this tree whatever the install
# (`PYTHONPATH=.` is relative, and an editable install may point at another checkout).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def cluster():
    yield from start_cluster()


class SqliteSide:
    def __init__(self, root: Path) -> None:
        self.path = root / "target.db"
        self.conn = None

    def ready(self) -> bool:
        if not self.path.exists():
            return False
        c = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1.0)
        try:
            return c.execute("SELECT 1 FROM sqlite_master WHERE name=?", (TABLE,)).fetchone()
        except sqlite3.OperationalError:
            return False
        finally:
            c.close()

    def prepare(self) -> Poller:
        self.conn = apsw.Connection(str(self.path))
        self.conn.set_busy_timeout(5000)
        for stmt in SQLITE_LANDED_DDL:
            self.conn.execute(stmt.format(table=TABLE))
        return Poller(str(self.path))

    def landed(self) -> dict[int, float]:
        return dict(self.conn.execute("SELECT id, landed FROM bench_landed").fetchall())

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class PgSide:
    def __init__(self, dsn: str) -> None:
        import psycopg

        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)

    def ready(self) -> bool:
        return self.conn.execute("SELECT to_regclass(%s)", (f'"{TABLE}"',)).fetchone()[0]

    def prepare(self) -> PgPoller:
        for stmt in PG_LANDED_DDL:
            self.conn.execute(stmt.format(table=TABLE))
        return PgPoller(self.dsn, TABLE)

    def landed(self) -> dict[int, float]:
        return dict(self.conn.execute("SELECT id, landed FROM bench_landed").fetchall())

    def close(self) -> None:
        self.conn.close()


def run_lag(root: Path, side) -> dict:  # noqa: ANN001 - SqliteSide | PgSide
    """One steady-load run into `side`'s target: the lag of every row, in ms."""
    legacy = root / "legacy-wal.db"
    create_db(legacy, "wal", LAG_DDL)
    cfg_path = write_toml(root, "wal", True, 0.5)  # the lag bench's settings
    if isinstance(side, PgSide):  # the same file, its target a URL
        cfg_path.write_text(cfg_path.read_text().replace('"target.db"', f'"{side.dsn}"'))
    ops.install(load_config(cfg_path, postgres=True))
    err = open(root / "daemon.stderr", "w")  # noqa: SIM115 - closed in finally
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run", "-c", str(cfg_path)],
        cwd=root,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    poller = None
    try:
        wait_until(
            lambda: side.ready() or daemon.poll() is not None,
            30,
            0.01,
            "the daemon to create the target table",
        )
        assert daemon.poll() is None, (root / "daemon.stderr").read_text()
        poller = side.prepare()
        poller.start()
        out = root / "bot.json"
        bot = subprocess.run(
            [sys.executable, "-m", "bench.test_lag", "--bot", str(legacy), str(LAG_RATE),
             str(LAG_SECONDS), str(out)],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=LAG_SECONDS + 60,
        )  # fmt: skip
        assert bot.returncode == 0, bot.stderr
        result = json.loads(out.read_text())
        n = len(result["rows"])
        wait_until(
            lambda: len(side.landed()) >= n and len(poller.seen) >= n,
            60,
            0.01,
            "every row to be applied",
        )
        landed = side.landed()
    finally:
        if poller is not None:
            poller.stop.set()
            poller.join(5)
        side.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = daemon.wait()
        err.close()
    assert rc == 0, (root / "daemon.stderr").read_text()
    commits = {i: t for i, _, t in result["rows"]}
    return {
        "rows": n,
        "rate_achieved": round(n / result["seconds"], 1),
        "bot_ms": [(t1 - t0) * 1e3 for _, t0, t1 in result["rows"]],
        "landed_ms": [(landed[i] - t) * 1e3 for i, t in commits.items()],
        "visible_ms": [(poller.seen[i] - t) * 1e3 for i, t in commits.items()],
    }


def _figures(runs: list[dict]) -> dict:
    out: dict = {"rows": sum(r["rows"] for r in runs)}
    out["rate_achieved"] = [r["rate_achieved"] for r in runs]
    for clock in ("visible", "landed", "bot"):
        every = [v for r in runs for v in r[f"{clock}_ms"]]
        for k, p in (("p50", 50), ("p99", 99), ("max", 100)):
            out[f"{clock}_{k}_ms"] = round(percentile(every, p), 2)
        out[f"{clock}_p99_ms_by_round"] = [round(percentile(r[f"{clock}_ms"], 99), 2) for r in runs]
    return out


def test_pg_lag_beside_sqlite(benchmark, summary, cluster, tmp_path) -> None:
    runs: dict[str, list[dict]] = {"sqlite": [], "pg": []}
    rounds = iter(range(ROUNDS))

    def one() -> None:
        n = next(rounds)
        d = tmp_path / f"sqlite{n}"
        d.mkdir()
        runs["sqlite"].append(run_lag(d, SqliteSide(d)))
        d = tmp_path / f"pg{n}"
        d.mkdir()
        runs["pg"].append(run_lag(d, PgSide(fresh_database(cluster, f"lag{n}"))))

    benchmark.group = "pg lag"
    benchmark.pedantic(one, rounds=ROUNDS, iterations=1)
    figures = {kind: _figures(r) for kind, r in runs.items()}
    benchmark.extra_info.update({"rate_target": LAG_RATE, "seconds": LAG_SECONDS, **figures})
    for kind, name in (("pg", "PostgreSQL"), ("sqlite", "SQLite    ")):
        f = figures[kind]
        summary(
            f"lag into {name} target, WAL legacy, watchdog, {f['rows']} rows at "
            f"{'/'.join(map(str, f['rate_achieved']))}/s: visible p50 {f['visible_p50_ms']:.1f} "
            f"ms p99 {f['visible_p99_ms']:.1f} ms (by round "
            f"{', '.join(map(str, f['visible_p99_ms_by_round']))}) max "
            f"{f['visible_max_ms']:.1f} ms; landed p50 {f['landed_p50_ms']:.1f} ms p99 "
            f"{f['landed_p99_ms']:.1f} ms; bot write p99 {f['bot_p99_ms']:.1f} ms"
        )
