"""Cutover of a stage: fences that make a stale bot's write fail loudly, the drain, the
final proof, the durable record, and resuming after a SIGKILL at each step."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import apsw
import pytest

from cdc import guard
from cdc.capture import fence
from cdc.capture import triggers as capture
from cdc.config import load_config
from cdc.inventory import list_tables
from cdc.planning.resolve import resolve_plan
from cdc.stages.record import read_record
from tests.conftest import cdc_cmd, cdc_step, cutover_cmd, make_db, wait_until
from tests.cutover.conftest import stage_equal
from tests.support import workload
from tests.support.workload import SCHEMA

MOVED = "sqlite-cdc: table positions of {db} moved to /t/core.db (table positions)"


def test_a_fence_refuses_every_writer_but_ours(tmp_path: Path) -> None:
    db = make_db(
        tmp_path / "bot.db",
        SCHEMA + "INSERT INTO kv VALUES ('a', 1); INSERT INTO positions(symbol) VALUES ('P');",
    )
    conn = apsw.Connection(str(db))
    capture.install(conn, list_tables(conn), str(db))
    mark = fence.fence(conn, "bot", str(db), {"positions": "/t/core.db (table positions)"})
    assert mark.tables == ["positions"] and mark.fence_seq == 0
    msg = MOVED.format(db=db)
    bot = sqlite3.connect(db, isolation_level=None)
    for sql in (
        "INSERT INTO positions(symbol) VALUES ('X')",
        "UPDATE positions SET qty = 1",
        "DELETE FROM positions",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="moved to /t/core.db"):
            bot.execute(sql)
    bot.execute("INSERT INTO kv VALUES ('b', 2)")  # the rest of the file is not fenced
    if shutil.which("sqlite3"):
        r = subprocess.run(
            ["sqlite3", str(db), "INSERT INTO positions(symbol) VALUES ('Y')"],
            capture_output=True,
            text=True,
        )
        assert r.returncode != 0 and msg in r.stderr
    with pytest.raises(apsw.ConstraintError, match="moved to"):
        conn.execute("INSERT INTO positions(symbol) VALUES ('Z')")
    ours = apsw.Connection(str(db))
    fence.allow_writes(ours)  # the way back (rollback window) writes through the fence
    ours.execute("INSERT INTO positions(symbol) VALUES ('ours')")
    again = fence.fence(conn, "bot", str(db), {"positions": "/t/core.db (table positions)"})
    assert again.fence_seq == mark.fence_seq and again.fenced_at == mark.fenced_at  # resumable
    assert fence.unfence(conn, str(db)) == ["positions"]
    bot.execute("INSERT INTO positions(symbol) VALUES ('X')")
    fence.fence(conn, "bot", str(db), {"positions": "/t/core.db"})
    capture.uninstall(conn)  # takes the fences with it
    bot.execute("INSERT INTO positions(symbol) VALUES ('W')")
    left = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '_cdc%'").fetchall()
    assert left == []
    bot.close()
    ours.close()
    conn.close()


def _legacy_fingerprint(cfg_path: Path, target: str) -> dict:
    cfg = load_config(cfg_path)
    plan = resolve_plan(cfg)
    out = {}
    for sp in plan.sources:
        with contextlib.closing(
            sqlite3.connect(f"file:{sp.path}?mode=ro", uri=True, timeout=10)
        ) as c:
            for m in sp.tables:
                if m.target == target:
                    rows = c.execute(f'SELECT * FROM "{m.table}"').fetchall()
                    out[(sp.name, m.table)] = sorted(map(repr, rows))
    return out


def test_stages_cut_over_while_bots_write(tmp_path: Path, daemons, live_cfg: Path) -> None:
    cfg = live_cfg
    d = daemons(cfg)
    # `cdc wait` can say "caught up" before the daemon first wrote its status file, and a
    # cutover then refuses ("the daemon is not running"): wait for the daemon itself too
    d.wait_synced()
    r = cdc_cmd("wait", "--zero-lag", "--timeout", "60", "-c", str(cfg))  # the initial copy
    assert r.returncode == 0, r.stdout + r.stderr
    bots = workload.start(tmp_path, ["alpha", "alpha", "beta", "gamma"], seconds=600)
    try:
        for target in ("analytics", "core"):
            r = cutover_cmd(cfg, target)
            assert r.returncode == 0, r.stdout + r.stderr
            assert f"{target}: cut over; the bots were fenced for" in r.stdout
            rec = read_record(str(tmp_path / "state"), target)
            assert rec.state == "done" and rec.pause_ms is not None
            assert stage_equal(cfg, target) == []
            frozen = _legacy_fingerprint(cfg, target)
            time.sleep(0.5)  # the bots keep trying
            assert _legacy_fingerprint(cfg, target) == frozen  # nothing got through
        # a switched bot writes to the target: AUTOINCREMENT goes on after the legacy ids
        with contextlib.closing(sqlite3.connect(tmp_path / "legacy/alpha.db", timeout=10)) as c:
            legacy_seq = c.execute(
                "SELECT seq FROM sqlite_sequence WHERE name='positions'"
            ).fetchall()[0][0]
        with contextlib.closing(sqlite3.connect(tmp_path / "out/core.db", timeout=10)) as c:
            new_id = c.execute(
                "INSERT INTO alpha_positions(symbol, qty) VALUES ('NEW', 1) RETURNING id"
            ).fetchone()[0]
            c.commit()
        assert new_id > legacy_seq
    finally:
        for b in bots:
            b.send_signal(signal.SIGTERM)
    stats = [json.loads(b.communicate(timeout=60)[0]) for b in bots]
    # every failed write was a fence's refusal, and every bot met one
    assert all(s["fenced"] > 0 and s["errors"] == s["fenced"] for s in stats), stats
    st = json.loads(cdc_cmd("status", "--json", "-c", str(cfg)).stdout)
    assert {c["target"]: c["state"] for c in st["cutovers"]} == {
        "analytics": "done",
        "core": "done",
    }
    r = cdc_cmd("verify", "--json", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert {t["state"] for t in json.loads(r.stdout)["tables"]} == {"cut over"}

    # finalize: every file feeds both stages, so analytics' finalize archives none (core's
    # rollback window still writes into them) and core's archives all three. A stale bot
    # still holding one open is named, and that file is not moved.
    before = {p.name: p.stat().st_size for p in (tmp_path / "legacy").glob("*.db")}
    r = cdc_cmd("finalize", "analytics", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "0 files archived, 3 waiting" in r.stdout and "archived when that is finalized" in r.stdout
    )
    alpha = str(tmp_path / "legacy/alpha.db")
    stale = sqlite3.connect(alpha)
    stale.execute("SELECT count(*) FROM kv").fetchall()
    r = cdc_cmd("finalize", "core", "-c", str(cfg))
    assert r.returncode == 13 and f"open by process(es) {os.getpid()}" in r.stderr, r.stderr
    assert not Path(alpha).read_bytes().startswith(b"sqlite-cdc")
    stale.close()
    r = cdc_cmd("finalize", "core", "-c", str(cfg))  # run again: completes
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads((tmp_path / "state/archive/manifest-core.json").read_text())
    assert len(manifest["files"]) == 3
    for f in manifest["files"]:
        assert f["integrity"] == "ok"
        assert hashlib.sha256(Path(f["archive"]).read_bytes()).hexdigest() == f["sha256"]
        # the guard: a stale bot reopening the legacy path fails loudly, told where its
        # table went, and nothing it writes stays there
        with contextlib.closing(sqlite3.connect(f["original"])) as c:
            c.execute("CREATE TABLE IF NOT EXISTS kv(k TEXT PRIMARY KEY, v)")  # kv "exists"
            with pytest.raises(
                sqlite3.OperationalError, match="sqlite-cdc: table kv of .* moved to"
            ):
                c.execute("INSERT INTO kv VALUES ('stale', 1)")
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                c.execute("CREATE TABLE brand_new(x)")
        assert guard.is_guard(f["original"])
        moved = f["original"] + ".cdc-moved"  # the original, never removed
        with contextlib.closing(sqlite3.connect(moved, timeout=10)) as c:
            assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            left = c.execute(
                "SELECT name FROM sqlite_master WHERE name LIKE '\\_cdc\\_%' ESCAPE '\\' "
                "AND type='table'"
            ).fetchall()
            assert left == [("_cdc_fenced",)]  # capture removed; what arms the fences stays
            with pytest.raises(sqlite3.IntegrityError, match="moved to"):
                c.execute("INSERT INTO kv VALUES ('stale bot', 1)")  # fences stay
        with (
            contextlib.closing(sqlite3.connect(f["archive"])) as a,
            contextlib.closing(sqlite3.connect(moved)) as o,
        ):
            assert (
                a.execute("SELECT count(*) FROM kv").fetchone()
                == o.execute("SELECT count(*) FROM kv").fetchone()
            )
    assert set(before) == {p.name for p in (tmp_path / "legacy").glob("*.db")}
    r = cdc_cmd("finalize", "analytics", "-c", str(cfg))  # again: nothing more to archive
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 files archived" in r.stdout
    for f in manifest["files"]:  # and those copies still match their manifest
        assert hashlib.sha256(Path(f["archive"]).read_bytes()).hexdigest() == f["sha256"]
    st = json.loads(cdc_cmd("status", "--json", "-c", str(cfg)).stdout)
    assert {s["snapshot"] for s in st["sources"]} == {"finalized"}
    r = cdc_cmd("check", "-c", str(cfg))  # guarded files: nothing left to map, no error
    assert r.returncode == 0, r.stderr
    assert st["daemon"]["state"] == "running"  # its harvesters let go of the files
    assert d.stop() == 0, d.output()


def test_a_cutover_killed_at_each_step_completes_when_run_again(
    tmp_path: Path, daemons, live_cfg: Path
) -> None:
    cfg = live_cfg
    # nothing copied yet: sequences alone would say "caught up" (snapshot rows have none)
    r = cdc_cmd("wait", "--zero-lag", "--timeout", "0.2", "-c", str(cfg))
    assert r.returncode == 75 and "initial copy pending: accounts -> core" in r.stdout, r.stdout
    d = daemons(cfg)
    d.wait_synced()  # see test_stages_cut_over_while_bots_write
    assert cdc_cmd("wait", "--zero-lag", "--timeout", "60", "-c", str(cfg)).returncode == 0
    bots = workload.start(tmp_path, ["alpha", "gamma"], seconds=600)
    state = str(tmp_path / "state")
    try:
        for step, shown in (
            ("fencing", "INTERRUPTED while fencing"),
            ("fenced", "legacy tables FENCED"),
            ("done", "cut over"),
        ):
            r = cutover_cmd(cfg, "analytics", kill_at=step)
            assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
            s = cdc_cmd("status", "-c", str(cfg)).stdout
            assert f"cutover analytics: {shown}" in s, s
        assert read_record(state, "analytics").state == "done"
        r = cutover_cmd(cfg, "analytics")
        assert r.returncode == 0 and "already cut over" in r.stdout
        assert stage_equal(cfg, "analytics") == []
        # abort: a stage fenced but not done gives the bots their tables back
        r = cutover_cmd(cfg, "core", kill_at="fenced")
        assert r.returncode == -signal.SIGKILL
        with (
            pytest.raises(sqlite3.IntegrityError, match="moved to"),
            contextlib.closing(sqlite3.connect(tmp_path / "legacy/alpha.db", timeout=10)) as c,
        ):
            c.execute("INSERT INTO kv VALUES ('fenced?', 1)")
        r = cutover_cmd(cfg, "core", "--abort")
        assert r.returncode == 0, r.stderr
        with contextlib.closing(sqlite3.connect(tmp_path / "legacy/alpha.db", timeout=10)) as c:
            c.execute("INSERT INTO kv VALUES ('free again', 1)")
            c.commit()

        def replicated() -> bool:  # and replication of those tables goes on
            with contextlib.closing(sqlite3.connect(tmp_path / "out/core.db", timeout=10)) as c:
                return c.execute("SELECT 1 FROM alpha_kv WHERE k = 'free again'").fetchone()

        wait_until(replicated, 60, 0.05, "the unfenced table to replicate again")
    finally:
        for b in bots:
            b.send_signal(signal.SIGTERM)
        for b in bots:
            b.communicate(timeout=60)
    assert d.stop() == 0, d.output()


def test_cutover_commands_refuse_clearly(tmp_path: Path, live_cfg: Path) -> None:
    """Bad input and wrong order get one clear line and a documented exit code, and
    change nothing."""
    cfg = live_cfg
    r = cutover_cmd(cfg, "nosuch")
    assert r.returncode == 2 and "no target 'nosuch'" in r.stderr, r.stderr
    r = cutover_cmd(cfg, "analytics")  # no daemon: nothing would drain the last changes
    assert r.returncode == 7 and "the daemon is not running" in r.stderr, r.stderr
    r = cutover_cmd(cfg, "analytics", "--abort")
    assert r.returncode == 12 and "no cutover in progress" in r.stderr, r.stderr
    r = cdc_cmd("finalize", "analytics", "-c", str(cfg))
    assert r.returncode == 13 and "not cut over" in r.stderr, r.stderr
    r = cdc_cmd("rollback", "analytics", "-c", str(cfg))
    assert r.returncode == 12 and "nothing to roll back" in r.stderr, r.stderr
    r = cdc_cmd("rollback", "--abort", "analytics", "-c", str(cfg))
    assert r.returncode == 12 and "no rollback in progress" in r.stderr, r.stderr
    r = cdc_cmd("rollback", "nosuch", "-c", str(cfg))
    assert r.returncode == 2 and "no target 'nosuch'" in r.stderr, r.stderr
    r = cdc_cmd("wait", "--zero-lag", "nosuch", "-c", str(cfg))
    assert r.returncode == 2 and "no such target: nosuch" in r.stderr, r.stderr
    assert read_record(str(tmp_path / "state"), "analytics") is None
    with contextlib.closing(sqlite3.connect(tmp_path / "legacy/alpha.db")) as c:
        c.execute("INSERT INTO kv VALUES ('not fenced', 1)")  # nothing was fenced
        c.commit()


def test_a_finalize_killed_mid_way_completes_when_run_again(
    tmp_path: Path, daemons, live_cfg: Path
) -> None:
    """SIGKILL once the record says finalizing (the way back closed: a rollback is refused),
    after the first file is archived (its capture already removed), then after the record
    says finalized (before the guards): each run again completes, every file is archived
    once, guarded, and the rollback window is closed."""
    cfg = live_cfg
    d = daemons(cfg)
    d.wait_synced()
    for target in ("analytics", "core"):
        assert cutover_cmd(cfg, target).returncode == 0
    r = cdc_cmd("finalize", "analytics", "-c", str(cfg))  # every file also feeds core
    assert r.returncode == 0 and "0 files archived, 3 waiting" in r.stdout, r.stdout + r.stderr
    r = cdc_step("finalize", cfg, "core", kill_at="finalizing")
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    # the way back closed before anything was archived: a rollback now is refused
    r = cdc_cmd("rollback", "core", "-c", str(cfg))
    assert r.returncode != 0 and "the way back is closed" in r.stderr, r.stdout + r.stderr
    assert "run `cdc finalize core` again" in r.stderr, r.stderr
    for step in ("archived", "finalized"):
        r = cdc_step("finalize", cfg, "core", kill_at=step)
        assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    r = cdc_cmd("finalize", "core", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rollback window closed" in r.stdout
    manifest = json.loads((tmp_path / "state/archive/manifest-core.json").read_text())
    originals = [f["original"] for f in manifest["files"]]
    assert sorted(originals) == sorted(
        str(tmp_path / f"legacy/{n}.db") for n in ("alpha", "beta", "gamma")
    )
    for f in manifest["files"]:
        assert hashlib.sha256(Path(f["archive"]).read_bytes()).hexdigest() == f["sha256"]
        assert guard.is_guard(f["original"])
    with contextlib.closing(sqlite3.connect(tmp_path / "out/core.db", timeout=10)) as c:
        assert c.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = '_cdc_changes'"
        ).fetchone() == (0,)
    assert read_record(str(tmp_path / "state"), "core").state == "finalized"
    assert d.stop() == 0, d.output()
