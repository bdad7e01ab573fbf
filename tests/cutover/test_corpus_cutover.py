"""The shared corpus, cut over stage by stage while bots write: analytics, cache, core;
then core rolled back, and cut over again.

Five bot processes write rows into real tables of the three stages, on rollback-journal
and WAL files, a connection per write. Each is refused by its stage's fence at cutover,
switches to the consolidated table once the stage is done, and keeps writing there. Core
is rolled back while its bots write: the target refuses them, they go back to their legacy
files (which have every row they wrote to the target), and come to the target again when
core is cut over a second time. At the end every row a bot committed, in any of those
phases, is in the consolidated table exactly once with its marker; no write was accepted
on a side the record said was fenced (and each cutover and rollback proved the fenced
tables equal); then every stage is finalized and every captured legacy file archived once.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cdc import guard
from cdc.planning.resolve import resolve_plan
from tests.support.corpus import (
    REPO,
    copy_legacy,
    run_cli,
    spawn_daemon,
    write_resolved_config,
)

# (legacy file, table) per stage: AUTOINCREMENT and plain INTEGER PRIMARY KEY tables,
# rollback-journal and WAL files, one file (jarvis.db) in two stages.
BOT_TABLES = {
    "analytics": [("data/jarvis.db", "trade_learnings"), ("data/bot_health.db", "bot_errors")],
    "cache": [("data/custom.db", "products")],
    "core": [("data/jarvis.db", "error_logs"), ("data/telegram_memory.db", "messages")],
}


def test_stages_cut_over_with_bots_writing_and_no_write_lost(
    plan_json: dict, corpus: Path, tmp_path: Path
) -> None:
    legacy = copy_legacy(corpus / "legacy", tmp_path / "legacy")
    toml, cfg = write_resolved_config(plan_json, legacy, tmp_path / "out")
    plan = resolve_plan(cfg)
    assert run_cli("install", toml).returncode == 0
    daemon = spawn_daemon(toml, tmp_path / "daemon.log")
    bots = []
    try:
        r = run_cli("wait", toml, "--zero-lag", "--timeout", "120")
        assert r.returncode == 0, r.stdout + r.stderr
        for target, tables in BOT_TABLES.items():
            for rel, table in tables:
                sp = next(s for s in plan.sources if Path(s.path) == legacy / rel)
                m = plan.mapping(sp.name, table)
                assert m.target == target and m.tag_column is None, m
                log = tmp_path / f"bot-{len(bots)}.jsonl"
                bots.append(
                    (
                        m,
                        log,
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "tests.support.cutover_bot",
                                sp.path,
                                table,
                                plan.targets[target],
                                m.target_table,
                                str(Path(cfg.state_dir) / "cutover" / f"{target}.json"),
                                str(log),
                                str(len(bots)),
                            ],
                            stdout=subprocess.PIPE,
                            cwd=REPO,
                        ),
                    )
                )
        time.sleep(1.0)
        steps = [("cutover", t) for t in BOT_TABLES] + [("rollback", "core"), ("cutover", "core")]
        for command, target in steps:
            r = run_cli(command, toml, target)
            assert r.returncode == 0, r.stdout + r.stderr
            time.sleep(0.7)  # the bots of this stage switch and keep writing
    finally:
        for _, _, p in bots:
            p.send_signal(signal.SIGTERM)
    stats = [json.loads(p.communicate(timeout=60)[0]) for _, _, p in bots]
    for (m, _, _), s in zip(bots, stats, strict=True):
        assert s["errors"] == 0 and s["refused"] > 0 and s["where"] == "target", s
        assert s["switches"] == (3 if m.target == "core" else 1), s  # core went back once
        assert s["accepted_while_fenced"] == 0, s  # never silently accepted
    try:
        r = run_cli("verify", toml, "--json")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
        assert {t["state"] for t in json.loads(r.stdout)["tables"]} == {"cut over"}
        for target in BOT_TABLES:
            assert run_cli("finalize", toml, target).returncode == 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0

    for m, log, _ in bots:
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        phases = [[rows[0]]]  # runs of writes on one side, in the order they were made
        for r in rows[1:]:
            if r["where"] == phases[-1][-1]["where"]:
                phases[-1].append(r)
            else:
                phases.append([r])
        assert len(phases) == (4 if m.target == "core" else 2), (m.table, len(phases))
        with contextlib.closing(
            sqlite3.connect(f"file:{plan.targets[m.target]}?mode=ro", uri=True)
        ) as c:
            for r in rows:  # every committed write, exactly once, with its own values
                found = c.execute(
                    f'SELECT count(*) FROM "{m.target_table}" WHERE id = ?', (r["id"],)
                ).fetchone()[0]
                assert found == 1, (m.table, r)
                row = c.execute(
                    f'SELECT * FROM "{m.target_table}" WHERE id = ?', (r["id"],)
                ).fetchone()
                assert r["marker"] in row, (m.table, r, row)
        # rows written after a switch took ids after every id given before it, on either
        # side (AUTOINCREMENT counters carried at each cutover and rollback)
        for earlier, later in zip(phases, phases[1:], strict=False):
            assert min(r["id"] for r in later) > max(r["id"] for r in earlier), m.table
    manifests = [
        json.loads(p.read_text()) for p in (Path(cfg.state_dir) / "archive").glob("*.json")
    ]
    archived = {f["original"] for m in manifests for f in m["files"]}
    assert len(archived) == 26  # every captured legacy file, archived once
    for original in archived:  # and guarded: a stale bot's open fails, nothing empty appears
        assert guard.is_guard(original)
        assert Path(original + ".cdc-moved").exists()
