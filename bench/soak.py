"""Soak: the jarvis corpus written by simulated bots while the daemon is SIGKILLed, again and
again, for as long as you like; then proof that nothing was lost or applied twice.

    python bench/soak.py --minutes 10              # by hand (`make soak-corpus`)
    python bench/soak.py --minutes 0.5 --work DIR  # what tests/cli/test_soak_script.py runs

The corpus (29 real-schema SQLite files) is copied from `../shared/corpus/jarvis` beside the
repo into a work folder, its resolved plan installed, and one bot process per group of
files writes the way the corpus README says the real bots do: REPLACE upserts (also through
non-key UNIQUE constraints, the silent deletes), updates that keep each column's storage
class, deletes, whole-table rewrites in one transaction, and now and then an ADD COLUMN
that is written at once. Each bot connection has the 5 s busy timeout the real bots rely on.

Meanwhile the daemon is killed every 1-6 s: two kills in three are aimed at a crash point
(`cdc.faults`: in a harvest, half-way through a log append, inside a trim, between applying
rows and the checkpoint, ...), the others land at a random moment. At the end the bots
stop, a last daemon catches up, and the script prints:

    events      events the log holds (harvested and applied; the archive keeps them all)
    kills       how many, and where they landed
    lost        rows that differ between each legacy table and its target (missing,
                extra or different by value or storage class; `verifier.compare_plan`)
    duplicated  source sequences harvested twice + events applied more than once
    bot errors  bot operations that failed other than by their own constraint
                (`IntegrityError`: a generated row broke a NOT NULL/CHECK; counted apart)
    max stall   the longest a single bot operation took, connection to commit

Exit status 1 when anything was lost or duplicated or a bot saw an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DAEMON = {
    "poll_interval": 0.05,
    "trim_interval": 0.2,
    "segment_bytes": 1 << 20,
    "snapshot_chunk": 200,
}
ALTERS_PER_BOT = 4

# -- the bots --------------------------------------------------------------------------


def _tables(c: sqlite3.Connection) -> list[tuple[str, bool]]:
    """Plain tables a bot may write: (name, without_rowid). Virtual tables and their
    shadows belong to SQLite; ours are not the bots'."""
    rows = c.execute(
        "SELECT name, wr FROM pragma_table_list WHERE schema='main' AND type='table' "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cdc\\_%' ESCAPE '\\'"
    ).fetchall()
    return [(n, bool(wr)) for n, wr in rows]


def _own_triggers(c: sqlite3.Connection, table: str) -> bool:
    return bool(
        c.execute(
            "SELECT 1 FROM sqlite_schema WHERE type='trigger' AND tbl_name=? "
            "AND name NOT LIKE '\\_cdc\\_%' ESCAPE '\\'",
            (table,),
        ).fetchone()
    )


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bot_op(c: sqlite3.Connection, rnd: random.Random, state: dict) -> None:
    """One write, in one transaction, to a random table of this file."""
    tables = [t for t in _tables(c) if not t[1]]  # rowid tables: the generic ops need a rowid
    if not tables:
        return
    name, _ = rnd.choice(tables)
    state["where"] = name
    t = _q(name)
    cols = [r[1] for r in c.execute(f"PRAGMA table_info({t})")]
    pick = f"(SELECT rowid FROM {t} ORDER BY random() LIMIT 1)"
    r = rnd.random()
    # A table with triggers of its own (the corpus's FTS sync triggers: insert and delete,
    # no update) gets plain inserts, deletes and rewrites only. An UPDATE or a REPLACE
    # would put its FTS index out of step, and that fails later as "database disk image is
    # malformed", with or without sqlite-cdc (measured with `--baseline`).
    own = _own_triggers(c, name)
    if own and r < 0.75:
        r = 0.6
    if r < 0.35 and cols:  # a value another row holds: same storage class as real data
        col = _q(rnd.choice(cols))
        c.execute(
            f"UPDATE {t} SET {col} = (SELECT {col} FROM {t} ORDER BY random() LIMIT 1) "
            f"WHERE rowid = {pick}"
        )
    elif r < 0.50 and cols:  # REAL drift, the trading numbers
        col = _q(rnd.choice(cols))
        c.execute(
            f"UPDATE {t} SET {col} = {col} * 1.000001 + 1e-12 "
            f"WHERE rowid = {pick} AND typeof({col}) = 'real'"
        )
    elif r < 0.75 and cols:  # an upsert of a copied row: REPLACE through any UNIQUE
        names = ", ".join(_q(x) for x in cols)
        verb = "INSERT" if own else "INSERT OR REPLACE"  # REPLACE deletes firing nothing
        c.execute(f"{verb} INTO {t}({names}) SELECT {names} FROM {t} ORDER BY random() LIMIT 1")
    elif r < 0.88:
        c.execute(f"DELETE FROM {t} WHERE rowid = {pick}")
    elif r < 0.97:  # the treasury's save: every row deleted and written again, one txn
        if c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] <= 500:
            c.execute("BEGIN IMMEDIATE")
            rows = c.execute(f"SELECT * FROM {t}").fetchall()
            c.execute(f"DELETE FROM {t}")
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                c.executemany(f"INSERT INTO {t} VALUES ({marks})", rows)
            c.execute("COMMIT")
    elif state["alters"] < ALTERS_PER_BOT:  # a start-up migration, written at once
        col = f"soak_{state['seed']}_{state['alters']}"
        state["alters"] += 1
        c.execute(f"ALTER TABLE {t} ADD COLUMN {_q(col)} REAL")
        c.execute(
            f"UPDATE {t} SET {_q(col)} = random() / 7.0 WHERE rowid IN "
            f"(SELECT rowid FROM {t} ORDER BY random() LIMIT 5)"
        )


def _quantile(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def bot_main(paths: list[str], seconds: float, seed: int) -> None:
    rnd = random.Random(seed)
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    ops = errors = rejected = 0
    took: list[float] = []
    last_error = None
    state = {"alters": 0, "seed": seed, "where": ""}
    deadline = time.monotonic() + seconds
    while not stop and time.monotonic() < deadline:
        t0 = time.monotonic()
        path = rnd.choice(paths)
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=5.0, isolation_level=None)) as c:
                _bot_op(c, rnd, state)
            ops += 1
        except sqlite3.IntegrityError:
            rejected += 1  # the generated row broke the bot's own constraint
        except sqlite3.Error as e:
            errors += 1
            last_error = f"{type(e).__name__}: {e} ({Path(path).name}, {state['where']})"
        took.append(time.monotonic() - t0)
        time.sleep(rnd.random() * 0.01)
    print(
        json.dumps(
            {
                "ops": ops,
                "errors": errors,
                "rejected": rejected,
                "max_stall_ms": round(max(took, default=0) * 1000, 1),
                "p99_ms": round(_quantile(took, 0.99) * 1000, 2),
                "median_ms": round(_quantile(took, 0.5) * 1000, 2),
                "last_error": last_error,
            }
        )
    )


# -- the run ---------------------------------------------------------------------------


def _setup(corpus: Path, work: Path) -> Path:
    from tests.support.corpus import config_to_toml, copy_legacy, make_config, read_plan_json

    legacy = copy_legacy(corpus / "legacy", work / "legacy")
    data, _ = make_config(read_plan_json(corpus), legacy, work / "out", resolve=True)
    data["daemon"] = {**data.get("daemon", {}), **DAEMON}
    data["log"] = {"retention": "archive"}  # every segment stays countable at the end
    cfg = work / "cdc.toml"
    cfg.write_text(config_to_toml(data), encoding="utf-8")
    r = _cdc("install", cfg)
    if r.returncode != 0:
        sys.exit(f"cdc install failed: {r.stderr}")
    return cfg


def _cdc(cmd: str, cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdc", cmd, "-c", str(cfg), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _daemon(cfg: Path, log: Path, crash_at: str | None) -> subprocess.Popen:
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if crash_at:
        env["CDC_CRASH_AT"] = crash_at
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "cdc", "run", "-c", str(cfg)],
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _kill_loop(cfg: Path, log: Path, until: float, rnd: random.Random) -> Counter:
    from cdc.faults import POINTS

    where: Counter = Counter()
    while time.monotonic() < until:
        point = rnd.choice(POINTS) if rnd.random() < 2 / 3 else None
        d = _daemon(cfg, log, f"{point}:{rnd.randint(1, 4)}" if point else None)
        try:
            d.wait(timeout=rnd.uniform(1.0, 6.0))
            where[point if d.returncode == -signal.SIGKILL else f"exit {d.returncode}"] += 1
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
            where["random moment"] += 1
        time.sleep(0.2)  # the orphaned apply worker sees EOF and goes
    return where


def _caught_up(cfg: Path, log: Path, timeout: float) -> None:
    from cdc.config import load_config
    from cdc.daemon.status import collect_status

    conf = load_config(cfg)
    d = _daemon(cfg, log, None)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            st = collect_status(conf)
            if (
                st.daemon.state == "running"
                and st.daemon.pid == d.pid
                and all(
                    s.backlog_events == 0 and s.snapshot in ("done", "")
                    for s in st.sources
                    if s.tables
                )
                and all(t.backlog_bytes == 0 for t in st.targets)
            ):
                return
            if d.poll() is not None:
                sys.exit(f"the final daemon exited {d.returncode}; see {log}")
            time.sleep(0.3)
        sys.exit(f"the final daemon did not catch up in {timeout}s; see {log}")
    finally:
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=60)


def _duplicates(cfg: Path) -> tuple[int, int]:
    """(events in the log, duplicated): a source sequence harvested twice, or a target
    whose checkpoint counts more events than the log holds for it."""
    import apsw

    from cdc.config import load_config
    from cdc.planning.resolve import resolve_plan
    from checkpoints.store import TABLE
    from tests.support.logcount import count_log

    conf = load_config(cfg)
    plan = resolve_plan(conf, strict=False)
    counted = count_log(conf, plan)
    events, dup, per_target = counted.events, len(counted.repeats), counted.per_target
    for name, path in plan.targets.items():
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        applied = conn.execute(f"SELECT events FROM {TABLE}").fetchone()[0]
        conn.close()
        dup += max(0, applied - per_target[name])
    return events, dup


def _lost(cfg: Path) -> tuple[int, list[str]]:
    from cdc.config import load_config
    from cdc.planning.resolve import resolve_plan
    from verifier import compare_plan

    bad = [d for d in compare_plan(resolve_plan(load_config(cfg), strict=False)) if not d.equal]
    rows = sum(len(d.missing) + len(d.extra) + len(d.different) for d in bad)
    return rows, [
        f"{d.source}.{d.table}: {len(d.missing)} missing, {len(d.extra)} extra, "
        f"{len(d.different)} different"
        for d in bad
    ]


def _start_bots(files: list[str], bots: int, seed: int) -> list[subprocess.Popen]:
    groups = [files[i::bots] for i in range(bots)]  # each file has one writer process
    return [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--bot",
                "--seconds",
                "86400",
                "--seed",
                str(seed * 100 + i),
                *g,
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        for i, g in enumerate(groups)
    ]


def _stop_bots(procs: list[subprocess.Popen]) -> list[dict]:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    return [json.loads(p.communicate(timeout=60)[0] or "{}") for p in procs]


def _print_bots(stats: list[dict]) -> int:
    errors = sum(s.get("errors", 1) for s in stats)
    print(
        f"bot errors  {errors}  (bot ops {sum(s.get('ops', 0) for s in stats)}, "
        f"rejected by their own constraints {sum(s.get('rejected', 0) for s in stats)})"
    )
    p99 = ", ".join(f"{s.get('p99_ms', 0):.1f}" for s in stats)
    median = ", ".join(f"{s.get('median_ms', 0):.2f}" for s in stats)
    worst = max(s.get("max_stall_ms", 0) for s in stats)
    print(f"max stall   {worst:.0f} ms  (per bot: p99 {p99} ms; median {median} ms)")
    for s in stats:
        if s.get("last_error"):
            print(f"  bot error: {s['last_error']}")
    return errors


def run(corpus: Path, work: Path, minutes: float, bots: int, seed: int, baseline: bool) -> int:
    """The soak; with `baseline`, the same bots on an uninstalled copy and no daemon, for
    the stall figures to compare with."""
    from tests.support.corpus import copy_legacy, sqlite_files

    work.mkdir(parents=True, exist_ok=True)
    if baseline:
        copy_legacy(corpus / "legacy", work / "legacy")
    else:
        cfg = _setup(corpus, work)
    files = [str(p) for p in sqlite_files(work / "legacy")]
    rnd = random.Random(seed)
    rnd.shuffle(files)
    log = work / "daemon.log"
    procs = _start_bots(files, bots, seed)
    where: Counter = Counter()
    try:
        if baseline:
            time.sleep(minutes * 60)
        else:
            where = _kill_loop(cfg, log, time.monotonic() + minutes * 60, rnd)
    finally:
        stats = _stop_bots(procs)
    what = "baseline (no sqlite-cdc)" if baseline else "soak"
    print(f"{what}: {minutes:g} min, {len(files)} legacy files, {bots} bots, seed {seed}")
    if baseline:
        return 1 if _print_bots(stats) else 0
    _caught_up(cfg, log, timeout=300)
    events, dup = _duplicates(cfg)
    lost, detail = _lost(cfg)
    print(f"events      {events}")
    print(
        f"kills       {sum(where.values())}  "
        f"({', '.join(f'{k}: {v}' for k, v in where.most_common())})"
    )
    print(f"lost        {lost}")
    print(f"duplicated  {dup}")
    errors = _print_bots(stats)
    for line in detail[:20]:
        print(f"  differs: {line}")
    return 1 if lost or dup or errors else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus" / "jarvis")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--bots", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--baseline", action="store_true", help="the same bots without sqlite-cdc (stall figures)"
    )
    ap.add_argument("--bot", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=0, help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.bot:
        bot_main(a.paths, a.seconds, a.seed)
        return 0
    if not (a.corpus / "plan.json").is_file():
        sys.exit(f"no corpus at {a.corpus} (expected ../shared/corpus/jarvis beside the repo)")
    if a.work is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cdc-soak-") as d:
            return run(a.corpus, Path(d), a.minutes, a.bots, a.seed, a.baseline)
    return run(a.corpus, a.work, a.minutes, a.bots, a.seed, a.baseline)


if __name__ == "__main__":
    sys.exit(main())
