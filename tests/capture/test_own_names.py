"""Names at the edges: our objects are known by exact name, a bot's by everything else.

A bot's table called `_cdc_lookalike` or `_CDC_stuff` is user data like any other: mapped,
snapshotted, captured, verified, rebuilt. One whose name is truly one of ours (`_cdc_meta`,
`_CDC_CHANGES`, `_cdc_checkpoint`...) is refused by name before anything is written, as
is a mapping that would give a target table one of our names. A table whose columns take
every name of its rowid (`rowid`, `oid`, `_rowid_`) is refused by name too: SQLite leaves
no way to reach the rowid that identifies its rows.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import apsw
import msgspec
import pytest

from cdc import own_objects
from cdc.capture import fence
from cdc.capture import triggers as capture
from cdc.cutover.target_capture import TOUCHED
from cdc.errors import PlanError
from cdc.history.rebuild import AsOf, rebuild
from cdc.inventory import is_internal
from cdc.planning.inventory_format import JSON, MAPPING, MARKDOWN, Inventory
from cdc.planning.mapping import read_mapping, write_mapping
from checkpoints import store
from replicator import target
from tests.conftest import cdc_cmd, make_db, write_config

CONFIG = """\
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
snapshot_copy = "log"  # rebuilt below: the initial copy's rows from the log
[[sources]]
name = "a"
path = "legacy/a.db"
[[rules]]
table = "*"
target = "core"
"""

LOOKALIKES = """
CREATE TABLE plain(id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE _cdc_lookalike(id INTEGER PRIMARY KEY, v TEXT UNIQUE);
CREATE TABLE "_CDC_stuff"(k TEXT PRIMARY KEY, n) WITHOUT ROWID;
CREATE TABLE _cdc_t2_del(note TEXT);
CREATE TABLE _cdc_metadata(k, v);
INSERT INTO plain(v) VALUES ('p1');
INSERT INTO _cdc_lookalike(v) VALUES ('one'), ('two'), ('three');
INSERT INTO "_CDC_stuff" VALUES ('a', 1), ('b', 2.5);
INSERT INTO _cdc_t2_del VALUES ('keyless'), ('twice'), ('twice');
INSERT INTO _cdc_metadata VALUES ('x', X'00');
"""
LOOKALIKE_TABLES = ["_CDC_stuff", "_cdc_lookalike", "_cdc_metadata", "_cdc_t2_del"]


def _rows(path: Path, table: str) -> list[tuple]:
    """Through apsw, the SQLite the pipeline uses: closing a connection of another SQLite
    library in this process would drop the harvester's POSIX locks on the file."""
    c = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return sorted(c.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
    finally:
        c.close()


def _plan_error_line(r) -> str:  # noqa: ANN001 - a CompletedProcess
    """The CLI's `error:` line of a refused plan, checked to be the only one (plus a hint)."""
    assert r.returncode == PlanError.exit_code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if not x.startswith("hint: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# -- the registry ------------------------------------------------------------------------------


def test_the_registry_names_every_object_we_create_and_nothing_else() -> None:
    ours = [
        capture.CHANGES,
        capture.TABLES,
        capture.META,
        TOUCHED,
        store.TABLE,
        store.SOURCES,
        store.SNAPSHOTS,
        target.SCHEMAS,
        *capture.trigger_names(7),
        *capture.trigger_names(1234),
        *fence.trigger_names(3),
    ]
    assert all(own_objects.is_own(n) and own_objects.is_own(n.upper()) for n in ours)
    assert [n for n in ours if is_internal(n)] == ours[:8], "tables only: triggers have names apart"
    theirs = [
        "_cdc_lookalike",
        "_CDC_stuff",
        "_cdc_metadata",
        "_cdc_t1_notes",
        "_cdc_t_ins",
        "_cdc_tx1_ins",
        "_cdc_t1_insert",
        "_cdc_t01_ins",
        "_cdc_fence1_updkey",
        "_cdc_changes2",
        "x_cdc_meta",
        "_cdc_",
    ]
    assert not [n for n in theirs if own_objects.is_own(n) or is_internal(n)]


def test_every_object_of_an_installed_file_and_a_target_is_in_the_registry(
    tmp_path: Path, pipeline_for
) -> None:
    """Completeness, on real files: after install, a fence and an apply, every object whose
    name the user did not write is recognised as ours."""
    legacy = make_db(tmp_path / "legacy" / "a.db", LOOKALIKES)
    p = pipeline_for(write_config(tmp_path, CONFIG))
    p.sync()
    conn = apsw.Connection(str(legacy))
    tids = capture.installed_tables(conn)
    for stmt in fence.fence_sql(tids["plain"], "plain", "moved"):
        conn.execute(stmt)
    user = {("table", n.lower()) for n in ["plain", *LOOKALIKE_TABLES]}
    for path, c in ((legacy, conn), (tmp_path / "out" / "core.db", None)):
        c = c or apsw.Connection(str(path))
        names = [
            n
            for kind, n in c.execute("SELECT type, name FROM sqlite_schema")
            if not n.startswith("sqlite_autoindex_") and (kind, n.lower()) not in user
        ]
        assert names and all(own_objects.is_own(n) for n in names), (path, names)
        assert own_objects.foreign_claims(c) == [], path
        c.close()


# -- lookalikes are user tables ------------------------------------------------------------------


def test_lookalike_tables_are_copied_captured_verified_and_rebuilt(
    tmp_path: Path, pipeline_for
) -> None:
    legacy = make_db(tmp_path / "legacy" / "a.db", LOOKALIKES)
    cfg_path = write_config(tmp_path, CONFIG)
    r = cdc_cmd("check", cwd=tmp_path)
    assert r.returncode == 0 and "5 tables mapped" in r.stdout, r.stdout + r.stderr
    p = pipeline_for(cfg_path)
    p.sync()
    core = tmp_path / "out" / "core.db"
    for t in LOOKALIKE_TABLES:
        assert _rows(core, t) == _rows(legacy, t), t
    with contextlib.closing(apsw.Connection(str(legacy))) as c:
        c.execute("UPDATE _cdc_lookalike SET v = 'TWO' WHERE id = 2")
        c.execute("DELETE FROM _cdc_lookalike WHERE id = 1")
        c.execute("INSERT INTO _cdc_lookalike(v) VALUES ('four')")
        c.execute("INSERT OR REPLACE INTO _cdc_lookalike(id, v) VALUES (9, 'three')")
        c.execute("""UPDATE "_CDC_stuff" SET n = X'ff' WHERE k = 'a'""")
        c.execute("DELETE FROM _cdc_t2_del WHERE rowid = 2")
        c.execute("INSERT INTO _cdc_metadata VALUES ('y', 2)")
    p.harvest()
    p.apply()
    for t in LOOKALIKE_TABLES:
        assert _rows(core, t) == _rows(legacy, t), t
    assert _rows(core, "_cdc_lookalike") == [(2, "TWO"), (4, "four"), (9, "three")]
    assert p.diffs() == []

    r = cdc_cmd("verify", "--json", "--rate", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    states = {(t["table"], t["state"]) for t in json.loads(r.stdout)["tables"]}
    assert {(t, "equal") for t in LOOKALIKE_TABLES} <= states, states

    res = rebuild(p.cfg, p.plan, "core", AsOf(offset=p.writer.end_offset), str(tmp_path / "r.db"))
    assert {t.name for t in res.tables} >= set(LOOKALIKE_TABLES)
    assert set(res.dropped) <= {store.TABLE, store.SOURCES, store.SNAPSHOTS, target.SCHEMAS}
    for t in LOOKALIKE_TABLES:
        assert _rows(tmp_path / "r.db", t) == _rows(legacy, t), t


def test_the_inventory_lists_lookalikes_as_user_tables(tmp_path: Path) -> None:
    make_db(tmp_path / "legacy" / "a.db", LOOKALIKES)
    out = tmp_path / "inv"
    r = cdc_cmd("inventory", str(tmp_path / "legacy"), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    inv = msgspec.json.decode((out / JSON).read_bytes(), type=Inventory)
    (db,) = inv.databases
    assert {t.name for t in db.tables} == {"plain", *LOOKALIKE_TABLES}
    assert not db.sqlite_cdc_installed and db.problems == []
    assert {r.table for r in read_mapping(out / MAPPING)} == {"plain", *LOOKALIKE_TABLES}


def test_a_bots_own_trigger_named_like_ours_counts_for_hook_capture(tmp_path: Path) -> None:
    make_db(
        tmp_path / "legacy" / "a.db",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE log(v);"
        "CREATE TRIGGER _cdc_audit AFTER INSERT ON t BEGIN INSERT INTO log VALUES (NEW.v); END;",
    )
    write_config(
        tmp_path, CONFIG.replace('path = "legacy/a.db"', 'path = "legacy/a.db"\ncapture = "hooks"')
    )
    line = _plan_error_line(cdc_cmd("check", cwd=tmp_path))
    assert "triggers of its own (_cdc_audit)" in line, line


# -- our names are refused -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ddl,name",
    [
        ("CREATE TABLE _cdc_meta(k TEXT PRIMARY KEY, v)", "_cdc_meta"),
        ("CREATE TABLE _CDC_CHANGES(seq INTEGER PRIMARY KEY, note)", "_CDC_CHANGES"),
        ("CREATE TABLE _cdc_checkpoint(id INTEGER PRIMARY KEY, v)", "_cdc_checkpoint"),
        ("CREATE VIEW _cdc_tables AS SELECT 1 AS x", "_cdc_tables"),
        (
            "CREATE TRIGGER _cdc_t1_ins AFTER INSERT ON plain BEGIN SELECT 1; END",
            "_cdc_t1_ins",
        ),
    ],
    ids=["meta", "changes-upper", "checkpoint", "view", "trigger"],
)
def test_a_user_object_with_one_of_our_names_is_refused(
    tmp_path: Path, ddl: str, name: str
) -> None:
    legacy = make_db(
        tmp_path / "legacy" / "a.db",
        f"CREATE TABLE plain(id INTEGER PRIMARY KEY, v); {ddl};INSERT INTO plain(v) VALUES ('p');",
    )
    write_config(tmp_path, CONFIG)
    before = _schema(legacy)
    for cmd in ("check", "install"):
        line = _plan_error_line(cdc_cmd(cmd, cwd=tmp_path))
        assert f"{name!r}" in line and str(legacy) in line and "rename it" in line, line
    assert _schema(legacy) == before, "nothing was written"
    out = tmp_path / "inv"
    r = cdc_cmd("inventory", str(tmp_path / "legacy"), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    (db,) = msgspec.json.decode((out / JSON).read_bytes(), type=Inventory).databases
    assert [x.split(" ", 1)[1] for x in db.reserved] == [name] and not db.sqlite_cdc_installed
    assert "Named like sqlite-cdc's own objects" in (out / MARKDOWN).read_text()


def _schema(path: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as c:
        return c.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall()


def test_a_source_with_nothing_to_capture_may_keep_such_a_table(tmp_path: Path) -> None:
    """Nothing is installed in a file whose tables are all excluded, so nothing collides."""
    make_db(tmp_path / "legacy" / "a.db", "CREATE TABLE _cdc_meta(k, v); CREATE TABLE t(x);")
    write_config(
        tmp_path, CONFIG.replace('table = "*"\ntarget = "core"', 'table = "*"\nexclude = true')
    )
    r = cdc_cmd("check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_target_table_may_not_take_one_of_our_names(tmp_path: Path) -> None:
    make_db(tmp_path / "legacy" / "a.db", "CREATE TABLE plain(id INTEGER PRIMARY KEY, v);")
    write_config(
        tmp_path, CONFIG.replace('target = "core"', 'target = "core"\nas = "_CDC_Schemas"')
    )
    line = _plan_error_line(cdc_cmd("check", cwd=tmp_path))
    assert "a.plain" in line and "'_CDC_Schemas'" in line and "`as`" in line, line


# -- a rowid nothing can reach ---------------------------------------------------------------------

SHADOWED = """
CREATE TABLE plain(id INTEGER PRIMARY KEY, v);
CREATE TABLE odd(rowid, oid, _rowid_);
CREATE TABLE odd_keyed(k TEXT PRIMARY KEY, "ROWID", Oid, _rowid_);
CREATE TABLE fine(rowid, oid, v);
INSERT INTO odd VALUES (1, 2, 3);
INSERT INTO odd_keyed VALUES ('k', 1, 2, 3);
INSERT INTO fine VALUES (1, 2, 3);
"""


def test_a_table_whose_rowid_no_name_reaches_is_refused_by_name(tmp_path: Path) -> None:
    legacy = make_db(tmp_path / "legacy" / "a.db", SHADOWED)
    write_config(tmp_path, CONFIG)
    for cmd in ("check", "install"):
        r = cdc_cmd(cmd, cwd=tmp_path)
        assert r.returncode == PlanError.exit_code and "Traceback" not in r.stderr, r.stderr
        text = r.stderr
        for t in ("odd", "odd_keyed"):
            assert f"table {t!r} of source 'a' ({legacy})" in text, text
        assert "'fine'" not in text and "rowid" in text and "exclude it" in text, text
    with contextlib.closing(sqlite3.connect(legacy)) as c:
        assert not c.execute("SELECT 1 FROM sqlite_schema WHERE name = '_cdc_changes'").fetchall()
    # excluded, the rest of the file is captured
    rules = (
        '[[rules]]\ntable = "odd"\nexclude = true\n[[rules]]\ntable = "odd_keyed"\nexclude = true\n'
    )
    write_config(tmp_path, CONFIG + rules)
    r = cdc_cmd("install", cwd=tmp_path)
    assert r.returncode == 0 and "installed: 2 tables" in r.stdout, r.stdout + r.stderr


def test_one_such_table_is_one_line(tmp_path: Path) -> None:
    legacy = make_db(tmp_path / "legacy" / "a.db", "CREATE TABLE odd(rowid, oid, _rowid_);")
    write_config(tmp_path, CONFIG)
    line = _plan_error_line(cdc_cmd("install", cwd=tmp_path))
    assert f"table 'odd' of source 'a' ({legacy})" in line and "exclude it" in line, line


def test_the_inventory_and_cdc_plan_flag_such_a_table(tmp_path: Path) -> None:
    make_db(tmp_path / "legacy" / "a.db", SHADOWED)
    out = tmp_path / "inv"
    r = cdc_cmd("inventory", str(tmp_path / "legacy"), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    inv = msgspec.json.decode((out / JSON).read_bytes(), type=Inventory)
    problems = {t.name: t.problem for t in inv.databases[0].tables}
    assert problems["plain"] is None and problems["fine"] is None
    assert "rowid" in (problems["odd"] or "") and "rowid" in (problems["odd_keyed"] or "")
    refused = {t.name for t in inv.databases[0].tables if t.refused}
    assert refused == {"odd", "odd_keyed"} and inv.databases[0].problems == []
    assert "no name that reaches its rowid" in (out / MARKDOWN).read_text()
    rows = read_mapping(out / MAPPING)
    # a merge without a tag column is checked by key before the plan resolves
    write_mapping(
        [msgspec.structs.replace(x, target="core", merge=x.table == "odd") for x in rows],
        out / MAPPING,
    )
    r = cdc_cmd(
        "plan", "--inventory", str(out / JSON), "--mapping", str(out / MAPPING),
        "--out", str(tmp_path / "cdc.toml"), "--target", "core", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == PlanError.exit_code and "Traceback" not in r.stderr, r.stderr
    assert "'odd'" in r.stderr and "'odd_keyed'" in r.stderr, r.stderr
    assert not (tmp_path / "cdc.toml").exists()


def test_uninstall_leaves_a_bots_triggers_named_like_ours(tmp_path: Path) -> None:
    legacy = make_db(
        tmp_path / "legacy" / "a.db",
        "CREATE TABLE plain(id INTEGER PRIMARY KEY, v); CREATE TABLE log(v);"
        "CREATE TRIGGER _cdc_fence_audit AFTER INSERT ON plain "
        "BEGIN INSERT INTO log VALUES (NEW.v); END;",
    )
    write_config(tmp_path, CONFIG.replace('table = "*"', 'table = "plain"') + EXCLUDE_LOG)
    before = _schema(legacy)
    for cmd in ("install", "uninstall"):
        r = cdc_cmd(cmd, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
    assert _schema(legacy) == before


EXCLUDE_LOG = '[[rules]]\ntable = "log"\nexclude = true\n'
