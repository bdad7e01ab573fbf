"""The write pause a bot sees during a stage's cutover (goal: p99 at most 100 ms).

Everything runs as in production, on a copy of the shared jarvis corpus
(`../shared/corpus/jarvis`, skipped when absent): its resolved plan is installed with
`cdc install`, the daemon is a real `python -m cdc run` process, `cdc status` is polled
until the snapshot is applied and `cdc wait --zero-lag` exits 0, and each stage is cut over
with `python -m cdc cutover TARGET` (analytics, then cache, then core) while bot processes
keep writing. Each round works on a fresh copy of the corpus.

One bot per table of `BOT_TABLES` (two real tables per stage, rollback-journal and WAL
files, `jarvis.db` holding tables of two stages) writes one row every 1/RATE s with stdlib
`sqlite3`, opening a connection per write (timeout 5 s), as the legacy bots do. When a
legacy write is refused by the fence ("... moved to ..."), the bot retries the LEGACY write
every 2 ms and reads `<state_dir>/cutover/<target>.json` before each retry; once the record
says "done" ("go"), it writes to the target table in the consolidated file instead.

Bot-visible pause = end of the first successful target write - start of the first refused
legacy write: how long a bot that wanted to write could not. It is the record's `pause_ms`
(first fence to done), less the time from the fence to the bot's next write (at most 1/RATE
plus a lock wait: `fence_to_refusal`), plus the time to notice "done" (`done_to_go`: one
retry) and the first target commit; extra_info holds each of these, per stage.
Correctness, asserted: no legacy write is accepted after a bot's first refusal, every bot
is refused and then writes to the target, and every cutover exits 0. Time is only reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.conftest import (
    BOT_TABLES,
    RATE,
    RETRY_S,
    WARMUP_S,
    go,
    installed_corpus,
    log_tail,
    pct,
    row_insert,
    row_values,
    snapshot_applied,
    stop,
    write_once,
)
from bench.support import REPO, SCALE, percentile, wait_until
from cdc.config import load_config
from cdc.planning.resolve import resolve_plan
from cdc.stages.record import read_record, record_path
from tests.support.corpus import (
    corpus_root,
    run_cli,
    spawn_daemon,
)

GOAL_P99_MS = 100.0
GAP_S = 0.5  # between two stages' cutovers
ROUNDS = max(1, round(10 * min(1.0, SCALE)))  # each one a fresh copy of the corpus
STAGES = ("analytics", "cache", "core")
STEPS = ("fence", "proofs", "record", "drain", "sequences", "verify", "cpu")


# -- the bot ----------------------------------------------------------------------------------


def wal_size(path: str) -> int:
    try:
        return os.path.getsize(f"{path}-wal")
    except FileNotFoundError:
        return 0


def bot_main(spec_path: str, out: str) -> None:
    """Write the legacy table until refused, retry it until "go", then write the target."""
    spec = json.loads(Path(spec_path).read_text())
    rng = random.Random(spec["seed"])
    with contextlib.closing(sqlite3.connect(spec["legacy"], timeout=5.0)) as c:
        legacy_sql, legacy_kinds = row_insert(c, spec["table"])
    with contextlib.closing(sqlite3.connect(spec["target"], timeout=5.0)) as c:
        target_sql, target_kinds = row_insert(c, spec["target_table"])
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    s: dict = {
        "legacy_ok": 0,
        "refused": 0,
        "legacy_ok_after_refusal": 0,
        "target_ok": 0,
        "other_errors": 0,
        "error_samples": [],
        "write_ms": [],  # legacy writes before the fence
        "target_write_ms": [],
        "target_wal_bytes": None,  # the target's -wal when the bot first writes there
        "first_refused_start": None,
        "first_refused_end": None,
        "go_seen": None,
        "first_target_start": None,
        "first_target_end": None,
    }
    period = 1.0 / spec["rate"]
    n = 0
    next_t = time.monotonic()
    deadline = time.monotonic() + spec["max_seconds"]
    while time.monotonic() < deadline and not (stop and s["target_ok"]):
        refused = s["first_refused_start"] is not None
        if not refused or s["go_seen"] is None:
            if refused and go(spec["record"]):
                s["go_seen"] = time.time()
                continue
            n += 1
            t0 = time.time()
            err = write_once(spec["legacy"], legacy_sql, row_values(legacy_kinds, n, rng))
            t1 = time.time()
            if err is None:
                s["legacy_ok"] += 1
                if refused:
                    s["legacy_ok_after_refusal"] += 1
                else:
                    s["write_ms"].append((t1 - t0) * 1e3)
            elif "moved to" in err:
                s["refused"] += 1
                if not refused:
                    s["first_refused_start"], s["first_refused_end"] = t0, t1
            else:
                s["other_errors"] += 1
                s["error_samples"] = (s["error_samples"] + [err])[:5]
            if s["first_refused_start"] is not None:
                time.sleep(RETRY_S)
                next_t = time.monotonic()
                continue
        else:
            n += 1
            if s["target_wal_bytes"] is None:
                s["target_wal_bytes"] = wal_size(spec["target"])
            t0 = time.time()
            err = write_once(spec["target"], target_sql, row_values(target_kinds, n, rng))
            t1 = time.time()
            if err is None:
                s["target_ok"] += 1
                s["target_write_ms"].append((t1 - t0) * 1e3)
                if s["first_target_end"] is None:
                    s["first_target_start"], s["first_target_end"] = t0, t1
            else:
                s["other_errors"] += 1
                s["error_samples"] = (s["error_samples"] + [err])[:5]
                time.sleep(RETRY_S)
                continue
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()  # late (a lock wait): no burst to catch up
    Path(out).write_text(json.dumps(s))


# -- the scenario -----------------------------------------------------------------------------


def start_bots(root: Path, cfg_path: Path) -> list[tuple[str, str, subprocess.Popen, Path]]:
    cfg = load_config(cfg_path)
    plan = resolve_plan(cfg)
    bots = []
    for target, tables in BOT_TABLES.items():
        for i, (source, table) in enumerate(tables):
            sp = plan.source(source)
            m = next(m for m in sp.tables if m.table == table)
            assert m.target == target and m.tag_column is None, m  # a copied table
            spec = root / f"bot-{target}-{i}.json"
            spec.write_text(
                json.dumps(
                    {
                        "legacy": sp.path,
                        "table": table,
                        "target": plan.targets[target],
                        "target_table": m.target_table,
                        "record": record_path(cfg.state_dir, target),
                        "rate": RATE,
                        "seed": len(bots),
                        "max_seconds": 240.0,
                    }
                )
            )
            out = root / f"bot-{target}-{i}.out.json"
            err = root / f"bot-{target}-{i}.stderr"
            with open(err, "wb") as errf:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.test_cutover_pause",
                        "--bot",
                        str(spec),
                        str(out),
                    ],
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=errf,
                )
            bots.append((target, f"{source}.{table}", proc, out))
    return bots


def run_round(root: Path) -> dict:
    """One fresh copy of the corpus, replicated, its three stages cut over under bot load."""
    toml = installed_corpus(root)
    cfg = load_config(toml)
    log = root / "daemon.log"
    daemon = spawn_daemon(toml, log)
    bots: list = []
    stages: dict[str, dict] = {}
    try:
        t = time.monotonic()
        # `cdc wait --zero-lag` compares capture sequences only, which the snapshot has
        # none of: right after the daemon starts it says "zero lag" with empty targets.
        wait_until(lambda: snapshot_applied(cfg, daemon), 120, 0.1, "the snapshot")
        r = run_cli("wait", toml, "--zero-lag", "--timeout", "120", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr + log_tail(log)
        snapshot_s = time.monotonic() - t
        bots = start_bots(root, toml)
        time.sleep(WARMUP_S)
        assert all(p.poll() is None for _, _, p, _ in bots), "a bot died"
        for target in STAGES:
            t = time.monotonic()
            r = run_cli("cutover", toml, target, timeout=180)
            wall = time.monotonic() - t
            died = f" (killed by signal {-r.returncode})" if r.returncode < 0 else ""
            assert r.returncode == 0, f"cdc cutover {target} exited {r.returncode}{died}:\n" + (
                r.stdout + r.stderr + log_tail(log)
            )
            assert f"{target}: cut over; the bots were fenced for" in r.stdout, r.stdout
            rec = read_record(cfg.state_dir, target)
            assert rec is not None and rec.state == "done" and rec.pause_ms is not None
            stages[target] = {
                "record": rec,
                "cutover_wall_ms": wall * 1e3,
                "rows": sum(t.rows for t in rec.tables),
                "tables": len(rec.tables),
            }
            time.sleep(GAP_S)
        codes = [stop(p) for _, _, p, _ in bots]
        assert codes == [0] * len(bots), [(b[1], c) for b, c in zip(bots, codes, strict=True)]
    finally:
        for _, _, p, _ in bots:
            if p.poll() is None:
                p.kill()
                p.wait()
        rc = stop(daemon)
    assert rc == 0, log_tail(log)
    for target, table, _, path in bots:
        s = json.loads(path.read_text())
        rec = stages[target]["record"]
        # correctness: the fence held, and every bot was switched
        assert s["refused"] > 0 and s["legacy_ok_after_refusal"] == 0, (table, s)
        assert s["first_target_end"] is not None and s["target_ok"] > 0, (table, s)
        assert s["first_refused_end"] >= rec.fenced_at, (table, s, rec.fenced_at)
        assert s["first_target_start"] >= rec.done_at, (table, s, rec.done_at)
        stages[target].setdefault("bots", []).append(
            {
                "table": table,
                "pause_ms": (s["first_target_end"] - s["first_refused_start"]) * 1e3,
                "fence_to_refusal_ms": (s["first_refused_end"] - rec.fenced_at) * 1e3,
                "done_to_target_ms": (s["first_target_end"] - rec.done_at) * 1e3,
                "done_to_go_ms": (s["go_seen"] - rec.done_at) * 1e3,
                "target_write_ms": (s["first_target_end"] - s["first_target_start"]) * 1e3,
                "refused": s["refused"],
                "other_errors": s["other_errors"],
                "error_samples": s["error_samples"],
                "write_p50_ms": percentile(s["write_ms"], 50),
                "target_write_p50_ms": percentile(s["target_write_ms"][1:], 50),
                "target_wal_bytes": s["target_wal_bytes"],
            }
        )
    return {"snapshot_s": snapshot_s, "stages": stages}


def test_cutover_pause_while_bots_write(benchmark, summary, tmp_path):
    """ROUNDS scenarios (a fresh corpus copy each); the timing is a whole scenario."""
    corpus_root()  # skip before timing anything when the corpus is absent
    benchmark.group = "cutover pause"
    results: list[dict] = []
    n = iter(range(ROUNDS))

    def setup():
        root = tmp_path / f"round{next(n)}"
        root.mkdir()
        return (root,), {}

    def scenario(root: Path) -> None:
        results.append(run_round(root))

    benchmark.pedantic(scenario, setup=setup, rounds=ROUNDS, iterations=1)

    info: dict = {
        "rounds": len(results),
        "rate_per_bot": RATE,
        "bots": sum(len(tables) for tables in BOT_TABLES.values()),
    }
    info["snapshot_s"] = [round(r["snapshot_s"], 2) for r in results]
    every: list[float] = []
    per_stage: dict[str, dict] = {}
    for target in STAGES:
        runs = [r["stages"][target] for r in results]
        bots = [b for st in runs for b in st["bots"]]
        pauses = [b["pause_ms"] for b in bots]
        every += pauses
        recs = [st["record"] for st in runs]
        per_stage[target] = {
            "tables": runs[0]["tables"],
            "rows": runs[0]["rows"],
            "bot_pause_ms": pct(pauses),
            "bot_pauses_ms": sorted(round(p, 1) for p in pauses),
            "record_pause_ms": [round(r.pause_ms, 1) for r in recs],
            "record_pause_median_ms": round(statistics.median(r.pause_ms for r in recs), 1),
            "steps_median_ms": {
                k: round(statistics.median(r.steps_ms.get(k, 0.0) for r in recs), 1) for k in STEPS
            },
            "fence_to_refusal_median_ms": round(
                statistics.median(b["fence_to_refusal_ms"] for b in bots), 1
            ),
            "done_to_target_median_ms": round(
                statistics.median(b["done_to_target_ms"] for b in bots), 1
            ),
            "done_to_go_median_ms": round(statistics.median(b["done_to_go_ms"] for b in bots), 1),
            "first_target_write_median_ms": round(
                statistics.median(b["target_write_ms"] for b in bots), 1
            ),
            "cutover_wall_median_ms": round(
                statistics.median(st["cutover_wall_ms"] for st in runs), 0
            ),
            "refused_writes": sum(b["refused"] for b in bots),
            "other_errors": sum(b["other_errors"] for b in bots),
            "error_samples": [e for b in bots for e in b["error_samples"]][:5],
            "bot_write_p50_ms": round(statistics.median(b["write_p50_ms"] for b in bots), 2),
            "bot_target_write_p50_ms": round(
                statistics.median(b["target_write_p50_ms"] for b in bots), 2
            ),
            "target_wal_bytes_at_go": [b["target_wal_bytes"] for b in bots],
        }
    overall = pct(every)
    info.update(
        stages=per_stage,
        bot_pause_ms=overall,
        goal_p99_ms=GOAL_P99_MS,
        meets_goal=overall["p99"] <= GOAL_P99_MS,
    )
    benchmark.extra_info.update(info)
    for target, st in per_stage.items():
        p, steps = st["bot_pause_ms"], st["steps_median_ms"]
        summary(
            f"cutover {target:<9} ({st['tables']} tables, {st['rows']} rows): bot pause p50 "
            f"{p['p50']:.0f} ms p99 {p['p99']:.0f} ms max {p['max']:.0f} ms (n={p['n']}); "
            f"record pause_ms median {st['record_pause_median_ms']:.0f} "
            f"{st['record_pause_ms']}; steps median "
            + " ".join(f"{k} {v:.0f}" for k, v in steps.items())
            + f"; fence->refusal {st['fence_to_refusal_median_ms']:.0f} ms, done->target "
            f"{st['done_to_target_median_ms']:.0f} ms (noticed after "
            f"{st['done_to_go_median_ms']:.0f}, first target write "
            f"{st['first_target_write_median_ms']:.0f}, later ones "
            f"{st['bot_target_write_p50_ms']:.0f}, target -wal then "
            f"{statistics.median(st['target_wal_bytes_at_go']) / 2**20:.1f} MiB); "
            f"legacy write p50 {st['bot_write_p50_ms']:.0f} ms; "
            f"{st['refused_writes']} refused writes, "
            f"{st['other_errors']} other errors; cdc cutover wall "
            f"{st['cutover_wall_median_ms']:.0f} ms"
        )
    summary(
        f"cutover all stages: bot pause p50 {overall['p50']:.0f} ms p99 {overall['p99']:.0f} ms "
        f"max {overall['max']:.0f} ms over {overall['n']} bot switches in {len(results)} rounds "
        f"(goal p99 <= {GOAL_P99_MS:.0f} ms: {'met' if info['meets_goal'] else 'NOT met'})"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="a bot of the cutover pause benchmark")
    ap.add_argument("--bot", nargs=2, metavar=("SPEC", "OUT"), required=True)
    a = ap.parse_args().bot
    bot_main(a[0], a[1])
