"""Live controls (docs/controls.md) against a real daemon: pause, throttle, postponed
cutover and panic, each undone again, with the bots' files and the log checked directly."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from cdc.changelog.segments import LogReader, list_segments
from cdc.config import DaemonSettings, load_config
from cdc.control import controls, pacing
from cdc.cutover.cutover import CutoverError
from cdc.errors import ConfigError, DaemonError, PanicStop
from cdc.events import RowBatch, SourceMark
from cdc.planning.resolve import resolve_plan
from checkpoints.store import read_checkpoint
from replicator.loop import GC_INTERVAL
from replicator.worker import read_apply_status
from tests.conftest import cdc_cmd, make_db, wait_until, write_config
from verifier import compare_plan

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
aux = "out/aux.db"
[daemon]
poll_interval = 0.2
{daemon}
[verify]
settle_timeout = 1
cycle_pause = 0.5
[[sources]]
name = "a"
path = "legacy/a.db"
[[sources]]
name = "b"
path = "legacy/b.db"
[[rules]]
source = "a"
table = "*"
target = "core"
[[rules]]
source = "b"
table = "*"
target = "aux"
"""

SCHEMA = "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);"


def _setup(tmp_path: Path, daemon: str = "") -> Path:
    for name in ("a", "b"):
        make_db(tmp_path / "legacy" / f"{name}.db", SCHEMA, wal=name == "b")
    cfg = write_config(tmp_path, CONFIG.format(daemon=daemon))
    r = cdc_cmd("install", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    return cfg


def _write(tmp_path: Path, source: str, n: int, txns: int = 1) -> None:
    """`n` new rows in `txns` transactions, as a bot would (the system's sqlite3)."""
    c = sqlite3.connect(tmp_path / "legacy" / f"{source}.db", isolation_level=None, timeout=10)
    per = max(1, n // txns)
    for start in range(0, n, per):
        c.execute("BEGIN")
        c.executemany(
            "INSERT INTO kv(v) VALUES (?)", [(f"{source}{i}",) for i in range(start, start + per)]
        )
        c.execute("COMMIT")
    c.close()


def _capture_rows(tmp_path: Path, source: str) -> int:
    c = sqlite3.connect(tmp_path / "legacy" / f"{source}.db")
    try:
        return c.execute("SELECT count(*) FROM _cdc_changes").fetchone()[0]
    finally:
        c.close()


def _src(st: dict, name: str) -> dict:
    return next(s for s in st["sources"] if s["name"] == name)


def _tgt(st: dict, name: str) -> dict:
    return next(t for t in st["targets"] if t["name"] == name)


def _cdc(cfg: Path, *args: str, code: int = 0):  # noqa: ANN202
    r = cdc_cmd(*args, "-c", str(cfg))
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    return r


def _acked(d, want: str, absent: str | None = None) -> None:  # noqa: ANN001 - DaemonProcess
    """Wait until the daemon's newest `controls now:` log line has `want` (and not
    `absent`), then for one more poll: the harvest thread's next look."""

    def seen() -> bool:
        lines = [
            ln
            for ln in d.log_path.read_text(errors="replace").splitlines()
            if "controls now:" in ln
        ]
        return bool(lines) and want in lines[-1] and (absent is None or absent not in lines[-1])

    wait_until(seen, 10, 0.05, f"the daemon to log controls with {want!r}")
    time.sleep(0.3)


def _sources_logged_after(cfg: Path, offset: int) -> set[str]:
    log_dir = load_config(cfg).log_dir
    found = set()
    for e in LogReader(log_dir).iter_from(offset, stop_at_bad=True):
        if isinstance(e.frame, RowBatch | SourceMark):
            found.add(e.frame.source)
    return found


def _verifier_passes(d, n: int, since: int | None = None) -> dict:  # noqa: ANN001
    """The verifier's status once it finished `n` more passes (than `since`, or now)."""
    if since is None:
        since = (d.status()["verifier"] or {}).get("cycle", 0)

    def done():  # noqa: ANN202
        v = d.status()["verifier"]
        return v if v and v["cycle"] >= since + n else None

    return wait_until(done, 60, 0.5, f"{n} verifier passes")


def _equal(cfg: Path) -> list:
    return [d for d in compare_plan(resolve_plan(load_config(cfg))) if not d.equal]


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_pause_harvest_leaves_the_file_alone_across_a_restart(tmp_path, daemons):
    cfg = _setup(tmp_path)
    _write(tmp_path, "a", 20)
    d = daemons(cfg)
    d.wait_synced()
    r = _cdc(cfg, "pause", "a")
    assert "harvest paused: a" in r.stdout and "follows within" in r.stdout
    folder = tmp_path / "state" / "control"
    assert _mode(folder) == 0o700 and _mode(folder / "pause-harvest.a") == 0o600
    _acked(d, "harvest paused: a")
    st0 = d.status()
    end0, logged0 = st0["log"]["end_offset"], _src(st0, "a")["logged"]

    _write(tmp_path, "a", 200, txns=4)
    _write(tmp_path, "b", 200, txns=4)
    st = wait_until(
        lambda: (s := d.status()) and _src(s, "b")["backlog_events"] == 0 and s,
        30,
        0.2,
        "source b to keep flowing",
    )
    a = _src(st, "a")
    assert a["logged"] == logged0 and a["captured"] >= logged0 + 200
    assert a["backlog_events"] >= 200
    assert _capture_rows(tmp_path, "a") >= 200  # the bots' changes wait in their file
    assert _sources_logged_after(cfg, end0) == {"b"}
    assert st["controls"]["paused_harvest"] == ["a"]
    assert "CONTROL: harvest paused: a" in _cdc(cfg, "status").stdout

    assert d.stop() == 0  # the pause is a file: a new daemon keeps it
    d = daemons(cfg)
    _write(tmp_path, "a", 50)
    _write(tmp_path, "b", 50)
    wait_until(
        lambda: (
            (s := d.status())["daemon"]["state"] == "running"
            and _src(s, "b")["backlog_events"] == 0
        ),
        30,
        0.2,
        "source b after the restart",
    )
    assert _src(d.status(), "a")["logged"] == logged0
    assert _sources_logged_after(cfg, end0) == {"b"}
    # the continuous verifier keeps its hands off a too: paused, never diverged
    v = _verifier_passes(d, 2)
    states = {(t["source"], t["table"]): t["state"] for t in v["tables"]}
    assert states == {("a", "kv"): "paused", ("b", "kv"): "equal"}, v

    r = _cdc(cfg, "resume")
    assert "no controls in force" in r.stdout
    assert not (folder / "pause-harvest.a").exists()
    st = d.wait_synced()
    assert _src(st, "a")["applied"] == _src(st, "a")["captured"]
    assert d.stop() == 0
    assert _equal(cfg) == []


def test_pause_apply_holds_the_target_and_its_segments(tmp_path, daemons):
    cfg = _setup(tmp_path, daemon="segment_bytes = 8192")
    d = daemons(cfg)
    d.wait_synced()
    _cdc(cfg, "pause", "--apply", "core")
    _acked(d, "apply paused: core")
    core = tmp_path / "out" / "core.db"
    cp0 = read_checkpoint(str(core))
    verifier_cycle = (d.status()["verifier"] or {}).get("cycle", 0)

    _write(tmp_path, "a", 1000, txns=10)
    _write(tmp_path, "b", 1000, txns=10)

    def aux_done_a_logged():
        s = d.status()
        a = _src(s, "a")
        return s if _src(s, "b")["backlog_events"] == 0 and a["logged"] == a["captured"] else None

    st = wait_until(aux_done_a_logged, 30, 0.2, "aux applied and a harvested")
    assert read_checkpoint(str(core)) == cp0
    assert _tgt(st, "core")["log_offset"] == cp0 and _tgt(st, "core")["backlog_bytes"] > 0
    assert _src(st, "a")["backlog_events"] >= 1000
    assert st["controls"]["paused_apply"] == ["core"]

    # The continuous verifier calls a paused target's lag unproven, never a divergence.
    v = _verifier_passes(d, 2, verifier_cycle)
    states = {(t["source"], t["table"]): t["state"] for t in v["tables"]}
    assert states[("a", "kv")] == "unsettled" and states[("b", "kv")] == "equal", v
    r = cdc_cmd("verify", "-c", str(cfg), "core.*")
    assert r.returncode == 11, r.stdout  # not proven, and nothing reported diverged

    # GC ran meanwhile (every GC_INTERVAL s) and kept every segment core still needs.
    time.sleep(GC_INTERVAL + 1)
    log_dir = load_config(cfg).log_dir
    assert list_segments(log_dir)[0] <= cp0 < list_segments(log_dir)[-1]

    _cdc(cfg, "resume", "--apply", "core")
    d.wait_synced()
    assert read_checkpoint(str(core)) > cp0
    wait_until(lambda: list_segments(log_dir)[0] > cp0, 30, 0.5, "GC to go on after the resume")
    assert d.stop() == 0
    assert _equal(cfg) == []


def test_throttle_caps_the_harvest_rate(tmp_path, daemons):
    cfg = _setup(tmp_path)
    d = daemons(cfg)
    d.wait_synced()
    _cdc(cfg, "pause", "a")
    _acked(d, "harvest paused: a")
    _write(tmp_path, "a", 3000)  # a backlog an unthrottled harvest takes in one go
    r = _cdc(cfg, "throttle", "--max-changes-per-second", "200", "a")
    assert "throttle a: at most 200 changes/s" in r.stdout
    _cdc(cfg, "resume", "a")
    _acked(d, "throttle a: at most 200", absent="harvest paused")

    s0 = d.status()
    t0, logged0 = s0["daemon"]["updated_at"], _src(s0, "a")["logged"]
    s1 = wait_until(
        lambda: (s := d.status())["daemon"]["updated_at"] >= t0 + 3 and s,
        20,
        0.2,
        "3 s of throttled harvest",
    )
    rate = (_src(s1, "a")["logged"] - logged0) / (s1["daemon"]["updated_at"] - t0)
    assert 0 < rate < 3 * 200, rate
    assert _src(s1, "a")["logged"] < _src(s1, "a")["captured"]  # still draining, slowly
    assert s1["controls"]["throttles"]["a"]["max_changes_per_second"] == 200

    # A lock cap alone: batches adapt, and the backlog still drains completely.
    _cdc(cfg, "throttle", "--max-lock-ms", "2", "a")
    d.wait_synced(timeout=60)
    _write(tmp_path, "a", 2000, txns=2)
    d.wait_synced(timeout=60)
    r = _cdc(cfg, "throttle", "--off")
    assert "no controls in force" in r.stdout
    assert d.stop() == 0
    assert _equal(cfg) == []


def test_postponed_cutover_is_refused_until_resumed(tmp_path):
    cfg = _setup(tmp_path)
    _cdc(cfg, "pause", "--cutover")
    assert (tmp_path / "state" / "control" / "postpone-cutover").exists()
    r = _cdc(cfg, "cutover", "aux", code=CutoverError.exit_code)
    assert r.stderr.startswith("error: aux: cutovers are postponed (`cdc pause --cutover`)")
    assert "hint: `cdc resume --cutover`" in r.stderr
    assert "cutover postponed" in _cdc(cfg, "status").stdout
    _cdc(cfg, "resume", "--cutover")
    # past the check now: it stops at the next one (no daemon to drain the stage)
    r = _cdc(cfg, "cutover", "aux", code=DaemonError.exit_code)
    assert "daemon is not running" in r.stderr


@pytest.mark.parametrize("worker", [True, False], ids=["worker", "thread"])
def test_panic_stops_at_once_and_keeps_it_stopped(tmp_path, daemons, worker):
    cfg = _setup(tmp_path, daemon=f"apply_worker = {str(worker).lower()}")
    d = daemons(cfg)
    d.wait_synced()
    state = tmp_path / "state"
    worker_pid = read_apply_status(str(state)).pid if worker else None
    stop_bots = threading.Event()

    def bot(source: str) -> None:
        while not stop_bots.is_set():
            _write(tmp_path, source, 20)
            time.sleep(0.01)

    bots = [threading.Thread(target=bot, args=(s,)) for s in ("a", "b")]
    for b in bots:
        b.start()
    try:
        time.sleep(1.0)  # the daemon is busy harvesting and applying
        began = time.monotonic()
        r = _cdc(cfg, "panic")
        assert "the daemon is stopped; it will not start until" in r.stdout
        wait_until(lambda: d.proc.poll() is not None, 10, 0.05, "the daemon to exit")
        assert time.monotonic() - began < 10
        assert d.kill() == PanicStop.exit_code  # already gone: just collects the code
        if worker_pid:
            with pytest.raises(ProcessLookupError):
                os.kill(worker_pid, 0)
        assert "panic stop requested" in d.log_path.read_text(errors="replace")
        st = json.loads(_cdc(cfg, "status", "--json").stdout)
        assert st["daemon"]["state"] == "stopped" and st["controls"]["panic"] is True
        assert _mode(state / "control" / "panic") == 0o600

        r = _cdc(cfg, "run", code=PanicStop.exit_code)
        assert "error: panic stop requested" in r.stderr
        assert "cdc resume --panic" in r.stderr
    finally:
        stop_bots.set()
        for b in bots:
            b.join()

    _cdc(cfg, "resume", "--panic")
    d = daemons(cfg)
    d.wait_synced()
    assert d.stop() == 0
    assert _equal(cfg) == []


# -- the Python API and the CLI's checks, without a daemon ---------------------------------


def test_controls_api_round_trip_and_permissions(tmp_path):
    sd = str(tmp_path / "state")
    assert controls.read_controls(sd) == controls.Controls()
    c = controls.set_pause(sd, ["a", "b"], ["core"], True)
    assert c.paused_harvest == ["a", "b"] and c.paused_apply == ["core"] and c.active
    first = c.since["pause-harvest.a"]
    time.sleep(0.01)
    c = controls.set_pause(sd, ["a"], None, True)  # already on: keeps its `since`
    assert c.since["pause-harvest.a"] == first
    c = controls.set_throttle(sd, ["a"], max_changes_per_second=50)
    assert c.throttles["a"].max_changes_per_second == 50 and c.throttles["a"].max_lock_ms is None
    c = controls.set_postpone(sd, True)
    assert c.cutover_postponed
    folder = tmp_path / "state" / "control"
    assert _mode(folder) == 0o700
    assert {_mode(p) for p in folder.iterdir()} == {0o600}
    (folder / "panic").touch()  # by hand, in an emergency: counts as on
    assert controls.read_controls(sd).panic
    c = controls.set_panic(sd, False)
    c = controls.set_pause(sd, ["a", "b"], ["core"], False)
    c = controls.set_throttle(sd, ["a"])
    c = controls.set_postpone(sd, False)
    assert not c.active and os.listdir(folder) == []
    with pytest.raises(ConfigError):
        controls.set_pause(sd, ["../x"], None, True)
    with pytest.raises(ConfigError):
        controls.set_throttle(sd, ["a"], max_changes_per_second=0)


def test_watcher_rereads_only_on_change(tmp_path):
    sd = str(tmp_path / "state")
    w = controls.ControlWatcher(sd, refresh=60)
    first = w.current()
    assert first == controls.Controls() and w.current() is first
    controls.set_pause(sd, ["a"], None, True)
    now = w.current()
    assert now.paused_harvest == ["a"] and w.current() is now


def test_cli_refuses_unknown_names_and_empty_throttles(tmp_path):
    cfg = _setup(tmp_path)
    r = _cdc(cfg, "pause", "nope", code=ConfigError.exit_code)
    assert "no such source: nope" in r.stderr
    _cdc(cfg, "pause", "--apply", "a", code=ConfigError.exit_code)  # a is a source
    _cdc(cfg, "pause", "--both", "a", code=ConfigError.exit_code)
    _cdc(cfg, "throttle", "a", code=ConfigError.exit_code)
    _cdc(cfg, "throttle", "--off", "--max-lock-ms", "5", code=ConfigError.exit_code)
    r = _cdc(cfg, "pause", "--both")
    assert "harvest paused: a" in r.stdout and "apply paused: aux" in r.stdout
    assert "not running" in r.stdout
    _cdc(cfg, "resume", "--both")
    assert controls.read_controls(str(tmp_path / "state")) == controls.Controls()


def test_pacer_token_bucket_and_lock_cap():
    now = [100.0]
    base = DaemonSettings(harvest_batch=20000, snapshot_chunk=2000)
    p = pacing.Pacer(base, clock=lambda: now[0])
    p.use(None)
    assert p.delay() == 0 and p.settings() is base

    p.use(controls.Throttle(max_changes_per_second=100))
    assert p.delay() == 0 and p.settings().harvest_batch == 100  # one second of burst
    p.done("harvest", 100, 100, 0.001)
    assert p.delay() > 0  # the bucket is empty
    now[0] += 0.5
    assert p.delay() == 0 and p.settings().harvest_batch == 50

    p.use(controls.Throttle(max_lock_ms=10))
    assert p.settings().harvest_batch == pacing.START_BATCH
    p.done("harvest", 100, 100, 0.05)  # 5x over the cap
    assert p.settings().harvest_batch <= 100 * 10 / 50
    small = p.settings().harvest_batch
    for _ in range(5):  # full batches far under the cap: it grows back
        p.done("harvest", p.settings().harvest_batch, p.settings().harvest_batch, 0.001)
    assert p.settings().harvest_batch > small
    p.done("harvest", 10, 10, 1.0)
    assert p.settings().harvest_batch == pacing.MIN_BATCH  # never below
    assert p.settings().snapshot_chunk == pacing.START_BATCH  # adapted on its own
