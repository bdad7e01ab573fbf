"""Does the daemon's continuous verifier slow the bots, or replication? (goal: it must not)

The setting of `bench/test_lag.py` (its poller and config are in bench/conftest.py, its bot
runs as `python -m bench.test_lag --bot`): a real `python -m cdc run` daemon, and a bot process committing one row to `ticks` every 5 ms
with stdlib `sqlite3`, a new connection per write. Beside the hot table, each legacy file
holds a quiet table of QUIET_ROWS rows (`ledger`, built with one INSERT ... SELECT from a
recursive CTE before capture is installed), mapped to the target like the rest, so the
verifier has plenty to read while the bot writes.

Each benchmark runs two cases side by side, in fresh folders: first the daemon with
`verify.continuous = false` (the baseline, timed by `Baseline`), then the daemon with the
verifier on and `cycle_pause = 0`, so it verifies the whole time, at one of two paces:

- `default`: `rows_per_second = 20000`, the shipped pace;
- `unlimited`: `rows_per_second = 0`, a stress case (as fast as one thread can read).

Each case waits for the initial copy of `ledger` to be applied, then measures a window:
the bot's steady run plus the time until its last row is visible in the target. Figures:

- bot commit time: around the bot's connect + INSERT + COMMIT (p50, p99, max);
- lag: from the bot's COMMIT returning to the row being visible in the target (p50, p99);
- verifier work in the window: passes the verifier completed while the bot ran, and the
  legacy rows those passes read, from `verify-status.json` (polled every 20 ms); asserted
  non-zero in the verifier cases, and no table may be found `diverged` (or fail).

`window_ratio` (via `Baseline.record`) compares the windows' wall times, which grow only if
the bot falls behind its schedule or the target lags at the end; the percentile ratios
(`bot_p99_ratio`, `visible_p99_ratio`, ...) compare the two cases' distributions.
"""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.conftest import LAG_DDL, LAG_RATE, LAG_SECONDS, Poller, write_toml
from bench.support import REPO, Baseline, create_db, percentile, scaled, wait_until
from cdc.capture import install as ops
from cdc.config import load_config
from verifier.continuous import read_verifier_status

QUIET_ROWS = scaled(100_000, 2_000)  # one pass at the default pace takes ~5 s of the 10 s
ROUNDS = 1
PACES = {  # [verify] settings of each case
    "off": {"continuous": False},
    "default": {"continuous": True, "rows_per_second": 20000, "cycle_pause": 0},
    "unlimited": {"continuous": True, "rows_per_second": 0, "cycle_pause": 0},
}

QUIET_DDL = (
    """CREATE TABLE ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    amount REAL,
    lamports INTEGER NOT NULL,
    memo TEXT
)""",
    "CREATE INDEX idx_ledger_account ON ledger(account)",
)
QUIET_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO ledger (account, amount, lamports, memo)
SELECT printf('A%04d', (i * 7919) % 5000),
       CASE WHEN i % 10 = 0 THEN NULL ELSE ((i * 2654435761) % 500000) / 100.0 END,
       (i * 40503) % 1000000007,
       CASE WHEN i % 4 = 0 THEN NULL ELSE printf('{"tx":"%016x","n":%d}', i * 2654435761, i) END
FROM n
"""


def target_rows(path: Path, table: str) -> int:
    """Rows of a target table, 0 while the file or the table does not exist."""
    if not path.exists():
        return 0
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        c.close()


class Case:
    """A legacy file (ledger full, ticks empty) and its daemon, with the ledger copied."""

    def __init__(self, root: Path, journal: str, pace: str) -> None:
        self.root, self.pace, self.rc = root, pace, None
        root.mkdir(parents=True)
        self.legacy = root / f"legacy-{journal}.db"
        self.target = root / "target.db"
        self.state_dir = str(root / "state")
        create_db(self.legacy, journal, (*LAG_DDL, *QUIET_DDL))
        c = sqlite3.connect(self.legacy)
        with c:
            c.execute(QUIET_FILL, (QUIET_ROWS,))
        c.close()
        cfg_path = write_toml(root, journal, watch=True, poll_interval=0.5)
        with cfg_path.open("a") as f:
            f.write("\n[verify]\n")
            f.writelines(f"{k} = {json.dumps(v)}\n" for k, v in PACES[pace].items())
        ops.install(load_config(cfg_path))
        self.err = open(root / "daemon.stderr", "w")  # noqa: SIM115 - closed in stop()
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "cdc", "run", "-c", str(cfg_path)],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )
        try:
            wait_until(
                lambda: (
                    target_rows(self.target, "ledger") >= QUIET_ROWS
                    or self.daemon.poll() is not None
                ),
                120,
                0.05,
                "the initial copy of the quiet table",
            )
            assert self.daemon.poll() is None, self.stderr()
            if PACES[pace]["continuous"]:  # the verifier leaves its skip loop for real reads
                wait_until(self.verifying, 30, 0.02, "the verifier to read the quiet table")
        except BaseException:
            self.stop()
            raise

    def stderr(self) -> str:
        return (self.root / "daemon.stderr").read_text()

    def verifying(self) -> bool:
        st = read_verifier_status(self.state_dir)
        return st is not None and (
            st.current == "bot.ledger" or any(t.state == "equal" for t in st.tables)
        )

    def window(self) -> dict:
        """The bot's steady run, until its last row is visible in the target (the timed part)."""
        poller = Poller(str(self.target))
        poller.start()
        out = self.root / "bot.json"
        seen: dict[tuple[str, str], int] = {}
        st = read_verifier_status(self.state_dir)
        for t in st.tables if st else []:
            seen[(t.source, t.table)] = t.passes
        passes = rows = 0
        states: set[str] = set()
        try:
            bot = subprocess.Popen(
                [sys.executable, "-m", "bench.test_lag", "--bot"]
                + [str(self.legacy), str(LAG_RATE), str(LAG_SECONDS), str(out)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            while bot.poll() is None:  # what the verifier completes while the bot runs
                st = read_verifier_status(self.state_dir)
                for t in st.tables if st else []:
                    new = t.passes - seen.get((t.source, t.table), 0)
                    if new > 0:
                        passes, rows = passes + new, rows + new * t.rows
                        states.add(t.state)
                        seen[(t.source, t.table)] = t.passes
                time.sleep(0.02)
            assert bot.returncode == 0, bot.stderr.read()
            bot.stderr.close()
            result = json.loads(out.read_text())
            n = len(result["rows"])
            wait_until(lambda: len(poller.seen) >= n, 60, 0.005, "every bot row to be visible")
        finally:
            poller.stop.set()
            poller.join(5)
        return {
            "rows": result["rows"],
            "bot_seconds": result["seconds"],
            "seen": dict(poller.seen),
            "verifier_passes": passes,
            "verifier_rows": rows,
            "verifier_states": sorted(states),
        }

    def stop(self) -> None:
        if self.rc is not None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
        try:
            self.rc = self.daemon.wait(30)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.rc = self.daemon.wait()
        self.err.close()


def figures(w: dict) -> dict:
    """Bot commit time and commit-to-visible lag percentiles of one window, in ms."""
    bot_ms = [(t1 - t0) * 1e3 for _, t0, t1 in w["rows"]]
    visible_ms = [(w["seen"][i] - t1) * 1e3 for i, _, t1 in w["rows"]]
    out = {"rows": len(w["rows"]), "rate": round(len(w["rows"]) / w["bot_seconds"], 1)}
    for k, p in (("p50", 50), ("p99", 99), ("max", 100)):
        out[f"bot_{k}_ms"] = round(percentile(bot_ms, p), 2)
        out[f"visible_{k}_ms"] = round(percentile(visible_ms, p), 2)
    out.update({k: w[k] for k in ("verifier_passes", "verifier_rows", "verifier_states")})
    return out


@pytest.mark.parametrize("pace", ["default", "unlimited"])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_verifier_impact(benchmark, summary, tmp_path, journal, pace):
    """Bot commit times and lag with the verifier on, against off right before it."""
    counter = itertools.count()
    baseline = Baseline()
    cases: list[Case] = []
    windows: dict[str, list[dict]] = {"off": [], pace: []}

    def start(name: str) -> Case:
        cases.append(Case(tmp_path / f"r{next(counter)}-{name}", journal, name))
        return cases[-1]

    def setup():
        off = start("off")
        windows["off"].append(baseline.run(off.window))
        off.stop()
        return (start(pace),), {}

    def measured(case: Case) -> None:
        windows[pace].append(case.window())

    benchmark.group = f"verifier impact ({journal})"
    try:
        benchmark.pedantic(measured, setup=setup, teardown=lambda c: c.stop(), rounds=ROUNDS)
    finally:
        for c in cases:  # --benchmark-disable skips teardown
            c.stop()
    for c in cases:
        assert c.rc == 0, c.stderr()
        st = read_verifier_status(c.state_dir)
        if c.pace == "off":
            assert st is None, st
            continue
        assert st is not None and st.mismatches == 0, st
        assert not {t.state for t in st.tables} & {"diverged", "error"}, st
    off, on = figures(windows["off"][-1]), figures(windows[pace][-1])
    assert off["verifier_passes"] == 0
    assert on["verifier_passes"] > 0 and on["verifier_rows"] > 0, on
    assert not set(on["verifier_states"]) & {"diverged", "error"}, on

    info = benchmark.extra_info
    info.update(journal=journal, pace=pace, quiet_rows=QUIET_ROWS, verify=PACES[pace])
    info.update({f"off_{k}": v for k, v in off.items() if not k.startswith("verifier")})
    info.update({f"on_{k}": v for k, v in on.items()})
    for k in ("bot_p50", "bot_p99", "bot_max", "visible_p50", "visible_p99"):
        info[f"{k}_ratio"] = round(on[f"{k}_ms"] / off[f"{k}_ms"], 3)
    window_ratio = baseline.record(benchmark, "window_ratio")
    summary(
        f"verifier {pace:<9} {journal:<6}: bot commit p50 {off['bot_p50_ms']:.2f} -> "
        f"{on['bot_p50_ms']:.2f} ms, p99 {off['bot_p99_ms']:.2f} -> {on['bot_p99_ms']:.2f} ms "
        f"({info['bot_p99_ratio']:.2f}x), max {off['bot_max_ms']:.1f} -> {on['bot_max_ms']:.1f}"
        f" ms; visible p50 {off['visible_p50_ms']:.1f} -> {on['visible_p50_ms']:.1f} ms, p99 "
        f"{off['visible_p99_ms']:.1f} -> {on['visible_p99_ms']:.1f} ms "
        f"({info['visible_p99_ratio']:.2f}x); verifier {on['verifier_passes']} passes, "
        f"{on['verifier_rows']:,} rows in the window; bot rate {off['rate']}/{on['rate']} per s"
        + ("" if window_ratio is None else f"; window {window_ratio:.3f}x")
    )
