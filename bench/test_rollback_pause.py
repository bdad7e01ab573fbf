"""The write pause a bot sees when a cut-over stage is rolled back, and what the rollback
window's capture in a consolidated target costs a bot's write there.

`test_rollback_pause_while_bots_write` runs as in production, on a fresh copy of the shared
jarvis corpus per round (`../shared/corpus/jarvis`, skipped when absent), set up like
`bench/test_cutover_pause.py`: its resolved plan installed with `cdc install`, the daemon a
real `python -m cdc run` process, the snapshot applied and `cdc wait --zero-lag` passed. Two
bot processes write the two core tables of `BOT_TABLES["core"]` (a WAL and a
rollback-journal file), one row every 1/RATE s each with stdlib `sqlite3`, a connection per
write. `cdc cutover core` moves them to the target exactly as in the cutover bench (refused
legacy write retried every 2 ms until the record says "done"). After ~1 s of writes to the
target, `cdc rollback core`: a bot's target write is refused ("... moved to ...; the stage
was rolled back ..."), it retries the TARGET write every 2 ms and reads
`<state_dir>/cutover/core.json` before each retry; once the record says "rolled_back" it
writes to its legacy table again.

Bot-visible rollback pause = end of the first successful legacy write after the rollback -
start of the first refused target write. The record's `rollback.pause_ms` (target fenced to
legacy unfenced) and `rollback.steps_ms` (fence, drain, sequences, verify) are kept too.
Correctness, asserted every round: every cutover and rollback exits 0, each bot was refused
on the target with the rollback's message and then wrote its legacy table again, no target
write was accepted after its first refusal, no other error, and every row a bot wrote to
the target is in its legacy table afterwards (looked up by its id, holding the marker the
bot wrote). Time is only reported.

`test_bot_write_cost_on_a_captured_target` needs no corpus: a bot's "connect, INSERT one
row, commit, close" on a consolidated-style WAL target with and without the rollback
window's capture triggers, alternating (A B A B ...), for 65 tables (analytics' size) and
18 (core's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from bench.conftest import (
    BOT_TABLES,
    RATE,
    RETRY_S,
    WARMUP_S,
    go,
    insert_row,
    installed_corpus,
    log_tail,
    marked,
    pct,
    row_insert,
    row_values,
    snapshot_applied,
    stop,
    write_once,
)
from bench.support import REPO, SCALE, Baseline, percentile, scaled, wait_until
from cdc.capture import triggers as capture
from cdc.config import load_config
from cdc.inventory import table_info
from cdc.planning.resolve import resolve_plan
from cdc.stages.record import read_record, record_path
from tests.support.corpus import (
    corpus_root,
    run_cli,
    spawn_daemon,
)
from tests.support.cutover_bot import stage_state

STAGE = "core"
TARGET_S = 1.0  # bots writing to the target before the rollback
AFTER_S = 0.3  # bots writing to their legacy tables again before they are stopped
ROUNDS = max(1, round(5 * min(1.0, SCALE)))  # each one a fresh copy of the corpus
STEPS = ("fence", "drain", "sequences", "verify")
ROLLED_BACK_NOTE = "the stage was rolled back"


# -- the bot ----------------------------------------------------------------------------------


def bot_main(spec_path: str, out: str) -> None:
    """Legacy until refused, retried until "done"; target until refused, retried until
    "rolled_back"; then legacy again (phases "legacy", "target", "back")."""
    spec = json.loads(Path(spec_path).read_text())
    rng = random.Random(spec["seed"])
    with contextlib.closing(sqlite3.connect(spec["legacy"], timeout=5.0)) as c:
        legacy_sql, legacy_kinds = row_insert(c, spec["table"])
    with contextlib.closing(sqlite3.connect(spec["target"], timeout=5.0)) as c:
        target_sql, target_kinds = row_insert(c, spec["target_table"])
    stop_asked = False

    def on_term(*_: object) -> None:
        nonlocal stop_asked
        stop_asked = True

    signal.signal(signal.SIGTERM, on_term)
    s: dict = {
        "legacy_ok": 0,
        "cutover_refused": 0,
        "legacy_ok_after_refusal": 0,
        "target_ok": 0,
        "target_rows": [],  # [id, marker] of every committed target write
        "rollback_refused": 0,
        "target_ok_after_refusal": 0,
        "back_ok": 0,
        "other_errors": 0,
        "error_samples": [],
        "refusal_message": None,  # the first refused target write's error
        "done_seen": None,
        "first_refused_start": None,  # the first refused target write
        "first_refused_end": None,
        "rolled_back_seen": None,
        "first_back_start": None,  # the first legacy write after the rollback
        "first_back_end": None,
        "target_write_ms": [],
        "back_write_ms": [],
    }
    phase = "legacy"
    period = 1.0 / spec["rate"]
    n = 0
    next_t = time.monotonic()
    deadline = time.monotonic() + spec["max_seconds"]

    def other(err: str) -> None:
        s["other_errors"] += 1
        s["error_samples"] = (s["error_samples"] + [err])[:5]
        time.sleep(RETRY_S)

    while time.monotonic() < deadline and not (stop_asked and s["back_ok"]):
        n += 1
        if phase == "legacy":
            cut = s["cutover_refused"] > 0
            if cut and go(spec["record"]):
                s["done_seen"], phase = time.time(), "target"
                continue
            err = write_once(spec["legacy"], legacy_sql, row_values(legacy_kinds, n, rng))
            if err is None:
                s["legacy_ok"] += 1
                s["legacy_ok_after_refusal"] += cut
            elif "moved to" in err:
                s["cutover_refused"] += 1
            else:
                other(err)
                continue
            if s["cutover_refused"]:
                time.sleep(RETRY_S)
                continue
        elif phase == "target":
            refused = s["first_refused_start"] is not None
            if refused and stage_state(spec["record"]) == "rolled_back":
                s["rolled_back_seen"], phase = time.time(), "back"
                continue
            marker = f"rollback-bench-{spec['seed']}-{n}"
            t0 = time.time()
            rowid, err = insert_row(
                spec["target"], target_sql, marked(target_kinds, n, rng, marker)
            )
            t1 = time.time()
            if err is None:
                s["target_ok"] += 1
                s["target_rows"].append([rowid, marker])
                s["target_write_ms"].append((t1 - t0) * 1e3)
                if refused:
                    s["target_ok_after_refusal"] += 1
            elif "moved to" in err:
                s["rollback_refused"] += 1
                if not refused:
                    s["first_refused_start"], s["first_refused_end"] = t0, t1
                    s["refusal_message"] = err
            else:
                other(err)
                continue
            if s["first_refused_start"] is not None:
                time.sleep(RETRY_S)
                continue
        else:
            t0 = time.time()
            err = write_once(spec["legacy"], legacy_sql, row_values(legacy_kinds, n, rng))
            t1 = time.time()
            if err is not None:
                other(err)
                continue
            s["back_ok"] += 1
            s["back_write_ms"].append((t1 - t0) * 1e3)
            if s["first_back_end"] is None:
                s["first_back_start"], s["first_back_end"] = t0, t1
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()  # late (a lock wait): no burst to catch up
    Path(out).write_text(json.dumps(s))


# -- the scenario -----------------------------------------------------------------------------


def start_bots(root: Path, toml: Path) -> list[tuple[str, dict, subprocess.Popen, Path]]:
    """One bot per core table of the cutover bench, as its `start_bots` starts them."""
    cfg = load_config(toml)
    plan = resolve_plan(cfg)
    bots = []
    for i, (source, table) in enumerate(BOT_TABLES[STAGE]):
        sp = plan.source(source)
        m = next(m for m in sp.tables if m.table == table)
        assert m.target == STAGE and m.tag_column is None, m  # a copied table
        spec = {
            "legacy": sp.path,
            "table": table,
            "target": plan.targets[STAGE],
            "target_table": m.target_table,
            "record": record_path(cfg.state_dir, STAGE),
            "rate": RATE,
            "seed": i,
            "max_seconds": 240.0,
        }
        spec_path = root / f"bot-{i}.json"
        spec_path.write_text(json.dumps(spec))
        out = root / f"bot-{i}.out.json"
        with open(root / f"bot-{i}.stderr", "wb") as errf:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.test_rollback_pause",
                    "--bot",
                    str(spec_path),
                    str(out),
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=errf,
            )
        bots.append((f"{source}.{table}", spec, proc, out))
    return bots


def not_in_legacy(spec: dict, rows: list[list]) -> list[list]:
    """The [id, marker] pairs missing from the bot's legacy table: no row with that id, or
    one that does not hold the marker."""
    sql = f'SELECT * FROM "{spec["table"]}" WHERE rowid = ?'
    with contextlib.closing(sqlite3.connect(f"file:{spec['legacy']}?mode=ro", uri=True)) as c:
        found = {rowid: c.execute(sql, (rowid,)).fetchone() or () for rowid, _ in rows}
    return [[rowid, marker] for rowid, marker in rows if marker not in found[rowid]]


def run_round(root: Path) -> dict:
    """A fresh copy of the corpus, replicated; core cut over and rolled back under bot load."""
    toml = installed_corpus(root)
    cfg = load_config(toml)
    log = root / "daemon.log"
    daemon = spawn_daemon(toml, log)
    bots: list = []
    try:
        wait_until(lambda: snapshot_applied(cfg, daemon), 120, 0.1, "the snapshot")
        r = run_cli("wait", toml, "--zero-lag", "--timeout", "120", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr + log_tail(log)
        bots = start_bots(root, toml)
        time.sleep(WARMUP_S)
        assert all(p.poll() is None for _, _, p, _ in bots), "a bot died"
        r = run_cli("cutover", toml, STAGE, timeout=180)
        assert r.returncode == 0, f"cdc cutover {STAGE} exited {r.returncode}:\n" + (
            r.stdout + r.stderr + log_tail(log)
        )
        cut = read_record(cfg.state_dir, STAGE)
        assert cut is not None and cut.state == "done", cut
        time.sleep(TARGET_S)
        t = time.monotonic()
        r = run_cli("rollback", toml, STAGE, timeout=180)
        wall = time.monotonic() - t
        died = f" (killed by signal {-r.returncode})" if r.returncode < 0 else ""
        assert r.returncode == 0, f"cdc rollback {STAGE} exited {r.returncode}{died}:\n" + (
            r.stdout + r.stderr + log_tail(log)
        )
        assert f"{STAGE}: rolled back;" in r.stdout, r.stdout
        rec = read_record(cfg.state_dir, STAGE)
        assert rec is not None and rec.state == "rolled_back" and rec.rollback is not None, rec
        time.sleep(AFTER_S)
        codes = [stop(p) for _, _, p, _ in bots]
        assert codes == [0] * len(bots), [(b[0], c) for b, c in zip(bots, codes, strict=True)]
    finally:
        for _, _, p, _ in bots:
            if p.poll() is None:
                p.kill()
                p.wait()
        rc = stop(daemon)
    assert rc == 0, log_tail(log)
    rb = rec.rollback
    out_bots = []
    for table, spec, _, path in bots:
        s = json.loads(path.read_text())
        # correctness: each bot went legacy -> target -> legacy, the target fence held, no
        # other error, and every row it wrote to the target went back to its legacy table
        assert s["other_errors"] == 0, (table, s["error_samples"])
        assert s["cutover_refused"] > 0 and s["target_ok"] > 0, (table, s)
        assert s["legacy_ok_after_refusal"] == 0, (table, s)
        assert s["rollback_refused"] > 0 and s["first_refused_start"] is not None, (table, s)
        assert ROLLED_BACK_NOTE in s["refusal_message"], (table, s["refusal_message"])
        assert s["target_ok_after_refusal"] == 0, (table, s)
        assert s["back_ok"] > 0 and s["first_back_end"] is not None, (table, s)
        assert s["first_refused_end"] >= rb.fence.fenced_at, (table, s, rb.fence.fenced_at)
        assert s["first_back_start"] >= rb.rolled_back_at, (table, s, rb.rolled_back_at)
        assert len(s["target_rows"]) == s["target_ok"], (table, s)
        missing = not_in_legacy(spec, s["target_rows"])
        assert not missing, (table, f"{len(missing)} of {s['target_ok']} target rows", missing[:5])
        out_bots.append(
            {
                "table": table,
                "pause_ms": (s["first_back_end"] - s["first_refused_start"]) * 1e3,
                "fence_to_refusal_ms": (s["first_refused_end"] - rb.fence.fenced_at) * 1e3,
                "rolled_back_to_legacy_ms": (s["first_back_end"] - rb.rolled_back_at) * 1e3,
                "rolled_back_to_seen_ms": (s["rolled_back_seen"] - rb.rolled_back_at) * 1e3,
                "first_legacy_write_ms": (s["first_back_end"] - s["first_back_start"]) * 1e3,
                "target_rows": s["target_ok"],
                "refused": s["rollback_refused"],
                "target_write_p50_ms": percentile(s["target_write_ms"], 50),
                "back_write_p50_ms": percentile(s["back_write_ms"][1:], 50),
            }
        )
    return {
        "rollback": rb,
        "cutover_pause_ms": cut.pause_ms,
        "rollback_wall_ms": wall * 1e3,
        "tables": len(rec.tables),
        "bots": out_bots,
    }


def med(values) -> float:  # noqa: ANN001
    return round(statistics.median(values), 1)


def test_rollback_pause_while_bots_write(benchmark, summary, tmp_path):
    """ROUNDS scenarios (a fresh corpus copy each); the timing is a whole scenario."""
    corpus_root()  # skip before timing anything when the corpus is absent
    benchmark.group = "rollback pause"
    results: list[dict] = []
    n = iter(range(ROUNDS))

    def setup():
        root = tmp_path / f"round{next(n)}"
        root.mkdir()
        return (root,), {}

    def scenario(root: Path) -> None:
        results.append(run_round(root))

    benchmark.pedantic(scenario, setup=setup, rounds=ROUNDS, iterations=1)

    bots = [b for r in results for b in r["bots"]]
    rbs = [r["rollback"] for r in results]
    pauses = [b["pause_ms"] for b in bots]
    info = {
        "rounds": len(results),
        "rate_per_bot": RATE,
        "bots": len(BOT_TABLES[STAGE]),
        "tables": results[0]["tables"],
        "bot_pause_ms": pct(pauses),
        "bot_pauses_ms": sorted(round(p, 1) for p in pauses),
        "record_pause_ms": [round(rb.pause_ms, 1) for rb in rbs],
        "record_pause_median_ms": med(rb.pause_ms for rb in rbs),
        "steps_median_ms": {k: med(rb.steps_ms.get(k, 0.0) for rb in rbs) for k in STEPS},
        "steps_ms": [rb.steps_ms for rb in rbs],
        "verified_tables": [rb.verified_tables for rb in rbs],
        "fence_to_refusal_median_ms": med(b["fence_to_refusal_ms"] for b in bots),
        "rolled_back_to_legacy_median_ms": med(b["rolled_back_to_legacy_ms"] for b in bots),
        "rolled_back_to_seen_median_ms": med(b["rolled_back_to_seen_ms"] for b in bots),
        "first_legacy_write_median_ms": med(b["first_legacy_write_ms"] for b in bots),
        "target_rows_per_bot": [b["target_rows"] for b in bots],
        "refused_writes": sum(b["refused"] for b in bots),
        "target_write_p50_ms": med(b["target_write_p50_ms"] for b in bots),
        "legacy_write_after_p50_ms": med(b["back_write_p50_ms"] for b in bots),
        "rollback_wall_median_ms": med(r["rollback_wall_ms"] for r in results),
        "cutover_pause_ms": [round(r["cutover_pause_ms"], 1) for r in results],
    }
    benchmark.extra_info.update(info)
    p, steps = info["bot_pause_ms"], info["steps_median_ms"]
    summary(
        f"rollback {STAGE} ({info['tables']} tables): bot pause p50 {p['p50']:.0f} ms "
        f"p99 {p['p99']:.0f} ms max {p['max']:.0f} ms (n={p['n']}, {len(results)} rounds); "
        f"record rollback.pause_ms median {info['record_pause_median_ms']:.0f} "
        f"{info['record_pause_ms']}; steps median "
        + " ".join(f"{k} {v:.0f}" for k, v in steps.items())
        + f"; fence->refusal {info['fence_to_refusal_median_ms']:.0f} ms, rolled_back->legacy "
        f"{info['rolled_back_to_legacy_median_ms']:.0f} ms (noticed after "
        f"{info['rolled_back_to_seen_median_ms']:.0f}, first legacy write "
        f"{info['first_legacy_write_median_ms']:.0f}); target rows per bot "
        f"{info['target_rows_per_bot']} all back in legacy; {info['refused_writes']} refused "
        f"writes, 0 other errors; cdc rollback wall {info['rollback_wall_median_ms']:.0f} ms"
    )


# -- a bot's write into a captured target ---------------------------------------------------


def make_target(path: Path, tables: int, captured: bool) -> None:
    """A consolidated-style WAL file: `tables` tables with a UNIQUE and an index each."""
    c = sqlite3.connect(path, isolation_level=None)
    try:
        assert c.execute("PRAGMA journal_mode=wal").fetchone()[0] == "wal"
        for i in range(tables):
            c.execute(f"CREATE TABLE t{i}(id INTEGER PRIMARY KEY, a TEXT UNIQUE, b REAL, c, d, e)")
            c.execute(f"CREATE INDEX t{i}_b ON t{i}(b)")
    finally:
        c.close()
    if captured:  # as the cutover installs the rollback window's capture (cdc.backflow)
        conn = apsw.Connection(str(path))
        try:
            infos = [table_info(conn, f"t{i}") for i in range(tables)]
            capture.install(conn, infos, str(path))
        finally:
            conn.close()


def bot_write(path: Path, n: int) -> None:
    c = sqlite3.connect(path, timeout=5.0)
    try:
        with c:
            c.execute(
                "INSERT INTO t3(a, b, c, d, e) VALUES (?, ?, ?, ?, ?)",
                (f"row-{n}", n * 0.5, n, "bench", None),
            )
    finally:
        c.close()


@pytest.mark.parametrize("tables", [65, 18])
def test_bot_write_cost_on_a_captured_target(benchmark, summary, tmp_path, tables):
    """Times the captured write; before each one the same write on the plain file (A B A B)."""
    benchmark.group = "bot write into a captured target"
    plain, captured = tmp_path / "plain.db", tmp_path / "captured.db"
    make_target(plain, tables, captured=False)
    make_target(captured, tables, captured=True)
    base = Baseline(warmup_rounds=5)
    n = iter(range(10**9))

    def setup():
        i = next(n)
        base.run(bot_write, plain, i)
        return (captured, i), {}

    benchmark.pedantic(bot_write, setup=setup, rounds=scaled(300, 20), warmup_rounds=5)
    ratio = base.record(benchmark, "capture_ratio")
    with contextlib.closing(sqlite3.connect(captured)) as c:
        changes = c.execute(f"SELECT count(*) FROM {capture.CHANGES}").fetchone()[0]
        (triggers,) = c.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='trigger'"
        ).fetchone()
    assert changes == next(n), changes  # every bot write was captured (warm-ups included)
    benchmark.extra_info.update(tables=tables, triggers=triggers)
    if ratio is not None:
        st = benchmark.stats.stats
        summary(
            f"bot write (connect, INSERT, commit, close) into a {tables}-table WAL target: "
            f"plain {base.median * 1e3:.2f} ms, with the rollback window's capture ({triggers} "
            f"triggers) {st.median * 1e3:.2f} ms: {ratio:.2f}x (fastest "
            f"{min(base.times[5:]) * 1e3:.2f} vs {st.min * 1e3:.2f} ms)"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="a bot of the rollback pause benchmark")
    ap.add_argument("--bot", nargs=2, metavar=("SPEC", "OUT"), required=True)
    a = ap.parse_args().bot
    bot_main(a[0], a[1])
