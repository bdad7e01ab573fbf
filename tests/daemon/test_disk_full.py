"""Disk full: on the state dir (the change log) and on a target (the bots' own disk is
test_disk_full_bots.py; the setup, `disk_cfg`, and the checks are in this folder's conftest.py).

Each disk is a small tmpfs mounted inside the test's tmp dir (the `tmpfs` fixture of
tests/conftest.py), "filled" with a filler file
and given back by deleting it, while real bot processes write and a real daemon runs. What
must hold: the daemon neither dies nor corrupts anything, `cdc status` names the full disk,
the bots never see an error caused by our disk, and once there is room again everything
resumes by itself and the targets equal the sources.

Needs root (or CAP_SYS_ADMIN) to mount; skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import apsw

from cdc.config import load_config
from cdc.errors import TargetError
from cdc.planning.resolve import resolve_plan
from replicator.worker import read_apply_status
from tests.conftest import cdc_cmd, wait_until
from tests.daemon.conftest import assert_log_sound, last_errors, unequal
from tests.support import workload

NO_SPACE = "No space left on device"


# -- setup and checks ----------------------------------------------------------------------


def _stop_bots(bots: list[subprocess.Popen]) -> list[dict]:
    for b in bots:
        if b.poll() is None:
            b.send_signal(signal.SIGTERM)
    stats = [json.loads(b.communicate(timeout=60)[0] or "{}") for b in bots]
    assert all(b.returncode == 0 for b in bots), stats
    return stats


def _human(cfg: Path) -> str:
    r = cdc_cmd("status", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    return r.stdout


def _integrity(path: Path) -> str:
    c = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        c.set_busy_timeout(5000)
        return c.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        c.close()


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # reaped or zombie
    except FileNotFoundError:
        return True


BOTS = ["alpha", "beta", "gamma"]  # one bot process per legacy file


def _wait_streaming(d) -> dict:
    """The daemon's own status file written, snapshots done, changes flowing, no error."""

    def ok():
        st = d.status()
        if d.proc.poll() is not None:
            raise AssertionError(d.output())
        ours = st["daemon"]["pid"] == d.proc.pid and st["daemon"]["state"] == "running"
        good = (
            ours
            and all(s["snapshot"] == "done" and s["logged"] for s in st["sources"])
            and not any(
                [*last_errors(st, "sources").values(), *last_errors(st, "targets").values()]
            )
        )
        return st if good else None

    return wait_until(ok, 30, 0.2, "snapshots done and changes streaming without error")


def _sources_report_full(d) -> dict | None:
    """The daemon's status, once every source says its log appends hit the full disk."""
    st = d.status()
    if d.proc.poll() is not None:
        raise AssertionError(f"the daemon died on a full state dir: {d.output()}")
    errs = last_errors(st, "sources").values()
    return st if all(e and NO_SPACE in e for e in errs) else None


def _assert_state_dir_full_shown(d, cfg: Path) -> dict:
    """What an operator sees while the state dir is full: the daemon running (its status
    file kept current), and every source naming the disk."""
    st = wait_until(lambda: _sources_report_full(d), 20, 0.2, "every source to report it")
    assert st["daemon"]["state"] == "running" and st["daemon"]["pid"] == d.proc.pid
    for s in st["sources"]:
        assert "the state dir's disk is full" in s["last_error"], s["last_error"]
        assert "taken back" in s["last_error"], s["last_error"]
    human = _human(cfg)
    assert "daemon: running" in human, human
    lines = [x for x in human.splitlines() if "last error:" in x]
    assert sum(NO_SPACE in x and "state dir's disk is full" in x for x in lines) == 3, human
    return st


# -- 1. the state dir (change log) ---------------------------------------------------------


def test_state_dir_full_backs_off_and_resumes(tmp_path, tmpfs, daemons, disk_cfg):
    """The log's disk fills while bots write: appends fail whole and are retried, the
    daemon and the bots go on, status names the disk; with room again it catches up."""
    vol = tmpfs(tmp_path / "state", "8m")
    cfg = disk_cfg()
    bots = workload.start(tmp_path, BOTS, seconds=600)
    try:
        d = daemons(cfg)
        _wait_streaming(d)
        with vol.kept_full():
            st = _assert_state_dir_full_shown(d, cfg)
            captured = {s["name"]: s["captured"] for s in st["sources"]}
            time.sleep(2)  # bots write on; the daemon keeps backing off
            st = wait_until(lambda: _sources_report_full(d), 10, 0.2, "the error to stay")
            assert all(s["captured"] > captured[s["name"]] for s in st["sources"]), st
            r = cdc_cmd("log", "check", "-c", str(cfg))  # the log is whole, full or not
            assert r.returncode == 0, r.stdout + r.stderr
            # A failing source backs off (bot writes do not wake it), and says so once, not
            # at every retry (again only if it recovered meanwhile, or the text changed).
            said = d.log_path.read_text().count("state dir's disk is full")
            assert said <= 4 * len(BOTS), d.output()
        logged = {s["name"]: s["logged"] for s in st["sources"]}
        st = wait_until(
            lambda: (
                (x := d.status())
                and not any(last_errors(x, "sources").values())
                and all(s["logged"] > logged[s["name"]] for s in x["sources"])
                and x
            ),
            20,
            0.2,
            "harvesting to resume by itself",
        )
    finally:
        stats = _stop_bots(bots)
    assert sum(s["ops"] for s in stats) > 100
    assert [s["errors"] for s in stats] == [0] * len(stats), stats  # our disk, not theirs
    d.wait_synced(60)
    assert d.stop() == 0, d.output()
    assert unequal(cfg) == []
    assert_log_sound(cfg)


def test_state_dir_full_sigkill_restart_converges(tmp_path, tmpfs, daemons, disk_cfg):
    """SIGKILLed while the log's disk is full, started again while it still is (it comes
    up and reports the disk), then room again: nothing lost, nothing twice."""
    vol = tmpfs(tmp_path / "state", "8m")
    cfg = disk_cfg()
    bots = workload.start(tmp_path, BOTS, seconds=600)
    try:
        d = daemons(cfg)
        _wait_streaming(d)
        with vol.kept_full():
            wait_until(lambda: _sources_report_full(d), 20, 0.2, "every source to report it")
            worker = read_apply_status(str(tmp_path / "state"))
            assert d.kill(signal.SIGKILL) == -signal.SIGKILL
            wait_until(lambda: _exited(worker.pid), 30, 0.05, "the apply worker to exit")
            d = daemons(cfg)
            _assert_state_dir_full_shown(d, cfg)
        wait_until(
            lambda: not any(last_errors(d.status(), "sources").values()), 20, 0.2, "resuming"
        )
    finally:
        stats = _stop_bots(bots)
    assert [s["errors"] for s in stats] == [0] * len(stats), stats
    d.wait_synced(60)
    assert d.stop() == 0, d.output()
    assert unequal(cfg) == []
    assert_log_sound(cfg)


# -- 2. a target ---------------------------------------------------------------------------


def _targets_report_full(d) -> dict | None:
    st = d.status()
    if d.proc.poll() is not None:
        raise AssertionError(f"the daemon died on a full target: {d.output()}")
    errs = last_errors(st, "targets").values()
    return st if all(e and "disk full" in e for e in errs) else None


def test_target_full_backs_off_and_resumes(tmp_path, tmpfs, daemons, disk_cfg):
    """The targets' disk fills: each apply transaction rolls back whole and is retried,
    status names the disk, harvesting goes on into the log; with room again the targets
    catch up from their checkpoints, undamaged."""
    vol = tmpfs(tmp_path / "out", "64m")  # room for the WAL a backlog grows after space returns
    cfg = disk_cfg()
    plan = resolve_plan(load_config(cfg))
    bots = workload.start(tmp_path, BOTS, seconds=600)
    try:
        d = daemons(cfg)
        _wait_streaming(d)
        with vol.kept_full():
            st = wait_until(lambda: _targets_report_full(d), 20, 0.2, "both targets to say so")
            human = _human(cfg)
            lines = [x for x in human.splitlines() if "last error:" in x]
            assert len(lines) == 2 and all("disk full while applying" in x for x in lines), human
            end, logged = st["log"]["end_offset"], {s["name"]: s["logged"] for s in st["sources"]}
            time.sleep(2)
            st = wait_until(lambda: _targets_report_full(d), 10, 0.2, "the error to stay")
            assert st["log"]["end_offset"] > end  # harvesting goes on into the log
            assert all(s["logged"] > logged[s["name"]] for s in st["sources"]), st["sources"]
            assert not any(last_errors(st, "sources").values()), st["sources"]
            assert all(t["backlog_bytes"] > 0 for t in st["targets"]), st["targets"]
            for path in plan.targets.values():
                assert _integrity(Path(path)) == "ok"
            # Said once per target in the daemon's log, not at every retry.
            said = d.log_path.read_text(errors="replace").count("disk full while applying")
            assert said <= 3 * len(plan.targets), d.output()  # (once more per flap)
        wait_until(
            lambda: not any(last_errors(d.status(), "targets").values()), 20, 0.2, "apply resuming"
        )
    finally:
        stats = _stop_bots(bots)
    assert [s["errors"] for s in stats] == [0] * len(stats), stats
    d.wait_synced(60)
    assert d.stop() == 0, d.output()
    # Started while the targets' disk is full: SQLite cannot even make a target's WAL
    # index ("disk I/O error"). A clean stop that says why, and a status that does too.
    with vol.kept_full():
        d = daemons(cfg)
        d.proc.wait(timeout=60)
        assert d.kill() == TargetError.exit_code, d.output()  # (kill: it exited; close log)
        assert "its disk is full" in d.output(), d.output()
        shown = last_errors(
            json.loads(cdc_cmd("status", "--json", "-c", str(cfg)).stdout), "targets"
        )
        assert all("its disk is full" in e for e in shown.values()), shown
    d = daemons(cfg)
    d.wait_synced(30)
    assert d.stop() == 0, d.output()
    for path in plan.targets.values():
        assert _integrity(Path(path)) == "ok"
    assert unequal(cfg) == []
    assert_log_sound(cfg)
