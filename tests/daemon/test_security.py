"""Security: private state files, no way out of the declared folders, no raw identifier in SQL.

1. Every file sqlite-cdc creates under `state_dir` is 0600 and every folder 0700, whatever
   the umask (022 and 000 tried), over a real life cycle through the CLI: install, run,
   status, pause/resume, throttle, a pool-using bot, repair, cutover, finalize. Targets it
   creates are 0600 in 0700 folders too (docs/config.md, "Bad input and security").
2. A name from the config, the command line or a legacy file (`../../x`, `a/b`) never
   creates or writes a file outside the declared folders.
3. Identifiers reach SQL quoted: a hypothesis fuzz runs install + harvest + apply on
   arbitrary table, column, index and source names, and a static audit (an AST data-flow
   check) finds every name interpolated into an SQL f-string without `q()`.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import apsw
import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdc.config import config_from_dict, load_config
from cdc.control import controls
from cdc.control import repair_requests as repair
from cdc.errors import ConfigError, PlanError
from cdc.fsutil import makedirs_private, write_private
from cdc.planning.resolve import resolve_plan
from cdc.pool import stats as pool_metrics
from cdc.sqlconn import open_target
from cdc.stages import record as cutover_state
from cdc.status_file import DaemonStatus, write_json_atomic
from tests.conftest import REPO, cdc_cmd, make_db, wait_until, write_config
from tests.pipeline import Pipeline
from verifier.model import KeyDiff, TableResult, VerifyReport
from verifier.report import write_validation_reports


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def private_tree(root: Path) -> set[str]:
    """Assert root and everything below it is 0700 (folders) / 0600 (files); return the
    relative paths seen."""
    bad = [f"{p} {oct(mode(p))}" for p in [root, *root.rglob("*")]
           if mode(p) != (0o700 if p.is_dir() else 0o600)]  # fmt: skip
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


# -- 3. identifiers reach SQL quoted ---------------------------------------------------------

KEYWORDS = ["select", "from", "where", "order", "group", "table", "index", "key", "on",
            "values", "default", "check", "references", "primary", "rowid", "oid", "null"]  # fmt: skip
SPECIAL = "\"'`[] .,;()%/\\-–é表🙂\t"
ident = st.one_of(
    st.sampled_from(KEYWORDS),
    st.text(st.sampled_from(SPECIAL + "abcXYZ0"), min_size=1, max_size=8),
    st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=10,
    ),
).filter(lambda s: not s.lower().startswith(("sqlite_", "_cdc_")))
stems = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"),
    min_size=1,
    max_size=12,
).filter(lambda s: not s.startswith(".") and len(s.encode()) < 120)
DECLS = ["", "TEXT", "INTEGER", "REAL", "BLOB", "NUMERIC", "VARCHAR(10)", '"odd type"', "[x y]"]


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _distinct(*names: str) -> bool:
    return len({n.lower() for n in names}) == len(names)


@settings(
    max_examples=int(os.environ.get("CDC_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(
    stem=stems,
    t1=ident,
    t2=ident,
    cols=st.lists(
        ident.filter(lambda s: s.lower() not in ("rowid", "oid", "_rowid_")),
        min_size=6,
        max_size=6,
        unique_by=str.lower,
    ),
    index=ident,
    decls=st.lists(st.sampled_from(DECLS), min_size=3, max_size=3),
    without_rowid=st.booleans(),
)
def test_any_identifier_survives_install_harvest_and_apply(
    tmp_path_factory, stem, t1, t2, cols, index, decls, without_rowid
) -> None:
    """Arbitrary table, column, index and source (file stem) names, a composite key, a
    foreign key, an index, `as` names built from them, and a column added mid-run: the
    target equals the legacy file after install + harvest + apply."""
    assume(_distinct(t1, t2, index))
    k1, k2, c1, f1, f2, added = cols
    root = tmp_path_factory.mktemp("fuzz")
    (root / "legacy").mkdir()
    db = root / "legacy" / f"{stem}.db"
    legacy = apsw.Connection(str(db))  # apsw only: Pipeline opens this file with apsw too
    tail = " WITHOUT ROWID" if without_rowid else ""
    legacy.execute(
        f"CREATE TABLE {q(t1)}({q(k1)} TEXT NOT NULL, {q(k2)} INTEGER NOT NULL, "
        f"{q(c1)} {decls[0]}, PRIMARY KEY({q(k1)}, {q(k2)})){tail};"
        f"CREATE INDEX {q(index)} ON {q(t1)}({q(c1)});"
        f"CREATE TABLE {q(t2)}({q(f1)} {decls[1]}, {q(f2)} {decls[2]}, "
        f"FOREIGN KEY({q(f1)}, {q(f2)}) REFERENCES {q(t1)}({q(k1)}, {q(k2)}));"
    )
    for i in range(6):
        legacy.execute(f"INSERT INTO {q(t1)} VALUES (?, ?, ?)", (f"k{i}", i, f"v{i}"))
        legacy.execute(f"INSERT INTO {q(t2)} VALUES (?, ?)", (f"k{i}", i))
    cfg = config_from_dict(
        {
            "state_dir": "state",
            "targets": {"core": "out/core.db"},
            "sources": [{"name": "s_{stem}", "path": "legacy/*.db"}],
            "rules": [{"table": "*", "target": "core", "as": "{source}.{table}"}]
            # a rule naming t2 itself (a literal pattern: no glob characters) wins over `*`
            + (
                []
                if any(c in t2 for c in "*?[")
                else [{"table": t2, "target": "core", "as": "[{table}]"}]
            ),
        },
        root,
    )
    p = Pipeline(cfg, resolve_plan(cfg))
    try:
        p.sync()
        assert p.diffs() == []
        legacy.execute(f"UPDATE {q(t1)} SET {q(k1)} = 'moved' WHERE {q(k2)} = 1")
        legacy.execute(f"DELETE FROM {q(t1)} WHERE {q(k2)} = 2")
        legacy.execute(f"UPDATE {q(t2)} SET {q(f2)} = NULL WHERE {q(f1)} = 'k3'")
        legacy.execute(f"ALTER TABLE {q(t2)} ADD COLUMN {q(added)} TEXT")
        legacy.execute(f"INSERT INTO {q(t2)} VALUES ('new', 9, 'with the new column')")
        p.sync()
        assert p.diffs() == []
    finally:
        p.close()
        legacy.close()


def test_a_trigger_name_read_from_a_legacy_file_is_quoted(tmp_path: Path) -> None:
    """`cdc uninstall` drops leftover fence triggers by the name it reads from the file: a
    name holding SQL must stay a name (it used to run: the bots' table was dropped)."""
    db = make_db(
        tmp_path / "legacy" / "a.db",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v);"
        "INSERT INTO t VALUES (1, 'precious');"
        'CREATE TRIGGER "_cdc_fence; DROP TABLE t" AFTER INSERT ON t BEGIN SELECT 1; END;',
    )
    write_config(
        tmp_path,
        'state_dir = "state"\n[targets]\ncore = "out/core.db"\n'
        '[[sources]]\nname = "a"\npath = "legacy/a.db"\n[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    _ok(cdc_cmd("install", cwd=tmp_path))
    _ok(cdc_cmd("uninstall", cwd=tmp_path))
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT v FROM t").fetchall() == [("precious",)]


def test_a_declared_type_added_mid_run_stays_a_type(tmp_path: Path) -> None:
    """PRAGMA table_info returns a declared type unquoted (`x "INT; DROP TABLE victim"`
    gives `INT; DROP TABLE victim`): pasted into the target's ALTER TABLE, apsw ran the
    second statement and the target lost a table."""
    (tmp_path / "legacy").mkdir()
    db = tmp_path / "legacy" / "a.db"
    legacy = apsw.Connection(str(db))
    legacy.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE victim(id INTEGER PRIMARY KEY);"
        "INSERT INTO t VALUES (1, 'a'); INSERT INTO victim VALUES (1);"
    )
    cfg = config_from_dict(
        {
            "state_dir": "state",
            "targets": {"core": "out/core.db"},
            "sources": [{"name": "a", "path": str(db)}],
            "rules": [{"table": "*", "target": "core"}],
        },
        tmp_path,
    )
    p = Pipeline(cfg, resolve_plan(cfg))
    try:
        p.sync()
        legacy.execute('ALTER TABLE t ADD COLUMN x "INT; DROP TABLE victim"')
        legacy.execute("INSERT INTO t VALUES (2, 'b', 3)")
        p.sync()
        target = apsw.Connection(cfg.targets["core"], flags=apsw.SQLITE_OPEN_READONLY)
        tables = {r[0] for r in target.execute("SELECT name FROM sqlite_master")}
        target.close()
        assert "victim" in tables, "a legacy column's type ran as SQL in the target"
        assert p.diffs() == []
    finally:
        p.close()
        legacy.close()


# -- the static audit ------------------------------------------------------------------------


class SqlAudit:
    """Which values interpolated into SQL f-strings may carry a name that is not quoted.

    An f-string is SQL when its text starts like a statement or a clause (`SELECT`, `FROM`,
    `WHERE`, `AND`...) or holds one (`INSERT INTO`, `CREATE TABLE`...). Each `{value}` in
    it must be safe: a literal; an UPPER_CASE constant; a call of a quoting helper (`q`,
    `lit`, `quote`, `int`, `len`, `rowid_alias`...); an int/float/bool parameter; or built
    only from safe parts (`", ".join`, `+`, comprehensions, conditionals, nested
    f-strings, tuples). A local variable is safe when every assignment, `append` and loop
    binding of it is; `self.x` when every `self.x = ...` of the class is; a function's
    result when every `return` is; a parameter when every call of the function (in the
    module for a private one, anywhere for a public one) passes a safe value. A public
    function nothing calls yet passes no name anywhere; an uncalled private or nested one
    may be a callback, so its parameters are unknown. It is flow-insensitive: a variable
    once bound to a raw value stays suspect even if it is quoted later (use a new name).
    """

    SQL = re.compile(
        r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|WITH|REPLACE|BEGIN"
        r"|FROM|WHERE|JOIN|LEFT JOIN|SET|VALUES|ON CONFLICT|ORDER BY|GROUP BY|AND|OR)\b"
        r"|\b(SELECT .* FROM|INSERT (OR \w+ )?INTO|DELETE FROM|UPDATE .* SET"
        r"|CREATE (UNIQUE |VIRTUAL |TEMP )?(TABLE|INDEX|TRIGGER|VIEW)|DROP (TABLE|INDEX|TRIGGER"
        r"|VIEW)|ALTER TABLE|PRAGMA \w)"
    )
    QUOTERS = {"q", "lit", "quote", "int", "len", "float", "bool", "range", "rowid_alias"}
    PURE = {"list", "tuple", "sorted", "reversed", "zip", "enumerate", "str", "min", "max"}
    STR_METHODS = {"join", "split", "rsplit", "strip", "lower", "upper", "replace", "format"}
    SAFE_ANNOTATIONS = {"int", "float", "bool"}
    SAFE_ATTRS = {"rowid_alias"}  # AppliedShape.rowid_alias = TableInfo.rowid_alias()
    COMPS = (ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp)
    FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)

    def __init__(self, sources: dict[str, str]) -> None:
        self.modules = [_Module(self, name, text) for name, text in sources.items()]
        self.calls: dict[str, list] = {}
        for m in self.modules:
            for n in ast.walk(m.tree):
                if isinstance(n, ast.Call):
                    name = _callee(n)
                    if name:
                        self.calls.setdefault(name, []).append((m, n))

    def findings(self) -> list[str]:
        out = []
        for m in self.modules:
            for node in ast.walk(m.tree):
                if not isinstance(node, ast.JoinedStr):
                    continue
                text = "".join(
                    v.value if isinstance(v, ast.Constant) else " x " for v in node.values
                )
                if not self.SQL.search(text):
                    continue
                for v in node.values:
                    if isinstance(v, ast.FormattedValue) and not m.safe(v.value, node):
                        out.append(f"{m.name}: {{{ast.unparse(v.value)}}}")
        return out


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _is_self_attr(e: ast.AST) -> bool:
    return isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self"


class _Module:
    def __init__(self, audit: SqlAudit, name: str, text: str) -> None:
        self.audit, self.name = audit, name
        self.tree = ast.parse(text)
        self.parents = {c: p for p in ast.walk(self.tree) for c in ast.iter_child_nodes(p)}
        self.funcs: dict[str, list] = {}
        for n in ast.walk(self.tree):
            if isinstance(n, SqlAudit.FUNCS):
                self.funcs.setdefault(n.name, []).append(n)
        self.consts = {
            t.id
            for n in self.tree.body
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        self._bindings: dict = {}
        self._scopes: dict = {}
        self._memo: dict = {}
        self._busy: set = set()

    # -- scopes and bindings
    def scopes(self, node: ast.AST) -> list:
        if node not in self._scopes:
            out, p = [], self.parents.get(node)
            while p is not None:
                if isinstance(p, SqlAudit.FUNCS):
                    out.append(p)
                p = self.parents.get(p)
            self._scopes[node] = out[::-1]
        return self._scopes[node]

    def class_of(self, fn: ast.AST) -> ast.ClassDef | None:
        p = self.parents.get(fn)
        while p is not None and not isinstance(p, ast.ClassDef):
            p = self.parents.get(p)
        return p

    def bindings(self, fn) -> dict:  # noqa: ANN001
        if fn in self._bindings:
            return self._bindings[fn]
        out: dict[str, list] = {}
        a = fn.args
        for arg in a.posonlyargs + a.args + a.kwonlyargs:
            out.setdefault(arg.arg, []).append(("param", fn, arg))
        for v in (a.vararg, a.kwarg):
            if v:
                out.setdefault(v.arg, []).append(None)

        def bind(t, v) -> None:  # noqa: ANN001
            if isinstance(t, ast.Name):
                out.setdefault(t.id, []).append(v)
            elif isinstance(t, ast.Starred):
                bind(t.value, v)
            elif isinstance(t, ast.Tuple | ast.List):
                if isinstance(v, ast.Tuple | ast.List) and len(v.elts) == len(t.elts):
                    for e, x in zip(t.elts, v.elts, strict=True):
                        bind(e, x)
                elif isinstance(v, tuple) and v[0] == "elem":
                    it = v[1]
                    if _zip_of(it, len(t.elts)):
                        for e, x in zip(t.elts, it.args, strict=True):
                            bind(e, ("elem", x))
                    else:
                        for e in t.elts:
                            bind(e, v)
                else:
                    for i, e in enumerate(t.elts):
                        bind(e, ("item", v, i))

        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    bind(t, node.value)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None:
                bind(node.target, node.value)
            elif isinstance(node, ast.For):
                bind(node.target, ("elem", node.iter))
            elif isinstance(node, ast.NamedExpr):
                bind(node.target, node.value)
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                bind(node.optional_vars, None)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("append", "extend", "insert")
                and isinstance(node.func.value, ast.Name)
                and node.args
            ):
                out.setdefault(node.func.value.id, []).append(node.args[-1])
        self._bindings[fn] = out
        return out

    def self_values(self, e: ast.Attribute) -> list:
        cls = next((self.class_of(f) for f in self.scopes(e) if self.class_of(f)), None)
        if cls is None:
            return []
        out = []
        for n in ast.walk(cls):
            for t in n.targets if isinstance(n, ast.Assign) else []:
                if _is_self_attr(t) and t.attr == e.attr:
                    out.append(n.value)
                elif isinstance(t, ast.Tuple):  # self.a, self.b = x, y
                    for i, x in enumerate(t.elts):
                        if _is_self_attr(x) and x.attr == e.attr:
                            v = n.value
                            same = isinstance(v, ast.Tuple) and len(v.elts) == len(t.elts)
                            out.append(v.elts[i] if same else ("item", v, i))
        return out

    # -- safety
    def safe(self, e, ctx) -> bool:  # noqa: ANN001
        key = (id(e), id(ctx))
        if key in self._memo:
            return self._memo[key]
        if key in self._busy:
            return True  # a cycle: the other bindings decide
        self._busy.add(key)
        try:
            r = self._safe(e, ctx)
        finally:
            self._busy.discard(key)
        self._memo[key] = r
        return r

    def _safe(self, e, ctx) -> bool:  # noqa: ANN001, C901, PLR0911, PLR0912
        A = SqlAudit  # noqa: N806
        if e is None:
            return False
        if isinstance(e, tuple):
            if e[0] == "elem":
                return self.safe(e[1], ctx)
            if e[0] == "item":
                return self.item_safe(e[1], e[2], ctx)
            return self.param_safe(e[1], e[2])
        if isinstance(e, ast.Constant):
            return True
        if isinstance(e, ast.Name):
            if e.id.lstrip("_").isupper() or e.id in self.consts:
                return True
            p = self.parents.get(e)
            while p is not None and not isinstance(p, A.FUNCS):
                if isinstance(p, A.COMPS):
                    for g in p.generators:
                        if e.id in {n.id for n in ast.walk(g.target) if isinstance(n, ast.Name)}:
                            if isinstance(g.target, ast.Tuple) and _zip_of(
                                g.iter, len(g.target.elts)
                            ):
                                for tt, arg in zip(g.target.elts, g.iter.args, strict=True):
                                    if isinstance(tt, ast.Name) and tt.id == e.id:
                                        return self.safe(arg, arg)
                            return self.safe(g.iter, g.iter)
                p = self.parents.get(p)
            for fn in reversed(self.scopes(e)):
                b = self.bindings(fn)
                if e.id in b:
                    return all(self.safe(v, v if isinstance(v, ast.AST) else e) for v in b[e.id])
            return False
        if isinstance(e, ast.Attribute):
            if e.attr.lstrip("_").isupper() or e.attr in A.SAFE_ATTRS:
                return True
            vals = self.self_values(e) if _is_self_attr(e) else []
            return bool(vals) and all(self.safe(v, v) for v in vals)
        if isinstance(e, ast.Call):
            f, args = e.func, [*e.args, *(k.value for k in e.keywords)]
            name = _callee(e)
            if name in A.QUOTERS:
                return True
            if isinstance(f, ast.Name) and name in A.PURE:
                return all(self.safe(a, e) for a in args)
            if isinstance(f, ast.Attribute) and name in A.STR_METHODS:
                return self.safe(f.value, e) and all(self.safe(a, e) for a in args)
            if (isinstance(f, ast.Name) or _is_self_attr(f)) and name in self.funcs:
                return all(self.returns_safe(fn) for fn in self.funcs[name])
            return False
        if isinstance(e, A.COMPS):
            return self.safe(e.elt, e)
        if isinstance(e, ast.List | ast.Tuple | ast.Set):
            return all(self.safe(x, e) for x in e.elts)
        if isinstance(e, ast.BinOp):
            return self.safe(e.left, e) and self.safe(e.right, e)
        if isinstance(e, ast.IfExp):
            return self.safe(e.body, e) and self.safe(e.orelse, e)
        if isinstance(e, ast.BoolOp):
            return all(self.safe(v, e) for v in e.values)
        if isinstance(e, ast.JoinedStr):
            return all(self.safe(v.value, e) for v in e.values if isinstance(v, ast.FormattedValue))
        if isinstance(e, ast.Subscript | ast.Starred):
            return self.safe(e.value, e)
        return False

    def item_safe(self, v, i: int, ctx) -> bool:  # noqa: ANN001
        """The i-th element of a tuple-valued expression."""
        if isinstance(v, ast.Tuple | ast.List):
            return i < len(v.elts) and self.safe(v.elts[i], v)
        if isinstance(v, ast.IfExp):
            return self.item_safe(v.body, i, v) and self.item_safe(v.orelse, i, v)
        if _is_self_attr(v):
            vals = self.self_values(v)
            return bool(vals) and all(self.item_safe(x, i, x) for x in vals)
        if isinstance(v, ast.Call) and _callee(v) in self.funcs:
            rets = [n.value for fn in self.funcs[_callee(v)] for n in ast.walk(fn)
                    if isinstance(n, ast.Return)]  # fmt: skip
            return bool(rets) and all(r is not None and self.item_safe(r, i, r) for r in rets)
        return self.safe(v, ctx)

    def returns_safe(self, fn) -> bool:  # noqa: ANN001
        rets = [n.value for n in ast.walk(fn) if isinstance(n, ast.Return)]
        return bool(rets) and all(r is not None and self.safe(r, r) for r in rets)

    def param_safe(self, fn, arg: ast.arg) -> bool:  # noqa: ANN001
        if arg.annotation is not None and ast.unparse(arg.annotation) in SqlAudit.SAFE_ANNOTATIONS:
            return True
        private = fn.name.startswith("_") or any(
            isinstance(p, SqlAudit.FUNCS) for p in self.scopes(fn)
        )
        calls = [(m, c) for m, c in self.audit.calls.get(fn.name, []) if not private or m is self]
        if not calls:  # a public function nothing calls yet carries no name anywhere; a
            return not private  # private or nested one may be a callback: unknown callers
        positional = [x.arg for x in fn.args.posonlyargs + fn.args.args]
        if positional[:1] in (["self"], ["cls"]):
            positional = positional[1:]
        for m, c in calls:
            val = None
            if arg.arg in positional and positional.index(arg.arg) < len(c.args):
                val = c.args[positional.index(arg.arg)]
            val = next((k.value for k in c.keywords if k.arg == arg.arg), val)
            if val is not None and not m.safe(val, c):
                return False
        return True


def _zip_of(it: ast.AST, n: int) -> bool:
    return (
        isinstance(it, ast.Call)
        and isinstance(it.func, ast.Name)
        and it.func.id == "zip"
        and len(it.args) == n
    )


# Interpolations reviewed by hand: what they hold, and why it is not a name from a file.
REVIEWED = {
    "cdc/pool/opening.py: {level}": "checked against OFF/NORMAL/FULL/EXTRA just before",
    "cdc/demo/generator.py: {spec.journal}": "the demo's own journal mode constants",
    "cdc/demo/cutover_phase.py: {target_table}": "the demo's own fixed table name",
    "replicator/target.py: {decl}": "q(type), then DEFAULT with the source's own expression "
    "text (SQLite parsed it as one expression: it cannot end the statement)",
    "replicator/target.py: {c.default}": "a merged member's DEFAULT, the source's own expression "
    "text as above, evaluated once in a temp table of the member's declared type",
    "cdc/capture/triggers.py: {', '.join(terms)}": "a unique index's own terms as SQLite parsed them "
    "(sqlident.index_terms splits them at top-level commas): each one expression",
    "cdc/capture/triggers.py: {join}": "capture.same() over q()-quoted columns and k<n> constants",
    "cdc/capture/triggers.py: {probe}": "q()-quoted columns and collations, or an index's own terms",
    "cdc/capture/triggers.py: {body}": "built from {probe} and {found} above",
    "cdc/capture/snapshot.py: {' AND '.join(conds)}": "q()-quoted keys compared with placeholders "
    "(exact_text.marks: '?' or 'CAST(? AS TEXT)')",
    "cdc/capture/snapshot.py: {where}": "q()-quoted keys IS placeholders (exact_text.mark)",
    "cdc/history/rows.py: {exact_text.marks(values)}": "placeholders only",
    "replicator/apply.py: {' AND '.join(conds)}": "capture.same() over q()-quoted keys and "
    "numbered placeholders",
    "replicator/target.py: {' AND '.join(conds)}": "q()-quoted keys IS placeholders",
    "verifier/sides.py: {' AND '.join(conds)}": "q()-quoted keys against placeholders, and "
    "the NULL-key tests built from q()-quoted keys",
    "verifier/sides.py: {tail}": "FROM/WHERE built from q()-quoted names and placeholders",
    "verifier/sides.py: {where}": "built from the conds above",
    "cdc/cutover/backflow.py: {where}": "q()-quoted keys IS placeholders (exact_text.mark)",
}
KNOWN_RAW: set[str] = set()  # raw and wrong: none left


def _product_sources() -> dict[str, str]:
    out = {}
    for top in ("cdc", "replicator", "checkpoints", "verifier"):
        for p in sorted((REPO / top).rglob("*.py")):
            out[str(p.relative_to(REPO))] = p.read_text(encoding="utf-8")
    return out


def test_the_audit_finds_raw_names_and_only_them() -> None:
    """The audit itself, on code written to fool it both ways."""
    code = textwrap.dedent(
        """
        TABLE = "_cdc_x"
        def q(n): ...
        def public(conn, name: str, n: int):
            conn.execute(f"SELECT * FROM {name}")                    # raw: a parameter
            conn.execute(f"SELECT {n} FROM {TABLE}")                 # safe: int, constant
            cols = ", ".join(q(c) for c in name)
            conn.execute(f"SELECT {cols} FROM {q(name)}")            # safe: quoted
            cols2 = [q(c) for c in name]
            cols2.append(name)
            conn.execute(f"SELECT {', '.join(cols2)} FROM t")        # raw: appended
            for (trig,) in conn.execute("SELECT name FROM sqlite_master"):
                conn.execute(f"DROP TRIGGER {trig}")                 # raw: read from a file
            where, args = (f"{q(name)} = ?", [name])
            conn.execute(f"DELETE FROM t WHERE {where}", args)       # safe: item 0
            a, b = zip(*[(q(x), x) for x in name])
            conn.execute(f"UPDATE t SET {b} = 1")                    # raw (conservative)
            return _helper("NEW") + _helper(name)
        def _helper(row):
            return f"SELECT {row}.x FROM t"                          # raw: one caller passes name
        def _only_constants(row):
            return f"SELECT {row}.x FROM t"                          # safe: callers pass literals
        class Reader:
            def __init__(self, conn, names):
                self.conn = conn
                self.cols, self.raw = [q(n) for n in names], names
            def read(self):
                self.conn.execute(f"SELECT {', '.join(self.cols)} FROM t")  # safe
                self.conn.execute(f"SELECT {', '.join(self.raw)} FROM t")   # raw
        def user():
            _only_constants("OLD"); _only_constants(row="NEW")
        def driver(conn):
            for row in conn.execute("SELECT name FROM sqlite_master"):
                public(conn, row[0], 1)                             # public's `name`: raw
        def not_called_yet(conn, expr):
            conn.execute(f"SELECT {expr} FROM t")                    # safe: no caller at all
            def callback(col):
                conn.execute(f"SELECT {col} FROM t")                 # raw: called indirectly
            return callback
        print(f"table {TABLE} not found: {object()}")               # not SQL
        """
    )
    found = SqlAudit({"m.py": code}).findings()
    assert sorted(found) == sorted(
        [
            "m.py: {name}",
            "m.py: {', '.join(cols2)}",
            "m.py: {trig}",
            "m.py: {b}",
            "m.py: {row}",
            "m.py: {col}",
            "m.py: {', '.join(self.raw)}",
        ]
    )


def test_every_name_in_sql_is_quoted() -> None:
    """No SQL f-string in the product interpolates a value that may be a name without
    quoting it, except the reviewed and the known-wrong ones listed above."""
    found = SqlAudit(_product_sources()).findings()
    unexpected = sorted({f for f in found if f not in REVIEWED and f not in KNOWN_RAW})
    assert not unexpected, (
        "SQL built from a name that is not quoted with cdc.sqlident.q() (or not provably "
        "so; if it is safe, add it to REVIEWED with the reason):\n  " + "\n  ".join(unexpected)
    )


def test_the_audit_sees_the_sql() -> None:
    """A sanity bound: the audit reads every SQL f-string of the product (hundreds), so an
    empty result is not the audit having missed them."""
    audit = SqlAudit(_product_sources())
    n = 0
    for m in audit.modules:
        for node in ast.walk(m.tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(
                    v.value if isinstance(v, ast.Constant) else " x " for v in node.values
                )
                n += bool(SqlAudit.SQL.search(text))
    assert n > 100, n


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
