"""The daemon as operators run it: real process, signals, status, snapshot under load, ALTERs."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cdc.cli.main import cli
from cdc.config import load_config
from cdc.errors import DaemonError
from cdc.planning.resolve import resolve_plan
from tests.conftest import REPO, cdc_cmd, make_db, wait_until, write_config
from tests.daemon.conftest import BOT_CONFIG
from tests.support.workload import SCHEMA
from verifier import compare_plan


def _equal(cfg) -> list:
    return [d for d in compare_plan(resolve_plan(load_config(cfg))) if not d.equal]


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
def test_snapshot_while_bots_write(tmp_path, daemons, wal, bot_cfg):
    """Rows that existed before capture and rows written during the copy all arrive, once."""
    cfg = bot_cfg(wal, rows=3000)
    bots = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.workload",
                str(tmp_path / "legacy" / "bot.db"),
                "600",
                str(i),
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        for i in range(2)
    ]
    d = daemons(cfg)
    wait_until(lambda: d.status()["sources"][0]["snapshot"] == "done", 60, 0.2, "snapshot")
    for b in bots:
        b.send_signal(signal.SIGTERM)
    stats = [json.loads(b.communicate(timeout=30)[0]) for b in bots]
    assert [s["errors"] for s in stats] == [0, 0]
    d.wait_synced()
    assert d.stop() == 0
    assert _equal(cfg) == []


def test_sigterm_is_clean_and_second_daemon_is_refused(tmp_path, daemons, bot_cfg):
    cfg = bot_cfg(wal=False, rows=10)
    d = daemons(cfg)
    d.wait_synced()
    r = cdc_cmd("run", "-c", str(cfg))
    assert r.returncode == DaemonError.exit_code
    state = cfg.parent / "state"
    assert r.stderr.splitlines() == [  # the one to stop is named
        f"error: {state}: another cdc daemon (pid {d.proc.pid}) is running on this state dir",
        f"hint: stop it first (kill -TERM {d.proc.pid}), or watch it with `cdc status`",
    ], r.stderr
    assert d.stop() == 0
    st = json.loads(cdc_cmd("status", "--json", "-c", str(cfg)).stdout)
    assert st["daemon"]["state"] == "stopped"


def test_run_says_when_it_is_up_and_when_it_stops_and_nothing_else(tmp_path, bot_cfg):
    """At the default level: one line up (sources, targets, state dir, metrics), one line
    stopped; the rest only when something goes wrong."""
    cfg = bot_cfg(wal=False, rows=10)
    p = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run", "-c", str(cfg), "--metrics-addr", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        first = p.stdout.readline()
        p.send_signal(signal.SIGTERM)
        rest = p.communicate(timeout=60)[0]
    finally:
        p.kill()
    assert p.returncode == 0, first + rest
    state = (cfg.parent / "state").resolve()
    assert re.fullmatch(
        rf"\S+ \S+ INFO cdc.lifecycle: daemon up: pid {p.pid}, 1 sources, 1 targets \(core\), "
        rf"state dir {re.escape(str(state))}, metrics http://127\.0\.0\.1:[1-9]\d*/metrics\n",
        first,
    ), first
    assert re.fullmatch(
        rf"\S+ \S+ INFO cdc.lifecycle: daemon stopped, exit 0 \(after [\d.]+ s; pid {p.pid}\)\n",
        rest,
    ), rest


def test_status_json_contract(tmp_path, daemons, bot_cfg):
    cfg = bot_cfg(wal=True, rows=50)
    d = daemons(cfg)
    st = d.wait_synced()
    assert set(st) >= {"daemon", "log", "sources", "targets"}
    src = st["sources"][0]
    assert set(src) >= {
        "name",
        "captured",
        "logged",
        "applied",
        "backlog_events",
        "backlog_seconds",
        "snapshot",
        "last_error",
    }
    c = sqlite3.connect(tmp_path / "legacy" / "bot.db", isolation_level=None)
    for i in range(20):
        c.execute("INSERT INTO kv VALUES (?, ?)", (f"k{i}", i))
    st = d.wait_synced()
    assert st["sources"][0]["applied"] == st["sources"][0]["captured"] > 0
    d.stop()
    human = cdc_cmd("status", "-c", str(cfg)).stdout
    assert "in sync" in human and "daemon: stopped" in human


def test_bot_alter_table_mid_run(tmp_path, daemons, bot_cfg):
    """A column a bot adds at runtime reaches the target with every value written to it."""
    cfg = bot_cfg(wal=False, rows=100)
    d = daemons(cfg)
    d.wait_synced()
    c = sqlite3.connect(tmp_path / "legacy" / "bot.db", isolation_level=None)
    c.execute("ALTER TABLE positions ADD COLUMN notes TEXT DEFAULT 'none'")
    c.execute("UPDATE positions SET notes = 'first' WHERE id <= 10")
    c.execute("INSERT INTO positions(symbol, notes) VALUES ('NEW', 'é')")
    d.wait_synced()
    c.execute("ALTER TABLE positions ADD COLUMN score REAL")
    c.execute("UPDATE positions SET score = -0.5 WHERE id % 2 = 0")
    d.wait_synced()
    assert d.stop() == 0
    assert _equal(cfg) == []
    t = sqlite3.connect(tmp_path / "out" / "core.db")
    assert t.execute("SELECT notes FROM positions WHERE symbol='NEW'").fetchone() == ("é",)
    assert t.execute("SELECT count(*) FROM positions WHERE notes='none'").fetchone()[0] > 0


def test_every_command_has_help():
    runner = CliRunner()
    for name, cmd in cli.commands.items():
        assert cmd.help, f"`cdc {name}` has no help text"
        r = runner.invoke(cli, [name, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output


def test_status_names_a_new_unmapped_table_and_keeps_working(tmp_path, daemons):
    cfg_text = BOT_CONFIG.replace('table = "*"', 'table = "positions"') + (
        '[[rules]]\ntable = "kv"\ntarget = "core"\n[[rules]]\ntable = "ticks"\ntarget = "core"\n'
        '[[rules]]\ntable = "log_lines"\nexclude = true\n'
    )
    make_db(tmp_path / "legacy" / "bot.db", SCHEMA)
    cfg = write_config(tmp_path, cfg_text)
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg)
    d.wait_synced()
    c = sqlite3.connect(tmp_path / "legacy" / "bot.db", isolation_level=None)
    c.execute("CREATE TABLE IF NOT EXISTS surprise(id INTEGER PRIMARY KEY, v)")
    c.execute("INSERT INTO kv VALUES ('after', 1)")
    st = d.wait_synced()
    assert any("'surprise'" in p and "no rule" in p for p in st["problems"])
    assert d.proc.poll() is None  # the rest keeps replicating
    d.stop()


def test_new_mapped_table_is_captured_on_restart(tmp_path, daemons, bot_cfg):
    """A table a bot creates later, matched by a glob rule, is snapshotted and streamed."""
    cfg = bot_cfg(wal=False, rows=5)
    d = daemons(cfg)
    d.wait_synced()
    c = sqlite3.connect(tmp_path / "legacy" / "bot.db", isolation_level=None)
    c.execute("CREATE TABLE IF NOT EXISTS budget_alerts(id INTEGER PRIMARY KEY, msg TEXT)")
    c.execute("INSERT INTO budget_alerts(msg) VALUES ('before restart')")
    assert d.stop() == 0
    d = daemons(cfg)
    d.wait_synced()
    c.execute("INSERT INTO budget_alerts(msg) VALUES ('after restart')")
    d.wait_synced()
    assert d.stop() == 0
    assert _equal(cfg) == []
    t = sqlite3.connect(tmp_path / "out" / "core.db")
    assert t.execute("SELECT count(*) FROM budget_alerts").fetchone()[0] == 2


def test_reset_state_dir_is_refused(tmp_path, daemons, bot_cfg):
    """Targets ahead of a (new, empty) log would silently stop receiving changes."""
    import shutil

    cfg = bot_cfg(wal=False, rows=50)
    d = daemons(cfg)
    d.wait_synced()
    assert d.stop() == 0
    shutil.rmtree(tmp_path / "state")
    r = cdc_cmd("run", "-c", str(cfg))
    assert r.returncode == 6 and "past the end of the change log" in r.stderr
    r = cdc_cmd("log", "check", "-c", str(cfg))
    assert r.returncode == 0
