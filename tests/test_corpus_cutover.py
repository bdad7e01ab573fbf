"""The shared corpus, cut over stage by stage while bots write: analytics, cache, core.

Five bot processes write rows into real tables of the three stages, on rollback-journal
and WAL files, a connection per write. Each is refused by its stage's fence at cutover,
switches to the consolidated table once the stage is done, and keeps writing there. At the
end every row a bot committed, before or after its switch, is in the consolidated table
exactly once with its marker; no legacy write was accepted after a refusal (each cutover's
own final verification proved the fenced tables equal); then every stage is finalized and
every captured legacy file archived once.
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

from cdc.plan import resolve_plan
from tests.corpus import (
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
                                "tests.cutover_bot",
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
        for target in BOT_TABLES:
            r = run_cli("cutover", toml, target)
            assert r.returncode == 0, r.stdout + r.stderr
            time.sleep(0.7)  # the bots of this stage switch and keep writing
    finally:
        for _, _, p in bots:
            p.send_signal(signal.SIGTERM)
    stats = [json.loads(p.communicate(timeout=60)[0]) for _, _, p in bots]
    for s in stats:
        assert s["errors"] == 0 and s["refused"] > 0 and s["switched"], s
        assert s["accepted_after_refusal"] == 0, s  # never silently accepted
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
        wrote = {w: [r for r in rows if r["where"] == w] for w in ("legacy", "target")}
        assert wrote["legacy"] and wrote["target"], (m.table, len(rows))
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
        # rows written after the switch took ids after every legacy id
        assert min(r["id"] for r in wrote["target"]) > max(r["id"] for r in wrote["legacy"])
    manifests = [
        json.loads(p.read_text()) for p in (Path(cfg.state_dir) / "archive").glob("*.json")
    ]
    archived = {f["original"] for m in manifests for f in m["files"]}
    assert len(archived) == 26  # every captured legacy file, archived once
    for original in archived:  # and guarded: a stale bot's open fails, nothing empty appears
        assert Path(original).read_bytes().startswith(b"sqlite-cdc: this database has moved")
        assert Path(original + ".cdc-moved").exists()
