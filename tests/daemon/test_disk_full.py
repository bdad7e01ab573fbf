"""Disk full: on the state dir (the change log), on a target, and on the bots' own disk.

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
import sys
import time
from pathlib import Path

import apsw

from cdc.changelog.retained import RetainedLog
from cdc.config import load_config
from cdc.errors import TargetError
from cdc.events import RowBatch
from cdc.planning.resolve import resolve_plan
from checkpoints.store import TABLE
from replicator.worker import read_apply_status
from tests import workload
from tests.conftest import cdc_cmd, wait_until, write_config
from verifier import compare_plan

NO_SPACE = "No space left on device"


# -- setup and checks ----------------------------------------------------------------------

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
analytics = "out/analytics.db"
[daemon]
harvest_batch = 500
snapshot_chunk = 200
apply_batch = 700
segment_bytes = 131072
trim_interval = 0.2
[log]
retention = "archive"
archive_dir = "archive"
[[sources]]
name = "alpha"
path = "legacy/alpha.db"
[[sources]]
name = "beta"
path = "legacy/beta.db"
[[sources]]
name = "gamma"
path = "legacy/gamma.db"
[[rules]]
table = "positions"
target = "core"
merge = true
tag_column = "bot"
[[rules]]
table = "kv"
target = "core"
as = "{source}_kv"
[[rules]]
table = "ticks"
target = "analytics"
merge = true
[[rules]]
table = "log_lines"
target = "analytics"
as = "{source}_log"
"""


def _setup(
    root: Path, config: str = CONFIG, files=workload.FILES, seed_rows: int = 200, extra: str = ""
) -> Path:
    """Legacy files as tests/workload.py makes them (written with apsw: this process reads
    them with apsw later, never with the stdlib sqlite3), the config, `cdc install`."""
    seed = "".join(
        f"INSERT INTO positions(symbol, qty, px) VALUES ('P{i}', {i}, {i * 0.5});"
        f"INSERT INTO log_lines VALUES ('seed', {i});"
        for i in range(seed_rows)
    )
    for name, wal in files:
        path = root / "legacy" / f"{name}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        c = apsw.Connection(str(path))
        if wal:
            c.execute("PRAGMA journal_mode=WAL").fetchall()
        c.execute(workload.SCHEMA + extra + seed)
        c.close()
    cfg = write_config(root, config)
    r = cdc_cmd("install", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    return cfg


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


def _unequal(cfg: Path) -> list:
    return [d for d in compare_plan(resolve_plan(load_config(cfg))) if not d.equal]


def _integrity(path: Path) -> str:
    c = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        c.set_busy_timeout(5000)
        return c.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        c.close()


def _assert_log_sound(cfg: Path) -> None:
    """`cdc log check` passes; every captured sequence was harvested once; every target
    applied exactly the events the log holds for it (nothing twice, nothing lost)."""
    r = cdc_cmd("log", "check", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    conf = load_config(cfg)
    plan = resolve_plan(conf)
    log = RetainedLog.of(conf)  # the archive (outside the full disk) and the live log
    assert log.start() == 0, "the archive must hold the whole history"
    last: dict[tuple[str, str], int] = {}
    per_target = dict.fromkeys(plan.targets, 0)
    for e in (e for batch in log.batches(0) for e in batch):
        f = e.frame
        if not isinstance(f, RowBatch):
            continue
        for ev in f.events:
            if ev.seq:
                assert ev.seq > last.get((f.source, f.table), 0), (f.source, f.table, ev.seq)
                last[(f.source, f.table)] = ev.seq
        per_target[plan.mapping(f.source, f.table).target] += len(f.events)
    for name, path in plan.targets.items():
        c = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            applied = c.execute(f"SELECT events FROM {TABLE}").fetchone()[0]
        finally:
            c.close()
        assert applied == per_target[name], f"{name}: applied {applied} != {per_target[name]}"


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # reaped or zombie
    except FileNotFoundError:
        return True


def _errors(st: dict, kind: str) -> dict[str, str | None]:
    return {x["name"]: x["last_error"] for x in st[kind]}


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
            and not any([*_errors(st, "sources").values(), *_errors(st, "targets").values()])
        )
        return st if good else None

    return wait_until(ok, 30, 0.2, "snapshots done and changes streaming without error")


def _sources_report_full(d) -> dict | None:
    """The daemon's status, once every source says its log appends hit the full disk."""
    st = d.status()
    if d.proc.poll() is not None:
        raise AssertionError(f"the daemon died on a full state dir: {d.output()}")
    errs = _errors(st, "sources").values()
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


def test_state_dir_full_backs_off_and_resumes(tmp_path, tmpfs, daemons):
    """The log's disk fills while bots write: appends fail whole and are retried, the
    daemon and the bots go on, status names the disk; with room again it catches up."""
    vol = tmpfs(tmp_path / "state", "8m")
    cfg = _setup(tmp_path)
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
                and not any(_errors(x, "sources").values())
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
    assert _unequal(cfg) == []
    _assert_log_sound(cfg)


def test_state_dir_full_sigkill_restart_converges(tmp_path, tmpfs, daemons):
    """SIGKILLed while the log's disk is full, started again while it still is (it comes
    up and reports the disk), then room again: nothing lost, nothing twice."""
    vol = tmpfs(tmp_path / "state", "8m")
    cfg = _setup(tmp_path)
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
        wait_until(lambda: not any(_errors(d.status(), "sources").values()), 20, 0.2, "resuming")
    finally:
        stats = _stop_bots(bots)
    assert [s["errors"] for s in stats] == [0] * len(stats), stats
    d.wait_synced(60)
    assert d.stop() == 0, d.output()
    assert _unequal(cfg) == []
    _assert_log_sound(cfg)


# -- 2. a target ---------------------------------------------------------------------------


def _targets_report_full(d) -> dict | None:
    st = d.status()
    if d.proc.poll() is not None:
        raise AssertionError(f"the daemon died on a full target: {d.output()}")
    errs = _errors(st, "targets").values()
    return st if all(e and "disk full" in e for e in errs) else None


def test_target_full_backs_off_and_resumes(tmp_path, tmpfs, daemons):
    """The targets' disk fills: each apply transaction rolls back whole and is retried,
    status names the disk, harvesting goes on into the log; with room again the targets
    catch up from their checkpoints, undamaged."""
    vol = tmpfs(tmp_path / "out", "64m")  # room for the WAL a backlog grows after space returns
    cfg = _setup(tmp_path)
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
            assert not any(_errors(st, "sources").values()), st["sources"]
            assert all(t["backlog_bytes"] > 0 for t in st["targets"]), st["targets"]
            for path in plan.targets.values():
                assert _integrity(Path(path)) == "ok"
            # Said once per target in the daemon's log, not at every retry.
            said = d.log_path.read_text(errors="replace").count("disk full while applying")
            assert said <= 3 * len(plan.targets), d.output()  # (once more per flap)
        wait_until(
            lambda: not any(_errors(d.status(), "targets").values()), 20, 0.2, "apply resuming"
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
        shown = _errors(json.loads(cdc_cmd("status", "--json", "-c", str(cfg)).stdout), "targets")
        assert all("its disk is full" in e for e in shown.values()), shown
    d = daemons(cfg)
    d.wait_synced(30)
    assert d.stop() == 0, d.output()
    for path in plan.targets.values():
        assert _integrity(Path(path)) == "ok"
    assert _unequal(cfg) == []
    _assert_log_sound(cfg)


# -- 3. the bots' own disk ------------------------------------------------------------------

LEGACY_CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
trim_interval = 0.2
[[sources]]
name = "roll"
path = "legacy/roll.db"
[[sources]]
name = "wal"
path = "legacy/wal.db"
[[rules]]
table = "scratch"
exclude = true
[[rules]]
table = "*"
target = "core"
as = "{source}_{table}"
"""

SCRATCH = "CREATE TABLE scratch(id INTEGER PRIMARY KEY, data BLOB);"  # no capture: excluded

BOT_WRITE = """
import json, sqlite3, sys, time
db, sqls = sys.argv[1], json.loads(sys.argv[2])
out = []
for sql in sqls:
    t = time.monotonic()
    try:
        c = sqlite3.connect(db, timeout=5.0, isolation_level=None)
        c.execute(sql)
        c.close()
        err = None
    except sqlite3.Error as e:
        err = f"{getattr(e, 'sqlite_errorname', type(e).__name__)}: {e}"
    out.append([err, (time.monotonic() - t) * 1000])
print(json.dumps(out))
"""


def _bot_writes(db: Path, *sqls: str) -> list[tuple[str | None, float]]:
    """Writes made the way a bot makes them (stdlib sqlite3 in its own process, a new
    connection each, busy timeout 5 s, autocommit): (error or None, milliseconds) each."""
    r = subprocess.run(
        [sys.executable, "-c", BOT_WRITE, str(db), json.dumps(list(sqls))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return [tuple(x) for x in json.loads(r.stdout)]


def _counts(db: Path) -> tuple[int, int, int]:
    """(rows in kv, rows in scratch, capture rows), read as a reader reads them."""
    c = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        c.set_busy_timeout(5000)
        return c.execute(
            "SELECT (SELECT count(*) FROM kv), (SELECT count(*) FROM scratch), "
            "(SELECT count(*) FROM _cdc_changes)"
        ).fetchone()
    finally:
        c.close()


def test_bots_own_disk_full(tmp_path, tmpfs, daemons):
    """The legacy files' disk fills. A bot's write fails with SQLITE_FULL whether our
    trigger is on the table or not, and leaves neither its row nor a capture row (one
    transaction). The daemon goes on harvesting (reading needs no space) but cannot trim
    (a DELETE needs journal or WAL space); it does not die or hold the bots up, and once
    there is room it trims, and nothing is lost."""
    vol = tmpfs(tmp_path / "legacy", "4m")
    files = [("roll", False), ("wal", True)]
    cfg = _setup(tmp_path, LEGACY_CONFIG, files, seed_rows=100, extra=SCRATCH)
    dbs = {name: tmp_path / "legacy" / f"{name}.db" for name, _ in files}
    d = daemons(cfg)
    d.wait_synced(30)
    # Capture rows waiting in the bots' files when their disk fills: harvest paused.
    assert cdc_cmd("pause", "-c", str(cfg)).returncode == 0
    wait_until(lambda: "harvest paused" in d.log_path.read_text(), 10, 0.1, "the pause")
    for db in dbs.values():
        writes = _bot_writes(db, *[f"INSERT INTO kv VALUES ('p{i}', {i})" for i in range(300)])
        assert [e for e, _ in writes] == [None] * 300
    with vol.kept_full():
        for db in dbs.values():
            before = _counts(db)
            assert before[2] >= 300
            writes = _bot_writes(
                db,
                "INSERT INTO kv VALUES ('big', randomblob(300000))",  # captured
                "INSERT INTO scratch(data) VALUES (randomblob(300000))",  # no trigger
                "INSERT INTO kv VALUES ('small', 1)",
                "UPDATE kv SET v = v + 1 WHERE k = 'p1'",
            )
            assert all(e and e.startswith("SQLITE_FULL") for e, _ in writes), writes
            assert all(ms < 1000 for _, ms in writes), writes  # refused at once, not held up
            assert _counts(db) == before  # neither the row nor its capture row
        # Harvesting the waiting rows reads only; the log is on another disk.
        assert cdc_cmd("resume", "-c", str(cfg)).returncode == 0
        wait_until(
            lambda: all(s["applied"] == s["captured"] >= 300 for s in d.status()["sources"]),
            20,
            0.2,
            "the waiting changes to reach the target while the bots' disk is full",
        )
        full_from = len(d.log_path.read_text())
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:  # the daemon tries to trim meanwhile
            for db in dbs.values():
                t = time.monotonic()
                assert _counts(db)[2] >= 300  # not trimmed: no room for the DELETE
                assert time.monotonic() - t < 1.0  # readers are not held up by it
                writes = _bot_writes(db, "INSERT INTO kv VALUES ('during', 1)")
                # Refused for the disk, at once: never "database is locked" behind a trim.
                assert all(e.startswith("SQLITE_FULL") and ms < 1000 for e, ms in writes)
        assert d.proc.poll() is None, d.output()
        # Status says only the trim is stuck, and on which disk; the trim is put off (not
        # retried at every wake-up its own journal writes cause) and said once in the log.
        shown = _errors(d.status(), "sources")
        assert all(e and "legacy disk full: cannot trim" in e for e in shown.values()), shown
        said = d.log_path.read_text()[full_from:].count("disk is full")
        assert said <= len(dbs), d.output()
    # Room again: the trim goes through, the bots write again, nothing was lost.
    wait_until(
        lambda: all(_counts(db)[2] <= 1 for db in dbs.values()), 20, 0.2, "the trim to catch up"
    )
    for db in dbs.values():
        assert [e for e, _ in _bot_writes(db, "INSERT INTO kv VALUES ('after', 1)")] == [None]
    d.wait_synced(30)
    assert d.stop() == 0, d.output()
    assert _unequal(cfg) == []
    _assert_log_sound(cfg)


def test_capture_costs_the_bots_disk(tmp_path):
    """What capture adds to a legacy file until the daemon trims: one `_cdc_changes` row
    per changed key (measured ~15 bytes with an integer key, ~21 with a 10-character text
    key), and one more page per transaction in the rollback journal or WAL."""
    paths = {}
    for name in ("plain", "captured"):
        paths[name] = tmp_path / f"{name}.db"
        c = apsw.Connection(str(paths[name]))
        c.execute(workload.SCHEMA)
        c.close()
    cfg = write_config(
        tmp_path,
        'state_dir = "state"\n[targets]\ncore = "core.db"\n[[sources]]\nname = "c"\n'
        'path = "captured.db"\n[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    n = 5000
    grew = {}
    for name, path in paths.items():
        c = apsw.Connection(str(path))
        before = c.execute("PRAGMA page_count").fetchone()[0]
        with c:
            for i in range(n):
                c.execute("INSERT INTO positions(symbol, qty) VALUES (?, ?)", (f"S{i}", i))
                c.execute("INSERT INTO kv VALUES (?, ?)", (f"key-{i:06d}", i))
        grew[name] = (c.execute("PRAGMA page_count").fetchone()[0] - before) * 4096
        if name == "captured":
            rows = c.execute("SELECT count(*) FROM _cdc_changes").fetchone()[0]
            table = c.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name = '_cdc_changes'"
            ).fetchone()[0]
        c.close()
    assert rows == 2 * n
    per_row = table / rows
    print(f"capture rows: {per_row:.1f} bytes each; file grew {grew}")
    assert 10 < per_row < 40
    assert grew["captured"] - grew["plain"] < 40 * 2 * n
