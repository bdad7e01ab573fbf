"""`cdc demo` end to end: real legacy files, real bot processes, a real `cdc run` process.

One short demo run (a few seconds of bot writes) is shared by the assertions on its output;
the folder-safety rules are checked without running the demo.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from cdc.config import load_config
from cdc.demo.app_code import write_app
from cdc.demo.app_phase import run_app_phase
from cdc.demo.report import _verify
from cdc.demo.runner import MARKER, DemoError, prepare_root, run_demo
from cdc.errors import CdcError
from cdc.planning.resolve import resolve_plan
from verifier.continuous import read_verifier_status

REPO = Path(__file__).resolve().parents[2]
DEMO_SECONDS = 4.0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, list[str], float]:
    root = tmp_path_factory.mktemp("demo") / "world"
    lines: list[str] = []
    t0 = time.monotonic()
    code = run_demo(str(root), DEMO_SECONDS, echo=lambda s: lines.extend(str(s).splitlines()))
    return root, code, lines, time.monotonic() - t0


def _has(lines: list[str], *parts: str) -> bool:
    return any(all(p in ln for p in parts) for ln in lines)


def test_demo_passes_and_says_so(demo_run):
    root, code, lines, elapsed = demo_run
    out = "\n".join(lines)
    assert code == 0, out
    assert lines[-1].startswith("RESULT: PASS"), out
    assert elapsed < 40, f"demo took {elapsed:.1f}s"
    for step in range(1, 9):
        assert _has(lines, f"[{step}/8]"), f"step {step} missing:\n{out}"


def test_demo_shows_what_it_built_and_installed(demo_run):
    root, _, lines, _ = demo_run
    out = "\n".join(lines)
    assert _has(lines, "trading", "legacy/data/trading.db", "wal", "positions"), out
    assert _has(lines, "telegram", "delete", "messages"), out
    assert _has(lines, "ok: 8 sources", "1 excluded (trading.test)"), out
    assert _has(lines, "installed: 23 tables in 8 databases"), out
    assert _has(lines, "inventory: 8 databases, 24 tables"), out
    assert _has(lines, "trades: columns differ (bots/buy_tracker/trades.db, data/trading.db)"), out
    for name in (
        "inventory.json",
        "migration_mapping.csv",
        "core_schema.sql",
        "schema_comparison.md",
    ):
        assert (root / "plan" / name).is_file(), name
    assert (root / MARKER).is_file()
    assert (root / "cdc.toml").is_file()
    assert (root / "daemon.log").stat().st_size > 0


def test_demo_runs_the_daemon_and_bots_as_processes_and_stops_them_cleanly(demo_run):
    _, _, lines, _ = demo_run
    out = "\n".join(lines)
    assert _has(lines, "daemon running, pid"), out
    assert _has(lines, "started 6 bot processes"), out
    assert _has(lines, "captured", "applied", "backlog", "apply lag"), out  # live lines
    assert _has(lines, "bots stopped after", "exit codes [0, 0, 0, 0, 0, 0]"), out
    assert _has(lines, "backlog drained to zero"), out
    assert _has(lines, "in sync"), out  # the full `cdc status` view
    stops = [ln for ln in lines if "kill -TERM" in ln]
    assert stops and all(ln.endswith("daemon exited with code 0") for ln in stops), out
    assert _has(lines, "total", "ops", "0 errors"), out


def test_demo_adopts_the_table_a_bot_created_mid_run(demo_run):
    _, _, lines, _ = demo_run
    out = "\n".join(lines)
    # said out loud, then adopted by the running daemon itself: no install, no restart
    assert _has(lines, "new table(s) appeared", "llm_costs.budget_alerts"), out
    assert _has(lines, "adopts them itself"), out
    assert _has(lines, "llm_costs.budget_alerts: captured by the same daemon (pid"), out
    assert not _has(lines, "installed: 24 tables"), out  # not by `cdc install`
    # nor by restarting the daemon: it is stopped once, at the end (a status line may show
    # it `restarting` its threads in the same process)
    assert sum("kill -TERM" in ln and "daemon exited" in ln for ln in lines) == 1, out
    assert _has(lines, "llm_costs", "budget_alerts", "analytics.budget_alerts", "EQUAL"), out


def test_demo_cuts_a_stage_over_and_rolls_it_back_with_every_write(demo_run):
    _, _, lines, _ = demo_run
    out = "\n".join(lines)
    assert _has(lines, "$ cdc cutover cache"), out
    assert _has(
        lines, "a stale bot writing", "file_cache.db gets: sqlite-cdc: table", "moved to"
    ), out
    assert _has(lines, "rollback window: 3 target change(s) written back"), out
    assert _has(lines, "$ cdc rollback cache"), out
    assert _has(lines, "3 of 3 rows the switched bot wrote are in"), out


def test_demo_shows_the_application_side(demo_run):
    root, _, lines, _ = demo_run
    out = "\n".join(lines)
    start = lines.index(next(ln for ln in lines if "[6/8] the application side" in ln))
    end = lines.index(next(ln for ln in lines if "[7/8]" in ln))
    phase, text = lines[start:end], "\n".join(lines[start:end])
    prose = " ".join(ln.strip() for ln in phase)  # its longer sentences are wrapped
    assert phase.index(next(ln for ln in phase if "$ cdc refs app" in ln)) < phase.index(
        next(ln for ln in phase if "$ cdc queries app" in ln)
    ), text
    # `cdc refs`: the summary, and examples naming a renamed table and the merged one
    assert _has(phase, "$ cdc refs app -c cdc.toml --markdown app/refs.md"), text
    assert _has(phase, "references in 8 files", "unreviewed"), text
    assert "by kind: " in prose and "table to rename" in prose and "merged table" in prose, text
    assert _has(phase, "by stage:", "core", "analytics", "cache"), text
    assert _has(phase, "table users -> core.telegram_users: rename table to telegram_users"), text
    assert _has(phase, "table trades -> core.trades [source=", "merged: reads need"), text
    assert _has(phase, "CREATE TABLE IF NOT EXISTS of a moved table"), text
    assert _has(phase, "sqlite3.connect(DB_PATH, timeout=5.0)", "needs review"), text
    assert "not migrated yet" in prose and "they do not fail the demo" in prose, text
    assert _has(phase, "$ cdc refs app -c cdc.toml --fix > app/refs-fix.diff"), text
    # `cdc queries`: every query gave the same answer on both sides
    assert _has(phase, "$ cdc queries app/queries.toml -c cdc.toml", "--markdown app/queries.md")
    queries = [ln for ln in phase if "]: " in ln and ("p95" in ln or "ERROR" in ln)]
    assert len(queries) == 8 and all("]: same answer, " in ln for ln in queries), text
    assert _has(queries, "[trading -> core]") and _has(queries, "[buy_tracker -> core]"), text
    assert _has(queries, "renamed users (telegram_users)", "[telegram -> core]"), text
    assert _has(phase, "ok: 8 queries, 0 wrong answers, 0 not rewritable"), text
    # what it wrote, next to the application
    app = Path(root) / "app"
    for name in ("refs.md", "refs-fix.diff", "queries.toml", "queries.md"):
        assert (app / name).is_file(), name
    assert len(list(app.glob("*.py"))) == 8, out
    diff = (app / "refs-fix.diff").read_text()
    assert '-                "UPDATE users SET' in diff, diff  # a renamed table, rewritten
    assert '+                "UPDATE telegram_users SET' in diff, diff
    assert "FROM x_memories" in diff, diff
    assert "--- a/app/telegram_bot.py" in diff, diff  # names files as `cdc refs app` would
    assert "UPDATE users SET" in (app / "telegram_bot.py").read_text()  # not applied
    assert "| `app/telegram_bot.py:" in (app / "refs.md").read_text()
    assert "Result: **ok**" in (app / "queries.md").read_text()


def test_a_wrong_answer_of_an_application_query_fails_the_phase(demo_run, tmp_path):
    """On a copy of the finished demo: one consolidated value changed, the query reading it
    answers differently, and the phase says so and returns the reason the RESULT fails."""
    copy = tmp_path / "copy"
    shutil.copytree(demo_run[0], copy)
    with closing(sqlite3.connect(copy / "consolidated" / "core.db")) as c, c:
        c.execute("UPDATE telegram_users SET message_count = message_count + 1000000")
    lines: list[str] = []
    why = run_app_phase(copy, load_config(copy / "cdc.toml"), lines.append)
    out = "\n".join(lines)
    assert len(why) == 1 and "renamed users (telegram_users)" in why[0], why
    assert "answered differently" in why[0], why
    assert _has(lines, "renamed users (telegram_users)", "WRONG ANSWER: row 0"), out
    assert _has(lines, "wrong answer: 8 queries, 1 wrong answers"), out
    assert "Result: **wrong answer**" in (copy / "app" / "queries.md").read_text()


def test_the_generated_application_is_clean_python(tmp_path):
    modules = write_app(tmp_path)
    assert sorted(p.name for p in modules) == sorted(p.name for p in (tmp_path / "app").iterdir())
    for path in modules:
        text = path.read_text()
        compile(text, str(path), "exec")
        assert "CREATE TABLE IF NOT EXISTS" in text and "timeout=5.0" in text, path
    if shutil.which("ruff") is None and importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    config = str(REPO / "pyproject.toml")
    for args in (["check"], ["format", "--check"]):
        r = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "--config", config, str(tmp_path / "app")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr


def test_demo_verifies_every_table_equal(demo_run):
    _, _, lines, _ = demo_run
    out = "\n".join(lines)
    assert _has(lines, "$ cdc verify -c", "--report"), out
    assert _has(lines, "total: 24 tables, 24 EQUAL, 0 DIVERGED, 0 UNSETTLED, 0 SKIPPED"), out
    final = lines[lines.index(next(ln for ln in lines if "[8/8]" in ln)) :]
    rows = [
        ln for ln in final if ln.rstrip().endswith(("EQUAL", "DIVERGED", "UNSETTLED", "SKIPPED"))
    ]
    assert len(rows) == 24 and all(ln.rstrip().endswith("EQUAL") for ln in rows), out
    assert _has(lines, "buy_tracker", "trades", "core.trades", "EQUAL"), out  # merged
    assert _has(lines, "telegram", "users", "core.telegram_users", "EQUAL"), out  # renamed
    assert _has(lines, f"cdc status -c {Path(demo_run[0]).resolve() / 'cdc.toml'}"), out


def test_demo_writes_the_validation_reports(demo_run):
    root, _, lines, _ = demo_run
    out = "\n".join(lines)
    folder = Path(root).resolve() / "validation"
    for target in ("core", "analytics", "cache"):
        md, js = folder / f"validation-{target}.md", folder / f"validation-{target}.json"
        assert md.is_file() and js.is_file(), out
        assert _has(lines, str(md)), out  # the demo says where they are
        record = json.loads(js.read_text())
        assert record["verdict"] == "equal" and record["target"] == target
        assert record["totals"]["tables_diverged"] == 0
    tables = [t for target in ("core", "analytics", "cache") for t in _report(folder, target)]
    assert len(tables) == 24 and all(t["state"] == "equal" for t in tables)
    assert "EQUAL" in (folder / "validation-core.md").read_text()


def _report(folder: Path, target: str) -> list[dict]:
    return json.loads((folder / f"validation-{target}.json").read_text())["tables"]


def test_demo_ran_the_continuous_verifier_while_the_bots_wrote(demo_run):
    root, _, lines, _ = demo_run
    out = "\n".join(lines)
    cfg = load_config(Path(root) / "cdc.toml")
    assert cfg.verify.continuous and cfg.verify.cycle_pause <= 5, cfg.verify
    v = read_verifier_status(cfg.state_dir)  # the last daemon's verifier, as it stopped
    assert v is not None, out
    assert len(v.tables) == 24, v
    assert all(t.passes >= 1 for t in v.tables), v  # a full pass, every table
    # The cache stage was cut over (and rolled back) at the end: the daemon may have stopped
    # before its verifier came back to those tables, which it skips while cut over.
    cache = {"cache_entries", "rate_configs", "request_log", "limit_stats"}
    assert v.mismatches == 0, v
    assert all(
        t.state == "equal" or (t.state, t.table in cache) == ("cut over", True) for t in v.tables
    ), v
    assert all(t.last_verified_at is not None for t in v.tables), v
    live = [ln for ln in lines if "apply lag" in ln]
    assert live and all("verifier" in ln for ln in live), out  # its progress, live
    assert not any(" 0 mismatches" not in ln for ln in live if "verifier " in ln), out
    assert _has(lines, "continuous verifier in the daemon:", "24/24 equal", "0 mismatches"), out


def test_a_difference_is_reported_with_the_column_that_differs(demo_run, tmp_path):
    """On a copy of the finished demo: break one consolidated value, see the verdict and why."""
    copy = tmp_path / "copy"
    shutil.copytree(demo_run[0], copy)
    with closing(sqlite3.connect(copy / "consolidated" / "core.db")) as c, c:
        c.execute(
            "UPDATE telegram_users SET first_name = 'tampered' WHERE rowid = "  # the demo's
            "(SELECT min(rowid) FROM telegram_users WHERE typeof(first_name) = 'text')"  # bots
            # may have set the first one's name to NULL, which renders without quotes
        )
        c.execute(
            "UPDATE trades SET price_usd = -1 WHERE rowid IN "
            "(SELECT rowid FROM trades WHERE source = 'buy_tracker' LIMIT 1)"
        )
    cfg = load_config(copy / "cdc.toml")
    lines: list[str] = []
    report = _verify(cfg, resolve_plan(cfg), copy / "validation", lines.append)
    assert report.verdict == "diverged"
    out = "\n".join(lines)
    assert _has(lines, "telegram", "users", "core.telegram_users", "DIVERGED"), out
    assert _has(lines, "different, key", "first_name: legacy '", "consolidated 'tampered'"), out
    assert _has(lines, "buy_tracker", "trades", "core.trades", "DIVERGED"), out  # merged
    assert _has(lines, "different, key '", "price_usd: legacy ", "consolidated -1"), out
    assert not _has(lines, "trading", "trades", "core.trades", "DIVERGED"), out  # other source
    assert _has(lines, "total: 24 tables, 22 EQUAL, 2 DIVERGED, 0 UNSETTLED, 0 SKIPPED"), out
    assert _has(lines, "validation reports (verdict diverged)"), out
    core = json.loads((copy / "validation" / "validation-core.json").read_text())
    assert core["verdict"] == "diverged" and core["totals"]["tables_diverged"] == 2
    assert "tampered" in (copy / "validation" / "validation-core.md").read_text()
    cache = json.loads((copy / "validation" / "validation-cache.json").read_text())
    assert cache["verdict"] == "equal"


# -- the folder it may wipe ----------------------------------------------------------------


def test_refuses_to_wipe_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    lines: list[str] = []
    with pytest.raises(DemoError, match="not made by `cdc demo`; refusing") as err:
        run_demo(str(mine), 1.0, echo=lines.append)
    assert isinstance(err.value, CdcError) and err.value.hint
    assert (mine / "thesis.txt").read_text() == "precious"
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
    assert lines == []


def test_refuses_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DemoError, match="not a folder"):
        prepare_root(f)
    assert f.read_text() == "x"


def test_creates_a_new_or_empty_folder_and_rewipes_its_own(tmp_path):
    fresh = prepare_root(tmp_path / "a" / "b")
    assert (fresh / MARKER).is_file()
    (fresh / "legacy").mkdir()
    (fresh / "legacy" / "old.db").write_bytes(b"old")
    again = prepare_root(fresh)
    assert sorted(p.name for p in again.iterdir()) == [MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (prepare_root(empty) / MARKER).is_file()


def test_refuses_while_the_previous_demo_daemon_holds_its_lock(tmp_path):
    root = prepare_root(tmp_path / "demo")
    (root / "state").mkdir()
    lock = root / "state" / "daemon.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        with pytest.raises(DemoError, match=r"still running \(pid 4242\)"):
            prepare_root(root)
        assert lock.exists()
    finally:
        os.close(fd)
    prepare_root(root)  # lock released: the folder is the demo's to wipe again
    assert not lock.exists()


def test_cli_refusal_is_one_error_line_and_exit_1(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    r = subprocess.run(
        [sys.executable, "-m", "cdc", "demo", "--dir", str(tmp_path), "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: ") and "refusing to wipe it" in r.stderr
    assert "hint: " in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "keep.txt").exists()
