"""Bad input, through the real CLI: each mistake is one `error:` line (and maybe a `hint:`)
naming the file and the key or table, with its class's exit code and never a traceback;
or, where it is not a mistake (an empty table, an odd name), it simply works.

`tests/planning/test_config_plan.py` covers the config checks one by one through `load_config` and
`resolve_plan`; here every command an operator runs meets them. Read-only directories are
made with a `ro` tmpfs or bind mount (we run as root, and chmod does not stop root).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cdc.errors import CdcError, ConfigError, PlanError, SourceError, TargetError
from tests.conftest import cdc_cmd, make_db, wait_until, write_config

# Every command that reads the config and (but `status` and `log check`) the legacy files.
COMMANDS = [("check",), ("install",), ("run",), ("status",), ("verify",), ("log", "check")]

GOOD = """\
state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "a"
path = "legacy/a.db"
[[rules]]
table = "*"
target = "core"
"""


def one_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The process failed with `code` and said so in one `error:` line (plus an optional
    `hint:` line) holding every needle; no traceback anywhere. Returns the error line."""
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert r.returncode == code, f"exit {r.returncode}, wanted {code}: {out}"
    lines = r.stderr.splitlines()
    assert lines and lines[0].startswith("error: "), r.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), r.stderr
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def run_all(cmds: list[tuple[str, ...]], cwd: Path, *extra: str) -> list:
    """Run several short commands at once (each is a fresh interpreter: ~0.4 s)."""
    with ThreadPoolExecutor(len(cmds)) as ex:
        return list(ex.map(lambda c: cdc_cmd(*c, *extra, cwd=cwd, timeout=60), cmds))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_db(
        tmp_path / "legacy" / "a.db",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x');",
    )
    return tmp_path


# -- the config file -------------------------------------------------------------------------


BAD_CONFIGS = {
    # name: (text or bytes, needles in the error line after the file name)
    "invalid TOML": (GOOD.replace("[targets]", "[targets"), ["invalid TOML", "line 2"]),
    "not UTF-8": (b"state_dir = '\xff'\n", ["invalid TOML", "not UTF-8"]),
    "unknown key in a section": (GOOD + "[daemon]\npoll_intervall = 1\n", ["`daemon.poll_intervall`: unknown key"]),
    "unknown key in a source": (GOOD.replace('path = "legacy', 'pth = "legacy'), ["`sources[0].pth`: unknown key"]),
    "wrong type": (GOOD + '[daemon]\npoll_interval = "fast"\n', ["`daemon.poll_interval`: expected `float`, got `str`"]),
    "target path not a string": (GOOD.replace('core = "out/core.db"', "core = 5"), ["`targets.core`: expected `str`"]),
    "invalid value": (GOOD + "[verify]\nchunk_rows = 0\n", ["`verify.chunk_rows` must be positive"]),
    "unknown retention": (GOOD + '[log]\nretention = "forever"\n', ["`log.retention` 'forever'"]),
    "bad capture": (GOOD.replace('path = "legacy/a.db"', 'path = "legacy/a.db"\ncapture = "magic"'), ["`sources[0]`.capture 'magic'"]),
}  # fmt: skip
EVERY_COMMAND = {"invalid TOML", "unknown key in a source", "wrong type"}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_is_one_line_naming_file_and_key(root: Path, case: str) -> None:
    text, needles = BAD_CONFIGS[case]
    cfg = root / "cdc.toml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    cmds = COMMANDS if case in EVERY_COMMAND else [("check",)]
    for cmd, r in zip(cmds, run_all(cmds, root), strict=True):
        line = one_error(r, ConfigError.exit_code, "cdc.toml: ", *needles)
        assert " - at `$" not in line, f"{cmd}: msgspec's raw wording: {line}"
    assert not (root / "state").exists(), "a refused config must not create the state dir"
    assert not (root / "out").exists()


def test_a_missing_config_is_named_by_every_command(root: Path) -> None:
    for cmd, r in zip(COMMANDS, run_all(COMMANDS, root, "-c", "nope.toml"), strict=True):
        one_error(r, ConfigError.exit_code, "nope.toml: config file not found")
        assert r.stderr.splitlines()[1].startswith("hint: "), cmd


def test_a_config_that_is_a_folder_is_refused(root: Path) -> None:
    (root / "dir.toml").mkdir()
    r = cdc_cmd("check", "-c", "dir.toml", cwd=root)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "dir.toml" in r.stderr and "is a directory" in r.stderr  # click's usage error


# -- the legacy files ------------------------------------------------------------------------


def _corrupt_pages(path: Path, table: str) -> None:
    """Overwrite every b-tree page of `table` (sqlite3's dbstat says which) with garbage and
    bump the header's change counter, so a connection that cached the pages rereads them."""
    with contextlib.closing(sqlite3.connect(path)) as c:
        size = c.execute("PRAGMA page_size").fetchone()[0]
        pages = [r[0] for r in c.execute("SELECT pageno FROM dbstat WHERE name = ?", (table,))]
    assert pages
    with open(path, "r+b") as f:
        for p in pages:
            f.seek((p - 1) * size)
            f.write(b"\xa5" * size)
        f.seek(24)
        counter = int.from_bytes(f.read(4), "big")
        f.seek(24)
        f.write((counter + 1).to_bytes(4, "big"))


def _bad_source(kind: str, path: Path) -> None:
    good = path.read_bytes()
    if kind == "missing":
        path.unlink()
    elif kind == "text file":
        path.write_text("id,name\n1,alice\n" * 50)
    elif kind == "truncated header":
        path.write_bytes(good[:60])
    elif kind == "garbage after the header":
        path.write_bytes(good[:100] + b"\x5a" * (len(good) - 100))
    elif kind == "a folder":
        path.unlink()
        path.mkdir()
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("missing", "legacy database not found"),
        ("text file", "not a SQLite database"),
        ("truncated header", "database is corrupt"),
        ("garbage after the header", "database is corrupt"),
        ("a folder", "is a folder, not a database file"),
    ],
)
def test_a_bad_legacy_file_is_named_by_every_command(root: Path, kind: str, needle: str) -> None:
    write_config(root, GOOD)
    db = root / "legacy" / "a.db"
    _bad_source(kind, db)
    before = sorted(p.name for p in db.parent.iterdir())
    cmds = [("check",), ("install",), ("run",), ("verify",)]
    for _cmd, r in zip(cmds, run_all(cmds, root), strict=True):
        one_error(r, PlanError.exit_code, "cdc.toml: 1 problem(s)", "source 'a'", str(db), needle)
    r = cdc_cmd("status", "--json", cwd=root)  # status reports it and keeps working
    assert r.returncode == 0, r.stderr
    problems = json.loads(r.stdout)["problems"]
    assert len(problems) == 1 and str(db) in problems[0] and needle in problems[0]
    assert sorted(p.name for p in db.parent.iterdir()) == before, "nothing created next to it"


def test_an_empty_file_and_empty_tables_replicate_end_to_end(root: Path, daemons) -> None:
    """A 0-byte file is a valid empty database (nothing to capture); a table with no rows is
    copied, verified equal, and then follows its first rows."""
    (root / "legacy" / "empty.db").write_bytes(b"")
    make_db(
        root / "legacy" / "b.db",
        "CREATE TABLE vacant(id INTEGER PRIMARY KEY, v);"
        "CREATE TABLE nokey(v);"
        "CREATE TABLE wr(k TEXT PRIMARY KEY, v) WITHOUT ROWID;",
    )
    cfg = write_config(
        root,
        GOOD.replace('path = "legacy/a.db"', 'path = "legacy/*.db"').replace(
            'name = "a"', 'name = "src_{stem}"'
        )
        + "[daemon]\npoll_interval = 0.1\n[verify]\ncycle_pause = 0.5\n"
        + '[[rules]]\nsource = "src_b"\ntable = "*"\ntarget = "core"\nas = "b_{table}"\n',
    )
    r = cdc_cmd("check", cwd=root)
    assert r.returncode == 0 and "3 sources, 4 tables mapped" in r.stdout, r.stdout + r.stderr
    assert cdc_cmd("install", cwd=root).returncode == 0
    d = daemons(cfg)
    d.wait_synced()
    r = cdc_cmd("verify", "--rate", "0", cwd=root)
    assert r.returncode == 0 and "4 equal" in r.stdout, r.stdout + r.stderr
    with contextlib.closing(sqlite3.connect(root / "legacy" / "b.db", isolation_level=None)) as c:
        c.execute("INSERT INTO vacant VALUES (1, 'first')")
        c.execute("INSERT INTO nokey VALUES ('x')")
        c.execute("INSERT INTO wr VALUES ('k', 1)")
    d.wait_synced()
    r = cdc_cmd("verify", "--rate", "0", cwd=root)
    assert r.returncode == 0 and "4 equal" in r.stdout, r.stdout + r.stderr
    assert (root / "legacy" / "empty.db").stat().st_size == 0, "an empty source stays empty"


def test_corruption_found_mid_run_is_that_sources_error_only(root: Path, daemons) -> None:
    """A page of a captured table goes bad while the daemon runs: the source shows the
    database's own error in `cdc status`, the other source keeps replicating, and the
    daemon neither exits nor restarts."""
    a = make_db(
        root / "legacy" / "big.db",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
        "INSERT INTO t SELECT i, printf('%.500c', 'x') FROM n;",
    )
    b = root / "legacy" / "a.db"
    cfg = write_config(
        root,
        GOOD.replace(
            "[[rules]]", '[[sources]]\nname = "big"\npath = "legacy/big.db"\n[[rules]]'
        ).replace('target = "core"', 'target = "core"\nas = "{source}_{table}"')
        + "[daemon]\npoll_interval = 0.1\n[verify]\ncycle_pause = 0.2\n",
    )
    assert cdc_cmd("install", cwd=root).returncode == 0
    d = daemons(cfg)
    d.wait_synced()
    # a change is captured while harvest is paused, then the table's pages go bad: the
    # harvest must read the row's image from them
    assert cdc_cmd("pause", "big", cwd=root).returncode == 0
    wait_until(lambda: "harvest paused: big" in d.output(), what="the daemon to pause big")
    time.sleep(0.5)  # a harvest pass that had begun ends
    with contextlib.closing(sqlite3.connect(a, isolation_level=None)) as c:
        c.execute("UPDATE t SET v = 'changed' WHERE id = 150")
    _corrupt_pages(a, "t")
    assert cdc_cmd("resume", "big", cwd=root).returncode == 0

    def big_error():
        st = d.status()
        src = {s["name"]: s for s in st["sources"]}
        return src["big"]["last_error"] if st["daemon"]["state"] == "running" else None

    err = wait_until(big_error, 30, 0.2, "the corrupt source's error in status")
    assert "malformed" in err or "corrupt" in err, err
    assert "no transaction is active" not in err, "the cleanup's error hid the real one"
    with contextlib.closing(sqlite3.connect(b, isolation_level=None)) as c:
        c.execute("INSERT INTO t VALUES (2, 'still flowing')")

    def a_synced():
        st = d.status()
        src = {s["name"]: s for s in st["sources"]}
        return src["a"]["backlog_events"] == 0 and src["a"]["applied"] >= 1

    wait_until(a_synced, 30, 0.2, "the healthy source to keep replicating")
    pid = d.proc.pid
    time.sleep(1.5)
    st = d.status()
    assert d.proc.poll() is None and st["daemon"]["pid"] == pid, d.output()
    assert st["daemon"]["state"] == "running" and st["daemon"]["error"] is None
    assert "malformed" in {s["name"]: s for s in st["sources"]}["big"]["last_error"]
    assert d.stop() == 0, d.output()


# -- read-only places ------------------------------------------------------------------------


@contextlib.contextmanager
def read_only_mount(path: Path, bind: bool):
    """`path` on a read-only file system: an empty tmpfs, or (bind) its own content."""
    path.mkdir(parents=True, exist_ok=True)
    cmds = (
        [["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]]
        if bind
        else [["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)]]
    )
    mounted = False
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            if mounted:
                subprocess.run(["umount", str(path)], check=False)
            pytest.skip(f"cannot make a read-only mount here: {' '.join(cmd)}: {r.stderr.strip()}")
        mounted = True
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_state_dir_on_a_read_only_file_system(root: Path) -> None:
    write_config(root, GOOD.replace('state_dir = "state"', 'state_dir = "ro/state"'))
    with read_only_mount(root / "ro", bind=False):
        r = cdc_cmd("install", cwd=root)  # install writes to the legacy files only
        assert r.returncode == 0, r.stderr
        line = one_error(cdc_cmd("run", cwd=root), CdcError.exit_code, str(root / "ro" / "state"))
        assert "Read-only file system" in line and "`state_dir` in" in line
        line = one_error(cdc_cmd("pause", cwd=root), CdcError.exit_code, "ro/state/control")
        assert "Read-only file system" in line
        r = cdc_cmd("status", cwd=root)  # reading works, and says the daemon is down
        assert r.returncode == 0 and "daemon: not started" in r.stdout, r.stderr
        line = one_error(cdc_cmd("schema", "--out", "ro/schema", cwd=root), 1, "ro/schema")
        assert "Read-only file system" in line
        write_config(root, GOOD.replace('"out/core.db"', '"ro/out/core.db"'))  # a target
        line = one_error(cdc_cmd("run", cwd=root), TargetError.exit_code, "ro/out/core.db")
        assert "cannot create target database: Read-only file system" in line


def test_a_legacy_file_on_a_read_only_mount(root: Path) -> None:
    """Reading is enough for `check`; `install` and `run` must write to the file (triggers,
    capture rows, the journal next to it), so they refuse at once, naming it."""
    write_config(root, GOOD)
    db = root / "legacy" / "a.db"
    with read_only_mount(root / "legacy", bind=True):
        assert cdc_cmd("check", cwd=root).returncode == 0
        for cmd in (("install",), ("run",)):
            line = one_error(cdc_cmd(*cmd, cwd=root), SourceError.exit_code, f"{db}: read-only")
            assert cmd and "capture cannot be installed" in line
        r = cdc_cmd("uninstall", cwd=root)
        assert "Traceback" not in r.stderr
    assert cdc_cmd("install", cwd=root).returncode == 0, "writable again: it installs"


# -- the mapping -----------------------------------------------------------------------------


def test_mapping_mistakes_name_the_rule_and_the_glob(root: Path) -> None:
    cases = {
        "two rules": (
            GOOD + '[[rules]]\nsource = "*"\ntable = "*"\ntarget = "core"\nas = "x_{table}"\n',
            ["table 't' of source 'a' is matched by rules[0], rules[1] equally"],
        ),
        "glob matches nothing": (
            GOOD.replace('path = "legacy/a.db"', 'path = "legacy/nothing-*.db"').replace(
                'name = "a"', 'name = "b_{stem}"'
            ),
            ["`sources[0].path` glob", "nothing-*.db' matches no file"],
        ),
    }
    for text, needles in cases.values():
        write_config(root, text)
        for cmd in (("check",), ("install",)):
            one_error(
                cdc_cmd(*cmd, cwd=root), PlanError.exit_code, "cdc.toml: 1 problem(s)", *needles
            )


def test_several_problems_are_listed_under_one_error_line(root: Path) -> None:
    make_db(root / "legacy" / "b.db", "CREATE TABLE u(id INTEGER PRIMARY KEY);")
    write_config(
        root,
        GOOD.replace("[[rules]]", '[[sources]]\nname = "b"\npath = "legacy/b.db"\n'
                     '[[sources]]\nname = "gone"\npath = "legacy/gone.db"\n[[rules]]')
        .replace('table = "*"', 'source = "a"\ntable = "*"'),
    )  # fmt: skip
    r = cdc_cmd("check", cwd=root)
    assert r.returncode == PlanError.exit_code and "Traceback" not in r.stderr
    head, *items = r.stderr.splitlines()
    assert head.startswith("error: ") and "2 problem(s)" in head
    assert sorted(i[:4] for i in items) == ["  - ", "  - "]
    assert any("gone.db: legacy database not found" in i for i in items)
    assert any("table 'u' of source 'b'" in i and "matched by no rule" in i for i in items)


# -- odd identifiers -------------------------------------------------------------------------

ODD_TABLES = [
    'quote"d',
    "it's",
    "sp ace",
    "brack]et",
    "back`tick",
    "ünïcødé 表",
    "select",
    "order",
    "..",
    "../../escape",
    "a/b",
    "100%_sure",
    "x" * 300,
]
ODD_COLUMNS = ['k"ey', "value's", "from", "n/a", "..", "%", "ç" * 200]


def test_odd_identifiers_replicate_end_to_end(tmp_path: Path, daemons) -> None:
    """Tables, columns, source names (from file names) and target tables (`as`) with quotes,
    spaces, unicode, keywords, `..`, `/`, `%` and very long names: installed, replicated,
    verified equal by the real commands."""
    legacy = tmp_path / "legacy"
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    cols = ", ".join(q(c) for c in ODD_COLUMNS[1:])
    ddl = "".join(
        f"CREATE TABLE {q(t)}({q(ODD_COLUMNS[0])} TEXT PRIMARY KEY, {cols});" for t in ODD_TABLES
    )
    rows = "".join(
        f"INSERT INTO {q(t)} VALUES ('k{i}', {', '.join(repr(f'v{j}') for j in range(len(ODD_COLUMNS) - 1))});"
        for i, t in enumerate(ODD_TABLES)
    )  # fmt: skip
    for stem in ("bot 1", "bot's ü", "bot%..x"):
        make_db(legacy / f"{stem}.db", ddl + rows)
    cfg = write_config(
        tmp_path,
        'state_dir = "state"\n[targets]\ncore = "out/core.db"\n'
        '[[sources]]\nname = "s_{stem}"\npath = "legacy/*.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\nas = "{source}/{table}"\n'
        "[daemon]\npoll_interval = 0.1\n",
    )
    r = cdc_cmd("install", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"capturing {len(ODD_TABLES)} tables" in r.stdout
    d = daemons(cfg)
    d.wait_synced()
    for stem in ("bot 1", "bot's ü", "bot%..x"):
        with contextlib.closing(sqlite3.connect(legacy / f"{stem}.db", isolation_level=None)) as c:
            for t in ODD_TABLES:
                c.execute(
                    f"UPDATE {q(t)} SET {q(ODD_COLUMNS[1])} = 'new' WHERE {q(ODD_COLUMNS[0])} LIKE 'k%'"
                )
                c.execute(f"INSERT INTO {q(t)}({q(ODD_COLUMNS[0])}) VALUES ('more')")
            c.execute(f"DELETE FROM {q(ODD_TABLES[0])}")
    d.wait_synced()
    r = cdc_cmd("verify", "--rate", "0", cwd=tmp_path, timeout=120)
    n = 3 * len(ODD_TABLES)
    assert r.returncode == 0 and f"{n} equal" in r.stdout, r.stdout[-3000:] + r.stderr
    # pause and resume by an odd source name: the control file stays in control/
    assert cdc_cmd("pause", "s_bot%..x", cwd=tmp_path).returncode == 0
    assert sorted(os.listdir(tmp_path / "state" / "control")) == ["pause-harvest.s_bot%..x"]
    assert cdc_cmd("resume", "s_bot%..x", cwd=tmp_path).returncode == 0
    assert d.stop() == 0, d.output()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cdc.toml", "legacy", "out", "state", d.log_path.name]
    ), "no table name became a path"


@pytest.mark.parametrize(
    "key,text,needle",
    [
        ("sources[0].name", GOOD.replace('name = "a"', 'name = "a b"'), "`sources[0]`.name 'a b'"),
        ("sources[0].name", GOOD.replace('name = "a"', 'name = "../a"'), "`sources[0]`.name '../a'"),
        ("targets", GOOD.replace("core =", '"co re" =').replace('target = "core"', 'target = "co re"'), "`targets.co re`"),
        ("targets", GOOD.replace("core =", '"ünï" =').replace('target = "core"', 'target = "ünï"'), "`targets.ünï`"),
    ],
)  # fmt: skip
def test_names_the_config_refuses_are_named(root: Path, key: str, text: str, needle: str) -> None:
    """Source and target names become file names (controls, cutover records, reports):
    they are letters, digits, `_ . -`, and anything else is refused with the key."""
    write_config(root, text)
    one_error(cdc_cmd("check", cwd=root), ConfigError.exit_code, needle, "letters, digits")
