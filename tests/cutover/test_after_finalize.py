"""After `cdc finalize`: the history of the finalized stages is still read back, `cdc
verify` names those tables as finalized, a request covering no table fails with one line,
and a stale bot opening an old legacy path learns where its data went.

One journey with real processes: install, a daemon, rounds of writes, cutover and
finalize of both stages (archive retention, small segments: the archived segments are
read too), then the commands against the finalized system.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdc.changelog.segments import list_segments
from cdc.config import load_config
from cdc.history.rows import RetainedLog
from tests.conftest import cdc_cmd, make_db, wait_until, write_config

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
side = "out/side.db"
spare = "out/spare.db"
[log]
retention = "archive"
[daemon]
segment_bytes = 1024
snapshot_copy = "log"  # rebuilt after finalize: the initial copy's rows from the log
[[sources]]
name = "alpha"
path = "legacy/alpha.db"
[[sources]]
name = "beta"
path = "legacy/beta.db"
[[rules]]
table = "kv"
target = "core"
as = "{source}_kv"
[[rules]]
table = "quotes"
target = "side"
merge = true
tag_column = "desk"
"""

SCHEMA = """
CREATE TABLE kv(k TEXT PRIMARY KEY, v);
CREATE TABLE quotes(sym TEXT PRIMARY KEY, px REAL, memo BLOB);
INSERT INTO kv VALUES ('k1', 1), ('k2', 'two');
INSERT INTO quotes VALUES ('AAA', 1.5, X'01'), ('BBB', 2, NULL);
"""


def _sql(db: Path, *stmts: str) -> None:
    c = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        for s in stmts:
            c.execute(s)
    finally:
        c.close()


def _target(db: Path, sql: str) -> list[tuple]:
    c = sqlite3.connect(db, timeout=10)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


def _ok(*args: str) -> str:
    r = cdc_cmd(*args)
    assert r.returncode == 0, f"cdc {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture
def finalized(tmp_path: Path, daemons) -> dict:
    """Both stages finalized; returns the config, an offset and a time after round 1."""
    make_db(tmp_path / "legacy" / "alpha.db", SCHEMA, wal=True)
    make_db(tmp_path / "legacy" / "beta.db", SCHEMA)
    cfg = write_config(tmp_path, CONFIG)
    c = str(cfg)
    _ok("install", "-c", c)
    d = daemons(cfg)
    d.wait_synced()
    alpha, core = tmp_path / "legacy" / "alpha.db", tmp_path / "out" / "core.db"
    _sql(
        alpha, "UPDATE kv SET v = 1.0 WHERE k = 'k1'", "UPDATE quotes SET px = 3 WHERE sym = 'AAA'"
    )
    wait_until(lambda: _target(core, "SELECT typeof(v) FROM alpha_kv WHERE k='k1'") == [("real",)])
    d.wait_synced()
    round1 = RetainedLog.of(load_config(cfg)).end()
    time.sleep(0.05)
    round1_at = time.time()
    time.sleep(0.05)
    _sql(alpha, "UPDATE kv SET v = 'one' WHERE k = 'k1'", "DELETE FROM kv WHERE k = 'k2'")
    for i in range(30):  # enough to fill segments that get archived
        _sql(alpha, f"INSERT INTO kv VALUES ('n{i}', '{'x' * 100}')")
    wait_until(lambda: _target(core, "SELECT count(*) FROM alpha_kv") == [(31,)])
    d.wait_synced()
    for target in ("core", "side"):
        _ok("cutover", target, "-c", c)
    for target in ("core", "side"):
        _ok("finalize", target, "-c", c)
    wait_until(lambda: list_segments(str(tmp_path / "state" / "log-archive")), 30, 0.2, "archive")
    assert d.stop() == 0, d.output()
    # A finalize that went well is not an alert: no ERROR line (there was one per source,
    # "no such table: _cdc_changes", while capture was removed before the record said so),
    # and the daemon said when it was up and when it stopped.
    out = d.output()
    assert [line for line in out.splitlines() if " ERROR " in line] == [], out
    assert out.count("INFO cdc.lifecycle: daemon up: pid ") == 1, out
    assert out.count("INFO cdc.lifecycle: daemon stopped, exit 0 (after ") == 1, out
    return {"cfg": c, "root": tmp_path, "round1": round1, "round1_at": round1_at}


def test_history_tail_rebuild_verify_after_finalize(finalized: dict) -> None:
    c, root = finalized["cfg"], finalized["root"]
    assert list_segments(str(root / "state" / "log-archive"))[0] == 0  # read from the archive

    got = json.loads(_ok("history", "-c", c, "--json", "core.alpha_kv", "k1"))
    assert got["complete"] and got["members"] == ["alpha.kv"]
    assert [ch["row"] for ch in got["changes"]] == [
        ["'k1'", "1"],
        ["'k1'", "1.0"],
        ["'k1'", "'one'"],
    ]
    out = _ok("history", "-c", c, "core.alpha_kv", "k2")
    assert "alpha.kv  delete" in out and "2 changes" in out
    out = _ok("history", "-c", c, "side.quotes", "alpha", "AAA")  # merged: tag first
    assert "alpha.quotes  upsert  sym='AAA', px=3.0" in out

    out = _ok("log", "tail", "-c", c, "--from", "0", "--table", "kv")
    assert "alpha.kv  upsert  ['k1']  k='k1', v='one'" in out

    past = root / "past-core.db"
    _ok("rebuild", "-c", c, "core", "--as-of", str(finalized["round1"]), "--out", str(past))
    assert _target(past, "SELECT k, v, typeof(v) FROM alpha_kv ORDER BY k") == [
        ("k1", 1.0, "real"),
        ("k2", "two", "text"),
    ]
    assert _target(past, "SELECT count(*) FROM beta_kv") == [(2,)]
    past = root / "past-side.db"
    at = f"@{finalized['round1_at']}"
    _ok("rebuild", "-c", c, "side", "--as-of", at, "--out", str(past))
    assert _target(past, "SELECT desk, sym, px FROM quotes ORDER BY desk, sym") == [
        ("alpha", "AAA", 3.0),
        ("alpha", "BBB", 2.0),
        ("beta", "AAA", 1.5),
        ("beta", "BBB", 2.0),
    ]

    r = cdc_cmd("verify", "--json", "-c", c)
    assert r.returncode == 0, r.stdout + r.stderr
    tables = json.loads(r.stdout)["tables"]
    assert {(t["source"], t["table"], t["state"]) for t in tables} == {
        (s, t, "finalized") for s in ("alpha", "beta") for t in ("kv", "quotes")
    }
    archive = str(root / "state" / "archive" / "alpha" / "alpha.db")
    assert any(archive in t["reason"] for t in tables), tables
    out = _ok("verify", "-c", c, "core.*")
    assert f"alpha.kv -> core.alpha_kv: finalized: legacy archived at {archive}" in out, out


def test_a_request_covering_no_table_fails_with_one_line(finalized: dict) -> None:
    c, root = finalized["cfg"], finalized["root"]
    out = root / "spare.db"
    r = cdc_cmd("rebuild", "-c", c, "spare", "--as-of", "0", "--out", str(out))
    assert r.returncode == 2 and not out.exists(), r.stdout + r.stderr
    assert r.stderr.splitlines()[0] == "error: spare: no table is mapped to it or finalized in it"
    r = cdc_cmd("rebuild", "-c", c, "core", "--as-of", "0", "--out", str(out))
    assert r.returncode == 2 and not out.exists(), r.stdout + r.stderr
    assert "core as of offset 0 holds no table yet" in r.stderr.splitlines()[0], r.stderr
    r = cdc_cmd("verify", "-c", c, "spare.*")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines()[0].startswith("error: no mapped table matches spare.*")


STALE_BOT = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
for sql in sys.argv[2:]:
    try:
        print("ok", c.execute(sql).fetchall())
    except sqlite3.Error as e:
        print(type(e).__name__, e)
"""


def test_a_stale_bot_learns_where_the_data_went(finalized: dict) -> None:
    root = finalized["root"]
    alpha = root / "legacy" / "alpha.db"
    core = root / "out" / "core.db"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            STALE_BOT,
            str(alpha),
            "PRAGMA journal_mode=WAL",  # what it ran at start: still fine
            "CREATE TABLE IF NOT EXISTS kv(k TEXT PRIMARY KEY, v)",
            "SELECT v FROM kv WHERE k = 'k1'",
            "INSERT INTO kv VALUES ('late', 1)",
            "SELECT count(*) FROM quotes",
            "CREATE TABLE fresh(x)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = r.stdout.splitlines()
    assert lines[:2] == ["ok [('wal',)]", "ok []"], r.stdout + r.stderr
    moved = f"sqlite-cdc: table kv of {alpha} moved to {core} (table alpha_kv)"
    assert lines[2].startswith("OperationalError") and moved in lines[2], lines
    assert moved in lines[3], lines
    side = f"moved to {root / 'out' / 'side.db'} (table quotes, desk = 'alpha')"
    assert side in lines[4], lines
    assert lines[5] == "OperationalError attempt to write a readonly database", lines
    assert _target(core, "SELECT count(*) FROM alpha_kv WHERE k = 'late'") == [(0,)]
    assert (root / "legacy" / "alpha.db.cdc-moved").exists()
    _ok("check", "-c", finalized["cfg"])  # a guard holds nothing to map
    _ok("status", "-c", finalized["cfg"])
