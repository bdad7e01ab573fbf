"""The rollback window: bots' writes to a cut-over target flow back into the fenced legacy
files, `cdc rollback` hands those files back, and the stage can be cut over again. No change
travels back and forth, and a SIGKILL at any step is completed by running the command again."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from cdc.capture import fence
from cdc.capture import triggers as capture
from cdc.changelog.segments import LogReader
from cdc.config import load_config
from cdc.events import RowBatch
from cdc.stages.record import read_record
from tests.conftest import REPO, cdc_cmd, cdc_step, cutover_cmd, wait_until
from tests.cutover.conftest import stage_equal
from tests.support import workload
from tests.support.target_bot import target_writes

CORE_TABLES = {("alpha", "positions"), ("alpha", "kv"), ("beta", "positions"), ("beta", "kv")}


def _core_cut_over(cfg: Path, daemons):  # noqa: ANN001, ANN202
    """The live world (`live_cfg`), the daemon caught up, and the core stage cut over (no
    bots)."""
    d = daemons(cfg)
    d.wait_synced()
    r = cutover_cmd(cfg, "core")
    assert r.returncode == 0, r.stdout + r.stderr
    return cfg, d


def _rollback(cfg: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return cdc_step("rollback", cfg, *args, kill_at=kill_at)


def _status(cfg: Path) -> dict:
    return json.loads(cdc_cmd("status", "--json", "-c", str(cfg)).stdout)


def _backflow_caught_up(cfg: Path, target: str):  # noqa: ANN202
    """Every change the bots made to `target` so far is written back."""
    path = load_config(cfg).targets[target]
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as c:
        top = c.execute("SELECT coalesce(max(seq), 0) FROM _cdc_changes").fetchone()[0]

    def ok():  # noqa: ANN202
        b = _status(cfg)["backflow"].get(target)
        done = b and b["captured_seq"] >= top and b["behind"] == 0 and not b["last_error"]
        return b if done else None

    return wait_until(ok, 60, 0.1, f"the {target} backflow to catch up")


def _forwarded_since(cfg: Path, offset: int) -> set:
    """(source, table) of every row batch in the change log from `offset` on."""
    c = load_config(cfg)
    return {
        (e.frame.source, e.frame.table)
        for e in LogReader(c.log_dir).iter_from(offset)
        if isinstance(e.frame, RowBatch) and e.frame.events
    }


def _refused(path: Path, sql: str) -> str:
    with (
        contextlib.closing(sqlite3.connect(path, timeout=10)) as c,
        pytest.raises(sqlite3.IntegrityError) as e,
    ):
        c.execute(sql)
    return str(e.value)


def test_round_trip_cut_over_write_roll_back_cut_over_finalize(
    tmp_path: Path, daemons, live_cfg: Path
) -> None:
    cfg = live_cfg
    d = daemons(cfg)
    d.wait_synced()
    bots = workload.start(tmp_path, ["alpha", "beta", "gamma"], seconds=600)  # all stages
    core, legacy_alpha = tmp_path / "out/core.db", tmp_path / "legacy/alpha.db"
    state = str(tmp_path / "state")
    try:
        r = cutover_cmd(cfg, "core")
        assert r.returncode == 0, r.stdout + r.stderr
        done = read_record(state, "core")
        target_writes(core, 600, seed=1)
        _backflow_caught_up(cfg, "core")
        # the fenced legacy tables have every write the bots made to the target, a new
        # column included, and none of it came back through the change log (no loop)
        assert stage_equal(cfg, "core") == []
        assert not _forwarded_since(cfg, done.log_offset) & CORE_TABLES
        with contextlib.closing(sqlite3.connect(legacy_alpha, timeout=10)) as c:
            assert "note" in [r[1] for r in c.execute("PRAGMA table_info(positions)")]
        assert "moved to" in _refused(legacy_alpha, "INSERT INTO kv VALUES ('stale', 1)")

        r = _rollback(cfg, "core")
        assert r.returncode == 0, r.stdout + r.stderr
        rec = read_record(state, "core")
        assert rec.state == "rolled_back" and rec.rollback.verified_tables == len(rec.tables)
        assert rec.rollback.keys_checked > 0  # only what the bots changed, one by one
        assert rec.rollback.pause_ms is not None
        # the target is fenced for the bots now, the legacy files are theirs again
        msg = _refused(core, "INSERT INTO alpha_kv VALUES ('late', 1)")
        assert f"moved to {legacy_alpha} (table kv)" in msg and "rolled back" in msg
        with contextlib.closing(sqlite3.connect(legacy_alpha, timeout=10)) as c:
            c.execute("INSERT INTO kv VALUES ('back home', 2.5)")
            c.commit()

        def forwarded() -> bool:  # and replication follows them into the (fenced) target
            with contextlib.closing(sqlite3.connect(core, timeout=10)) as c:
                return c.execute("SELECT v FROM alpha_kv WHERE k = 'back home'").fetchone() == (
                    2.5,
                )

        wait_until(forwarded, 60, 0.05, "the legacy write to replicate after the rollback")
        s = cdc_cmd("status", "-c", str(cfg)).stdout
        assert "cutover core: rolled back" in s, s
        r = cdc_cmd("finalize", "core", "-c", str(cfg))
        assert r.returncode == 13 and "not cut over" in r.stderr, r.stderr

        r = cutover_cmd(cfg, "core")  # and again
        assert r.returncode == 0, r.stdout + r.stderr
        again = read_record(state, "core")
        assert again.state == "done" and len(again.history) == 1
        target_writes(core, 200, seed=2)  # the target is the bots' again, captured again
        _backflow_caught_up(cfg, "core")
        assert stage_equal(cfg, "core") == []
    finally:
        for b in bots:
            b.send_signal(signal.SIGTERM)
    stats = [json.loads(b.communicate(timeout=60)[0]) for b in bots]
    assert all(s["errors"] == s["fenced"] for s in stats), stats  # only fence refusals
    r = cdc_cmd("finalize", "core", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rollback window closed" in r.stdout
    with contextlib.closing(sqlite3.connect(core, timeout=10)) as c:
        left = c.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE '\\_cdc\\_t%' ESCAPE '\\' "
            "OR name = '_cdc_changes'"
        ).fetchall()
        assert left == []
        c.execute("INSERT INTO alpha_kv VALUES ('after finalize', 1)")  # no fence left
        c.commit()
    assert d.stop() == 0, d.output()


def test_rollback_killed_at_each_step_completes_when_run_again(
    tmp_path: Path, daemons, live_cfg: Path
) -> None:
    cfg, d = _core_cut_over(live_cfg, daemons)
    state = str(tmp_path / "state")
    core = tmp_path / "out/core.db"
    target_writes(core, 300, seed=3)
    for step, shown in (
        ("rolling_back", "ROLLING BACK"),
        ("rollback_fenced", "ROLLING BACK"),
        ("rollback_unfencing", "ROLLING BACK"),
        ("rolled_back", "rolled back"),
    ):
        r = _rollback(cfg, "core", kill_at=step)
        assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
        s = cdc_cmd("status", "-c", str(cfg)).stdout
        assert f"cutover core: {shown}" in s, s
        if step == "rollback_fenced":  # the way forward is still open here
            r = _rollback(cfg, "core", "--abort")
            assert r.returncode == 0, r.stderr
            assert read_record(state, "core").state == "done"
            target_writes(core, 50, seed=4)  # the bots have the target back
        if step == "rollback_unfencing":  # past the legacy fences: only forward to the end
            r = _rollback(cfg, "core", "--abort")
            assert r.returncode == 12 and "already lifting the legacy fences" in r.stderr
    assert read_record(state, "core").state == "rolled_back"
    r = _rollback(cfg, "core")
    assert r.returncode == 0 and "already rolled back" in r.stdout
    assert cdc_cmd("wait", "--zero-lag", "--timeout", "60", "-c", str(cfg)).returncode == 0
    assert stage_equal(cfg, "core") == []
    assert "moved to" in _refused(core, "DELETE FROM alpha_kv")
    assert d.stop() == 0, d.output()


def test_the_way_back_survives_kill9_of_the_daemon(tmp_path: Path, daemons, live_cfg: Path) -> None:
    """The backflow's checkpoint lives in each legacy file's own transaction: killed at any
    point, the daemon resumes there, and the legacy tables end equal to the target."""
    cfg, d = _core_cut_over(live_cfg, daemons)
    core = tmp_path / "out/core.db"
    stop = tmp_path / "stop-writing"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.target_bot",
            str(core),
            str(stop),
        ],
        cwd=REPO,
    )
    try:
        for _ in range(5):  # each daemon gets to write some of it back, then dies mid-way
            wait_until(lambda: _status(cfg)["backflow"].get("core"), 60, 0.05, "the backflow")
            time.sleep(random.random())
            assert d.kill() == -signal.SIGKILL
            d = daemons(cfg)
    finally:
        stop.touch()
        writer.wait(timeout=120)
    assert writer.returncode == 0
    _backflow_caught_up(cfg, "core")
    assert stage_equal(cfg, "core") == []
    # nothing it wrote back was ever sent forward again, however often it was killed
    assert (
        not _forwarded_since(cfg, read_record(str(tmp_path / "state"), "core").log_offset)
        & CORE_TABLES
    )
    assert d.stop() == 0, d.output()


def test_a_row_the_legacy_table_cannot_hold_stops_the_way_back_by_name(
    tmp_path: Path, daemons, live_cfg: Path
) -> None:
    """A merged target table lacks the legacy UNIQUE(symbol) (one made before merged tables
    carried their members' UNIQUE, or a UNIQUE a member added later, which is not carried:
    docs/architecture.md, Limits): two rows the target accepts cannot both go back.
    Writing back is refused (never one row silently dropped), the error is in `cdc status`,
    a rollback stops with both sides fenced and can be aborted, and once the rows are fixed
    in the target the way back resumes by itself."""
    cfg, d = _core_cut_over(live_cfg, daemons)
    core, beta = tmp_path / "out/core.db", tmp_path / "legacy/beta.db"
    with contextlib.closing(sqlite3.connect(core, timeout=10)) as c:
        uniques = c.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'positions' "
            "AND sql LIKE 'CREATE UNIQUE%'"
        ).fetchall()
        assert uniques  # the merged table carries it now: taken away for this test
        for (name,) in uniques:
            c.execute(f'DROP INDEX "{name}"')
        with c:  # one transaction: both rows reach the way back in one batch
            c.execute(
                "INSERT INTO positions(bot, id, symbol, qty) VALUES ('beta', 5001, 'DUP', 1.5)"
            )
            c.execute(
                "INSERT INTO positions(bot, id, symbol, qty) VALUES ('beta', 5002, 'DUP', 2.5)"
            )
        c.execute("INSERT INTO beta_kv VALUES ('after the conflict', 1)")
        c.commit()

    def stuck():  # noqa: ANN202
        b = _status(cfg)["backflow"].get("core")
        return b and b["last_error"] and "UNIQUE constraint" in b["last_error"] and b

    err = wait_until(stuck, 60, 0.1, "the way back to refuse the conflicting rows")["last_error"]
    assert f"{beta}: writing core's changes back into positions would delete its row" in err
    assert "rollback window core:" in cdc_cmd("status", "-c", str(cfg)).stdout
    with contextlib.closing(sqlite3.connect(beta, timeout=10)) as c:  # nothing half-written
        assert c.execute("SELECT count(*) FROM positions WHERE symbol = 'DUP'").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM kv WHERE k = 'after the conflict'").fetchone() == (
            0,
        )  # and nothing after it jumped the queue
    r = _rollback(cfg, "core", "--drain-timeout", "2")
    assert r.returncode == 12 and "did not write the target's changes back" in r.stderr, r.stderr
    assert "ROLLING BACK" in cdc_cmd("status", "-c", str(cfg)).stdout
    assert _rollback(cfg, "core", "--abort").returncode == 0
    with contextlib.closing(sqlite3.connect(core, timeout=10)) as c:  # the bots' again
        c.execute("UPDATE positions SET symbol = 'DUP2' WHERE bot = 'beta' AND id = 5002")
        c.commit()
    _backflow_caught_up(cfg, "core")
    assert stage_equal(cfg, "core") == []
    assert d.stop() == 0, d.output()


def _write_as_the_way_back(conn: apsw.Connection, sql: str) -> None:
    """Write through the fence and remove the capture rows it made, in one transaction."""
    with conn:
        top = capture.top_seq(conn)
        conn.execute(sql)
        capture.drop_own_changes(conn, top)


def test_the_rollback_check_finds_a_difference_in_a_key_the_bots_changed(
    tmp_path: Path, daemons, live_cfg: Path
) -> None:
    """The rollback compares only the keys the bots changed since the cutover (the rest was
    proven then and nothing else wrote either side): that check must still catch a legacy
    row that differs (here damaged through the fence, as only a bug of ours could)."""
    cfg, d = _core_cut_over(live_cfg, daemons)
    core, alpha = tmp_path / "out/core.db", tmp_path / "legacy/alpha.db"
    with contextlib.closing(sqlite3.connect(core, timeout=10)) as c:
        c.execute("INSERT OR REPLACE INTO alpha_kv VALUES ('touched', 1.5)")
        c.commit()
    _backflow_caught_up(cfg, "core")
    ours = apsw.Connection(str(alpha))
    ours.set_busy_timeout(10000)  # the daemon reads and trims this file too
    fence.allow_writes(ours)
    # a way back that wrote a wrong value (and, as it does, hid it from capture)
    _write_as_the_way_back(ours, "UPDATE kv SET v = 2.5 WHERE k = 'touched'")
    r = _rollback(cfg, "core")
    assert r.returncode == 12, r.stdout + r.stderr
    assert "verification of the way back: alpha.kv diverged" in r.stderr, r.stderr
    _write_as_the_way_back(ours, "UPDATE kv SET v = 1.5 WHERE k = 'touched'")
    ours.close()
    r = _rollback(cfg, "core")  # run again once fixed: completes
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_record(str(tmp_path / "state"), "core").rollback.keys_checked == 1
    assert d.stop() == 0, d.output()


def test_uninstall_removes_the_rollback_windows_objects_from_the_targets(
    tmp_path: Path, daemons, live_cfg: Path
) -> None:
    """Giving up after a cutover and a rollback: `cdc uninstall` leaves no trigger or table
    of ours in the legacy files nor in the target (capture, fences, touched keys)."""
    cfg, d = _core_cut_over(live_cfg, daemons)
    assert _rollback(cfg, "core").returncode == 0  # the target is fenced now
    assert d.stop() == 0, d.output()
    r = cdc_cmd("uninstall", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "target core: capture removed from 8 tables" in r.stdout, r.stdout
    for db in ("out/core.db", "legacy/alpha.db"):
        with contextlib.closing(sqlite3.connect(tmp_path / db, timeout=10)) as c:
            left = c.execute(
                "SELECT type, name FROM sqlite_master WHERE name LIKE '\\_cdc\\_%' ESCAPE '\\' "
                "AND (type = 'trigger' OR name IN ('_cdc_changes', '_cdc_tables', '_cdc_meta', "
                "'_cdc_touched'))"
            ).fetchall()
            assert left == [], (db, left)
    with contextlib.closing(sqlite3.connect(tmp_path / "out/core.db", timeout=10)) as c:
        c.execute("INSERT INTO alpha_kv VALUES ('no fence left', 1)")
        c.commit()


def test_a_careful_bot_writes_a_cut_over_target_and_our_own_writes_are_not_sent_back(
    tmp_path: Path, daemons, live_cfg: Path
) -> None:
    """The target's capture triggers must not fail a bot that runs with
    `trusted_schema=OFF` (a trigger that tests who is writing needs a virtual table, which
    such a connection refuses: its every write failed). The replicator's own writes into a
    captured target are removed from the capture in their transaction instead: after a
    rollback, replication into the target adds nothing to it."""
    cfg, d = _core_cut_over(live_cfg, daemons)
    core, alpha = tmp_path / "out/core.db", tmp_path / "legacy/alpha.db"
    with contextlib.closing(sqlite3.connect(core, timeout=10)) as c:
        c.execute("PRAGMA trusted_schema=OFF")
        c.execute("INSERT INTO alpha_kv VALUES ('careful bot', 1.5)")
        c.commit()
    _backflow_caught_up(cfg, "core")
    with contextlib.closing(sqlite3.connect(alpha, timeout=10)) as c:
        assert c.execute("SELECT v FROM kv WHERE k = 'careful bot'").fetchone() == (1.5,)
    assert _rollback(cfg, "core").returncode == 0
    with contextlib.closing(sqlite3.connect(alpha, timeout=10)) as c:
        c.executemany("INSERT INTO kv VALUES (?, 2.5)", [(f"after {i}",) for i in range(50)])
        c.commit()

    def forwarded() -> bool:
        with contextlib.closing(sqlite3.connect(core, timeout=10)) as c:
            return c.execute("SELECT count(*) FROM alpha_kv WHERE k LIKE 'after %'").fetchone() == (
                50,
            )

    wait_until(forwarded, 60, 0.05, "the legacy writes to replicate after the rollback")
    fence_seq = read_record(str(tmp_path / "state"), "core").rollback.fence.fence_seq
    with contextlib.closing(sqlite3.connect(core, timeout=10)) as c:
        top = c.execute("SELECT coalesce(max(seq), 0) FROM _cdc_changes").fetchone()[0]
    assert top <= fence_seq, (top, fence_seq)  # the replicator's 50 rows were not captured
    assert d.stop() == 0, d.output()
