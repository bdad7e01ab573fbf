"""Security: private state files, no way out of the declared folders, no raw identifier in SQL.

1. Every file sqlite-cdc creates under `state_dir` is 0600 and every folder 0700, whatever
   the umask (022 and 000 tried), over a real life cycle through the CLI: install, run,
   status, pause/resume, throttle, a pool-using bot, repair, cutover, finalize. Targets it
   creates are 0600 in 0700 folders too (docs/config.md, "Bad input and security").
2. A name from the config, the command line or a legacy file (`../../x`, `a/b`) never
   creates or writes a file outside the declared folders.
Identifiers reach SQL quoted: tests/capture/test_odd_identifiers.py (a hypothesis fuzz
through install, harvest and apply) and tests/test_sql_audit.py (a static audit of every
SQL f-string).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from cdc.config import config_from_dict, load_config
from cdc.control import controls
from cdc.control import repair_requests as repair
from cdc.errors import ConfigError, PlanError
from cdc.fsutil import makedirs_private, write_private
from cdc.pool import stats as pool_metrics
from cdc.sqlconn import open_target
from cdc.stages import record as cutover_state
from cdc.status_file import DaemonStatus, write_json_atomic
from tests.conftest import REPO, cdc_cmd, make_db, wait_until, write_config
from verifier.model import KeyDiff, TableResult, VerifyReport
from verifier.report import write_validation_reports


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def private_tree(root: Path) -> set[str]:
    """Assert root and everything below it is 0700 (folders) / 0600 (files); return the
    relative paths seen."""
    bad = []
    for p in [root, *root.rglob("*")]:
        try:  # a `.tmp` file the daemon renames between the listing and the stat is gone
            if mode(p) != (0o700 if p.is_dir() else 0o600):
                bad.append(f"{p} {oct(mode(p))}")
        except FileNotFoundError:
            continue
    assert not bad, "not private:\n" + "\n".join(bad)
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


# -- 1. modes --------------------------------------------------------------------------------

LIFECYCLE = """\
state_dir = "state"
[targets]
core = "out/core.db"
other = "out2/sub/other.db"
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
target = "other"
[daemon]
poll_interval = 0.1
segment_bytes = 4096
[verify]
cycle_pause = 0.2
[log]
retention = "archive"
[pool]
metrics_interval = 0.1
"""

POOL_BOT = """
import sys
from cdc import pool
pool.configure(sys.argv[1])
with pool.connection("b") as c:
    c.execute("INSERT INTO t(v) VALUES ('from the pool')")
pool.close_all()
"""


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_everything_under_the_state_dir_is_private(tmp_path: Path, daemons, mask: int) -> None:
    seen: set[str] = set()
    with umask(mask):
        for n in ("a", "b"):
            make_db(
                tmp_path / "legacy" / f"{n}.db",
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"
                "INSERT INTO t(v) VALUES ('one'), ('two');",
            )
        legacy_modes = {p.name: mode(p) for p in (tmp_path / "legacy").iterdir()}
        cfg = write_config(tmp_path, LIFECYCLE)
        state = tmp_path / "state"
        _ok(cdc_cmd("install", cwd=tmp_path))
        d = daemons(cfg)
        d.wait_synced()
        for n in ("a", "b"):
            with contextlib.closing(sqlite3.connect(tmp_path / "legacy" / f"{n}.db")) as c, c:
                c.executemany("INSERT INTO t(v) VALUES (?)", [("x" * 200,)] * 100)
        d.wait_synced()
        # The apply loop archives the segments every target is past every few seconds.
        wait_until(lambda: (state / "log-archive").is_dir(), 30, 0.2, "a log segment archived")
        _ok(cdc_cmd("status", cwd=tmp_path))
        _ok(cdc_cmd("pause", cwd=tmp_path))
        _ok(cdc_cmd("pause", "--apply", "other", cwd=tmp_path))
        _ok(cdc_cmd("pause", "--cutover", cwd=tmp_path))
        _ok(cdc_cmd("throttle", "a", "--max-changes-per-second", "1000", cwd=tmp_path))
        seen |= private_tree(state)  # with every kind of control file in place
        for args in (("resume",), ("resume", "--apply"), ("resume", "--cutover")):
            _ok(cdc_cmd(*args, cwd=tmp_path))
        _ok(cdc_cmd("throttle", "--off", cwd=tmp_path))
        r = subprocess.run(
            [sys.executable, "-c", POOL_BOT, str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert r.returncode == 0, r.stderr
        seen |= private_tree(state)  # the bot's pools/<pid>.json, before a reader drops it
        with contextlib.closing(sqlite3.connect(tmp_path / "out" / "core.db")) as c, c:
            c.execute("UPDATE t SET v = 'tampered' WHERE id = 1")  # something to repair
        r = cdc_cmd("repair", "--rate", "0", cwd=tmp_path, timeout=120)
        assert r.returncode == 0 and "repairing 1 rows" in r.stderr, r.stdout + r.stderr
        _ok(cdc_cmd("verify", "--rate", "0", "--report", "reports", cwd=tmp_path))
        _ok(cdc_cmd("schema", "--out", "schema", cwd=tmp_path))
        d.wait_synced()
        _ok(cdc_cmd("cutover", "core", cwd=tmp_path, timeout=120))
        _ok(cdc_cmd("finalize", "core", cwd=tmp_path, timeout=120))
        _ok(cdc_cmd("log", "check", cwd=tmp_path))
        assert d.stop() == 0, d.output()
        seen |= private_tree(state)
    expected = {
        "daemon.lock", "daemon-status.json", "apply.lock", "apply-status.json",
        "verify-status.json", "log", "log-archive", "control", "control/pause-harvest.a",
        "control/pause-apply.other", "control/postpone-cutover", "control/throttle.a",
        "pools", "requests", "cutover", "cutover/core.json", "archive",
        "archive/manifest-core.json", "archive/a", "archive/a/a.db",
    }  # fmt: skip
    assert expected <= seen, f"not exercised: {sorted(expected - seen)}"
    assert any(re.fullmatch(r"pools/\d+\.json", s) for s in seen)
    assert any(s.startswith("log/") for s in seen) and any(
        s.startswith("log-archive/") for s in seen
    )
    # targets: created for their owner only, like their -wal/-shm (SQLite copies the mode)
    for folder in ("out", "out2", "out2/sub"):
        assert mode(tmp_path / folder) == 0o700, folder
    dbs = [*(tmp_path / "out").iterdir(), *(tmp_path / "out2" / "sub").iterdir()]
    assert {p.name for p in dbs} >= {"core.db", "other.db"}
    assert {p.name: mode(p) for p in dbs} == {p.name: 0o600 for p in dbs}
    # the CLI's own outputs: the operator's, no one else's
    for p in [*(tmp_path / "reports").iterdir(), *(tmp_path / "schema").iterdir()]:
        assert mode(p) == 0o600, p
    # legacy files keep the bots' modes; the finalized one's guard is writable by no one else
    after = {p.name: mode(p) for p in (tmp_path / "legacy").iterdir()}
    assert after["b.db"] == legacy_modes["b.db"]
    assert after["a.db.cdc-moved"] == legacy_modes["a.db"]
    assert after["a.db"] & 0o022 == 0, oct(after["a.db"])
    assert after["a.db"] == legacy_modes["a.db"] & ~0o022, "the guard keeps the bots' mode"


def test_library_writers_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The same modes without the CLI (which also narrows its umask): a bot's process
    writing pool metrics, a repair or control request made through the API, a target a
    library user opens first. Leftover temporary files with other bits are fixed."""
    with umask(0o000):
        state = tmp_path / "deep" / "state"
        controls.set_pause(str(state), ["a"], ["core"], True)
        assert mode(tmp_path / "deep") == 0o700 and mode(state) == 0o700
        repair.submit(str(state), "a", "t", [[1]])
        cutover_state.save_record(str(state), cutover_state.CutoverRecord("core", "x", "done", 0.0))
        pool_state = tmp_path / "botstate"
        pool_metrics.write_pool_metrics(str(pool_state), [])
        assert mode(pool_state) == 0o700  # a bot that starts first makes the state dir
        leftover = state / "daemon-status.json.tmp"
        leftover.write_bytes(b"")
        leftover.chmod(0o666)
        write_json_atomic(str(state / "daemon-status.json"), DaemonStatus(1, "running", 0, 0, 0))
        (state / "x.tmp").write_bytes(b"")
        (state / "x.tmp").chmod(0o666)
        write_private(str(state / "x"), b"data")
        private_tree(state)
        private_tree(pool_state)
        target = tmp_path / "new" / "dir" / "t.db"
        conn = open_target(str(target))
        conn.execute("CREATE TABLE x(a)")
        conn.execute("INSERT INTO x VALUES (1)")
        private_tree(tmp_path / "new")  # t.db, t.db-wal, t.db-shm
        conn.close()
        existing = tmp_path / "mine"
        existing.mkdir(mode=0o755)
        existing.chmod(0o755)
        makedirs_private(str(existing / "sub"))
        assert mode(existing) == 0o755, "a folder that existed keeps the operator's mode"
        assert mode(existing / "sub") == 0o700


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_validation_reports_are_private_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    """A validation report lists the diverged rows' values: it is as private as the state
    dir, also when written through the library (the demo, a script) rather than the CLI,
    and over a report left by an earlier run with other bits."""
    diff = KeyDiff("different", ["7"], ["secret"], ["7", "'legacy value'"], ["7", "'other'"])
    table = TableResult("a", "t", "core", "t", "diverged", diverged_count=1, diverged=[diff])
    report = VerifyReport(0.0, 1.0, [table])
    out = tmp_path / "reports" / "new"
    with umask(mask):
        paths = write_validation_reports(report, str(out), {"core": "out/core.db"})
        assert len(paths) == 2 and "legacy value" in Path(paths[1]).read_text()
        private_tree(tmp_path / "reports")
        for p in paths:
            os.chmod(p, 0o666)  # an older report someone opened up
        write_validation_reports(report, str(out), {"core": "out/core.db"})
        private_tree(tmp_path / "reports")
        assert sorted(os.listdir(out)) == ["validation-core.json", "validation-core.md"]


# -- 2. no way out of the declared folders ---------------------------------------------------

ESCAPES = ["../../x", "a/b", "..", ".hidden", "../state2"]


def _files_outside(root: Path, allowed: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and allowed not in p.parents and p != allowed
    )


@pytest.mark.parametrize("name", ESCAPES)
def test_config_names_cannot_leave_their_folder(tmp_path: Path, name: str) -> None:
    base = {
        "state_dir": "state",
        "targets": {"core": "out/core.db"},
        "sources": [{"name": "a", "path": "a.db"}],
        "rules": [{"table": "*", "target": "core"}],
    }
    with pytest.raises(ConfigError, match=re.escape(f"`targets.{name}`: target names use")):
        config_from_dict({**base, "targets": {name: "out/x.db"}, "rules": []}, tmp_path)
    with pytest.raises(ConfigError, match=re.escape("`sources[0]`.name")):
        config_from_dict({**base, "sources": [{"name": name, "path": "a.db"}]}, tmp_path)
    # a `{stem}` source is prefixed: a file called `...db` gives `s_..`, one component
    state = str(tmp_path / "state")
    for fn in (
        lambda: controls.set_pause(state, [name], None, True),
        lambda: controls.set_pause(state, None, [name], True),
        lambda: controls.set_throttle(state, [name], 10.0),
        lambda: cutover_state.save_record(
            state, cutover_state.CutoverRecord(name, "x", "done", 0.0)
        ),
    ):
        with pytest.raises(ConfigError, match="cannot name a"):
            fn()
    assert _files_outside(tmp_path, tmp_path / "state") == []
    assert not list((tmp_path / "state").rglob("*.json")), "nothing written"


def test_names_too_long_for_a_file_name_are_refused(tmp_path: Path) -> None:
    """A name goes into file names with a prefix (`pause-harvest.`): one that would pass
    the 255-byte limit is refused up front, not half-way through a pause or a cutover."""
    long = "t" * 129
    text = (
        f'state_dir = "state"\n[targets]\n{long} = "out/core.db"\n'
        '[[sources]]\nname = "s_{stem}"\npath = "legacy/*.db"\n'
        f'[[rules]]\ntable = "*"\ntarget = "{long}"\n'
    )
    write_config(tmp_path, text)
    r = cdc_cmd("check", cwd=tmp_path)
    assert r.returncode == ConfigError.exit_code and "at most 128 characters" in r.stderr
    stem = "x" * 230
    make_db(tmp_path / "legacy" / f"{stem}.db", "CREATE TABLE t(id INTEGER PRIMARY KEY);")
    write_config(tmp_path, text.replace(long, "core"))
    r = cdc_cmd("check", cwd=tmp_path)
    assert r.returncode == PlanError.exit_code, r.stderr
    assert "`sources[0].path`: file" in r.stderr and "is too long" in r.stderr, r.stderr


def test_command_line_names_cannot_leave_their_folder(tmp_path: Path) -> None:
    work = tmp_path / "a" / "b" / "work"
    make_db(work / "legacy" / "a.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v);")
    write_config(
        work,
        'state_dir = "state"\n[targets]\ncore = "out/core.db"\n'
        '[[sources]]\nname = "a"\npath = "legacy/a.db"\n[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    _ok(cdc_cmd("install", cwd=work))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    runs = [
        (name, args)
        for name in ESCAPES
        for args in (
            ("pause", name),
            ("pause", "--apply", name),
            ("resume", name),
            ("throttle", name, "--max-changes-per-second", "5"),
            ("cutover", name),
            ("cutover", "--abort", name),
            ("rollback", name),
            ("finalize", name),
            ("wait", "--zero-lag", "--timeout", "0", name),
        )
    ]
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda a: cdc_cmd(*a[1], cwd=work), runs))
    for (name, args), r in zip(runs, results, strict=True):
        assert r.returncode == ConfigError.exit_code, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
        assert name in r.stderr, (args, r.stderr)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "a refused name wrote a file"


def test_table_names_never_become_paths(tmp_path: Path) -> None:
    """Tables called `../../evil`, `a/b` or `..` go through install, schema output, a
    validation report and an inventory: every file lands in the folder asked for, under
    a fixed or target name."""
    work = tmp_path / "w1" / "w2"
    make_db(
        work / "legacy" / "a.db",
        'CREATE TABLE "../../evil"(id INTEGER PRIMARY KEY, "../x" TEXT);'
        'CREATE TABLE "a/b"(id INTEGER PRIMARY KEY);'
        'CREATE TABLE ".."(id INTEGER PRIMARY KEY);'
        "INSERT INTO \"../../evil\" VALUES (1, 'v');",
    )
    write_config(
        work,
        'state_dir = "state"\n[targets]\ncore = "out/core.db"\n'
        '[[sources]]\nname = "a"\npath = "legacy/a.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\nas = "../{table}/.."\n',
    )
    _ok(cdc_cmd("install", cwd=work))
    r = cdc_cmd("schema", "--out", "schema", cwd=work)
    _ok(r)
    assert sorted(os.listdir(work / "schema")) == ["core_schema.sql", "schema_comparison.md"]
    r = cdc_cmd("verify", "--rate", "0", "--report", "reports", cwd=work)
    assert r.returncode == 11, r.stdout + r.stderr  # not replicated yet: skipped, not equal
    assert sorted(os.listdir(work / "reports")) == ["validation-core.json", "validation-core.md"]
    r = cdc_cmd("inventory", "legacy", "--out", "inv", cwd=work)
    _ok(r)
    assert all(p.parent == work / "inv" for p in (work / "inv").rglob("*"))
    names = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
    assert not [n for n in names if "evil" in n or "a/b" in n], names
    assert sorted(os.listdir(tmp_path)) == ["w1"] and sorted(os.listdir(work.parent)) == ["w2"]


def test_config_paths_are_resolved_once(tmp_path: Path) -> None:
    """`..` in a configured path is resolved against the config's folder at load time, so
    what the commands print and use is the real place (no `a/../b` strings)."""
    (tmp_path / "conf").mkdir()
    cfg_path = write_config(
        tmp_path / "conf",
        'state_dir = "../var/./state"\n[targets]\ncore = "../var/../out/core.db"\n'
        '[[sources]]\nname = "a"\npath = "./../legacy/a.db"\n'
        '[log]\narchive_dir = "../var/archive/../archive2"\n',
    )
    cfg = load_config(cfg_path)
    assert cfg.state_dir == str(tmp_path / "var" / "state")
    assert cfg.targets["core"] == str(tmp_path / "out" / "core.db")
    assert cfg.sources[0].path == str(tmp_path / "legacy" / "a.db")
    assert cfg.log.archive_dir == str(tmp_path / "var" / "archive2")
    assert msgspec.json.encode(cfg).count(b"..") == 0
