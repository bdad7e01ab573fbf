"""The operator's journey on the shared corpus, as README.md's quick start runs it: one
script of `cdc` commands, each checked on what it prints and how it exits, the mistakes a
new operator made included.

inventory (targets named once, defaults, the graph drawn without Graphviz) -> plan (a
typo refused with the near name; the operator's own plan.json refused for its four
collisions, then accepted once they are renamed) -> schema -> check -> install -> run ->
bots writing a connection per write -> verify -> cutover of every stage -> rollback of
core and cutover again -> finalize of every stage -> history, tail and rebuild after
finalize -> uninstall -> the daemon stopped. Its log has no ERROR line and says when it
was up and when it stopped.

Five bot processes (tests/support/cutover_bot.py) write real tables of the three stages,
on rollback-journal and WAL files; each is refused by its stage's fence at cutover,
switches to the consolidated table once the stage is done, goes back at the rollback and
comes again. Every row a bot committed is in its consolidated table exactly once.

Each step's time is printed (`pytest -s`) and, with CDC_JOURNEY_TIMES=FILE, written there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdc import guard
from cdc.config import load_config
from cdc.planning.resolve import resolve_plan
from tests.support.corpus import REPO, RESOLUTIONS, copy_legacy, corpus_root, read_plan_json

pytestmark = pytest.mark.skipif(
    not (REPO.parent / "shared" / "corpus" / "jarvis").is_dir(),
    reason="the shared corpus (../shared/corpus/jarvis) is not here",
)

TARGETS = "core,analytics,cache"
# (legacy file, table) per stage: AUTOINCREMENT and plain INTEGER PRIMARY KEY tables,
# rollback-journal and WAL files, one file (jarvis.db) in two stages.
BOT_TABLES = {
    "analytics": [("data/jarvis.db", "trade_learnings"), ("data/bot_health.db", "bot_errors")],
    "cache": [("data/custom.db", "products")],
    "core": [("data/jarvis.db", "error_logs"), ("data/telegram_memory.db", "messages")],
}


class Journey:
    """The operator's shell: runs `cdc` in the work folder and times every step."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.times: list[tuple[str, float]] = []

    def cdc(self, *args: str, code: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "cdc", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.times.append((" ".join(args[:2]), time.monotonic() - t0))
        assert r.returncode == code, (
            f"cdc {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        )
        return r

    def report(self) -> None:
        lines = [f"{s:8.2f}s  cdc {name}" for name, s in self.times]
        print("\n".join(["", "journey step times:", *lines]))
        out = os.environ.get("CDC_JOURNEY_TIMES")
        if out:
            Path(out).write_text(json.dumps(self.times, indent=1))


def _plan_file(plan_json: dict, renames: dict[tuple[str, str], str]) -> dict:
    """The operator's plan.json, with `renames` given as `as` of those tables."""
    out = json.loads(json.dumps(plan_json))
    for (db, table), name in renames.items():
        out["databases"][db]["tables"][table]["as"] = name
    return out


def _bot(plan, cfg, m, sp_path: str, log: Path, n: int) -> subprocess.Popen:  # noqa: ANN001
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.cutover_bot", sp_path, m.table]
        + [plan.targets[m.target], m.target_table]
        + [str(Path(cfg.state_dir) / "cutover" / f"{m.target}.json"), str(log), str(n)],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )


def test_the_quick_start_on_the_corpus(tmp_path: Path) -> None:
    corpus = corpus_root()
    copy_legacy(corpus / "legacy", tmp_path / "legacy")
    j = Journey(tmp_path)
    try:
        _plan_steps(j, read_plan_json(corpus))
        _live_steps(j)
    finally:
        j.report()


def _plan_steps(j: Journey, plan_json: dict) -> None:
    root = j.root
    r = j.cdc("inventory", "legacy", "--out", "plan", "--target", TARGETS, "--no-progress")
    assert re.match(r"inventory: 29 databases, \d+ tables, \d+ rows; 0 unreadable", r.stdout)
    assert "drew dependencies.svg without Graphviz" in r.stderr or not r.stderr, r.stderr
    assert (root / "plan" / "dependencies.svg").read_text().startswith("<?xml")

    # the operator's own plan: the four conflicting merges, named, nothing written
    (root / "plan.json").write_text(json.dumps(plan_json))
    r = j.cdc("plan", "--inventory", "plan/inventory.json", "--mapping", "plan.json", code=3)
    for clash in (
        "core.users",
        "analytics.predictions",
        "analytics.interactions",
        "cache.memories",
    ):
        assert clash in r.stderr, r.stderr
    assert "target" not in r.stderr.split("problem(s)")[0] or "anlytics" not in r.stderr
    assert not (root / "cdc.toml").exists()

    # a typo in a target: refused with the near name, not a fourth database
    typo = _plan_file(plan_json, RESOLUTIONS)
    typo["databases"]["data/jarvis.db"]["tables"]["daily_stats"]["target"] = "anlytics"
    (root / "typo.json").write_text(json.dumps(typo))
    r = j.cdc("plan", "--inventory", "plan/inventory.json", "--mapping", "typo.json", code=3)
    assert "'anlytics'" in r.stderr and "did you mean analytics" in r.stderr, r.stderr
    assert not (root / "cdc.toml").exists()

    (root / "resolved.json").write_text(json.dumps(_plan_file(plan_json, RESOLUTIONS)))
    r = j.cdc("plan", "--inventory", "plan/inventory.json", "--mapping", "resolved.json")
    assert re.search(r"^ok: wrote .*cdc\.toml \(29 sources, \d+ tables mapped", r.stdout, re.M)
    assert {line.split(":")[0] for line in r.stdout.splitlines()[:3]} == set(TARGETS.split(","))

    r = j.cdc("schema", "-c", "cdc.toml", "--out", "plan")
    assert {f"wrote {Path('plan') / f'{t}_schema.sql'}" for t in TARGETS.split(",")} <= set(
        r.stdout.splitlines()
    ), r.stdout
    r = j.cdc("check", "-c", "cdc.toml")
    assert re.fullmatch(r"ok: 29 sources, \d+ tables mapped, \d+ excluded\n", r.stdout)
    mapped = int(re.search(r"(\d+) tables mapped", r.stdout).group(1))
    r = j.cdc("install", "-c", "cdc.toml")
    assert r.stdout.splitlines()[-1] == f"installed: {mapped} tables in 26 databases", r.stdout


def _live_steps(j: Journey) -> None:
    root = j.root
    cfg = load_config(root / "cdc.toml")
    plan = resolve_plan(cfg)
    log = root / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "cdc", "run", "-c", "cdc.toml"],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    mapped = sum(len(sp.tables) for sp in plan.sources)
    bots: list = []
    try:  # the daemon goes whatever fails: no orphan writing into a test's folder
        _with_bots(j, plan, cfg, mapped, bots)
        _after_the_bots(j, cfg)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    _every_row_once(plan, bots)
    text = log.read_text()
    assert [line for line in text.splitlines() if " ERROR " in line] == [], text[-3000:]
    assert text.count("cdc.lifecycle: daemon up: pid ") == 1, text[:2000]
    assert "cdc.lifecycle: daemon stopped, exit 0 (after " in text, text[-2000:]


def _with_bots(j: Journey, plan, cfg, mapped: int, bots: list) -> None:  # noqa: ANN001
    try:
        j.cdc("wait", "-c", "cdc.toml", "--zero-lag", "--timeout", "240")
        for tables in BOT_TABLES.values():
            for rel, table in tables:
                sp = next(s for s in plan.sources if Path(s.path) == j.root / "legacy" / rel)
                m = plan.mapping(sp.name, table)
                path = j.root / f"bot-{len(bots)}.jsonl"
                bots.append((m, path, _bot(plan, cfg, m, sp.path, path, len(bots))))
        time.sleep(1.0)
        r = j.cdc("verify", "-c", "cdc.toml", timeout=600)
        assert re.match(rf"equal: {mapped} tables \({mapped} equal, 0 diverged", r.stdout), r.stdout
        _cutovers(j, plan)
    finally:
        for _, _, p in bots:
            p.send_signal(signal.SIGTERM)
    stats = [json.loads(p.communicate(timeout=60)[0]) for _, _, p in bots]
    for (m, _, _), s in zip(bots, stats, strict=True):
        assert s["errors"] == 0 and s["refused"] > 0 and s["where"] == "target", s
        assert s["switches"] == (3 if m.target == "core" else 1), s  # core went back once
        assert s["accepted_while_fenced"] == 0, s


def _cutovers(j: Journey, plan) -> None:  # noqa: ANN001
    for target in BOT_TABLES:
        r = j.cdc("cutover", target, "-c", "cdc.toml", timeout=300)
        owned: dict[str, int] = {}
        for sp in plan.sources:
            n = sum(1 for m in sp.tables if m.target == target)
            if n:
                owned[sp.name] = n
        fenced = re.findall(rf"^{target}: fenced (\d+) tables of (\S+)", r.stdout, re.M)
        assert {s: int(n) for n, s in fenced} == owned, r.stdout
        assert re.search(rf"^{target}: cut over; the bots were fenced for \d+ ms$", r.stdout, re.M)
        time.sleep(0.7)  # the bots of this stage switch and keep writing
    j.cdc("rollback", "core", "-c", "cdc.toml", timeout=300)
    time.sleep(0.7)
    j.cdc("cutover", "core", "-c", "cdc.toml", timeout=300)
    time.sleep(0.7)


def _after_the_bots(j: Journey, cfg) -> None:  # noqa: ANN001
    r = j.cdc("verify", "-c", "cdc.toml", "--json", timeout=600)
    assert {t["state"] for t in json.loads(r.stdout)["tables"]} == {"cut over"}
    archived = 0
    for target in BOT_TABLES:
        r = j.cdc("finalize", target, "-c", "cdc.toml", timeout=600)
        m = re.search(
            rf"^{target}: finalized; (\d+) files archived, (\d+) waiting$", r.stdout, re.M
        )
        assert m, r.stdout
        assert int(m.group(1)) == r.stdout.count(": archived to "), r.stdout
        archived += int(m.group(1))
    assert archived == 26  # every captured legacy file, once
    manifests = [
        json.loads(p.read_text()) for p in (Path(cfg.state_dir) / "archive").glob("*.json")
    ]
    for f in (f for m in manifests for f in m["files"]):
        assert guard.is_guard(f["original"]) and Path(f["original"] + ".cdc-moved").exists()

    r = j.cdc("log", "tail", "-c", "cdc.toml")
    assert len(r.stdout.splitlines()) == 10, r.stdout
    first = json.loads((j.root / "bot-3.jsonl").read_text().splitlines()[0])  # error_logs
    assert first["where"] == "legacy"  # written before core's cutover: in the change log
    r = j.cdc("history", "core.error_logs", str(first["id"]), "-c", "cdc.toml")
    assert first["marker"] in r.stdout and "1 change" in r.stdout, r.stdout
    r = j.cdc(
        "rebuild", "cache", "--as-of", "0", "--out", "past-cache.db", "-c", "cdc.toml", code=2
    )
    assert "holds no table yet" in r.stderr, r.stderr
    end = json.loads(j.cdc("status", "-c", "cdc.toml", "--json").stdout)["log"]["end_offset"]
    j.cdc("rebuild", "cache", "--as-of", str(end), "--out", "past-cache.db", "-c", "cdc.toml")
    with contextlib.closing(sqlite3.connect(j.root / "past-cache.db")) as c:
        assert c.execute("SELECT count(*) FROM products").fetchone()[0] > 0
    r = j.cdc("uninstall", "-c", "cdc.toml")  # finalize removed capture everywhere
    assert r.stdout == "nothing to remove: no capture of ours in the legacy files or the targets\n"


def _every_row_once(plan, bots) -> None:  # noqa: ANN001
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
                    f'SELECT * FROM "{m.target_table}" WHERE id = ?', (r["id"],)
                ).fetchall()
                assert len(found) == 1 and r["marker"] in found[0], (m.table, r, found)
        # rows written after a switch took ids after every id given before it, on either
        # side (AUTOINCREMENT counters carried at each cutover and rollback)
        for earlier, later in zip(phases, phases[1:], strict=False):
            assert min(r["id"] for r in later) > max(r["id"] for r in earlier), m.table
