"""Bad config and bad mappings are refused with a message naming the file, key and table."""

from __future__ import annotations

import pytest

from cdc.config import load_config
from cdc.errors import ConfigError, PlanError
from cdc.planning.resolve import resolve_plan
from tests.conftest import cdc_cmd, make_db, write_config

BASE = """
state_dir = "state"
[targets]
core = "out/core.db"
cache = "out/cache.db"
[[sources]]
name = "a"
path = "a.db"
[[sources]]
name = "b"
path = "b.db"
"""


@pytest.fixture
def two_dbs(tmp_path):
    make_db(
        tmp_path / "a.db",
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE trades(id INTEGER PRIMARY KEY, px REAL); CREATE TABLE test(x);",
    )
    make_db(
        tmp_path / "b.db",
        "CREATE TABLE users(id INTEGER PRIMARY KEY, handle TEXT, extra);"
        "CREATE TABLE trades(tid TEXT PRIMARY KEY, px REAL);",
    )
    return tmp_path


def _cfg(root, rules: str):
    return load_config(write_config(root, BASE + rules))


@pytest.mark.parametrize(
    "text,needle",
    [
        ("state_dir = 3\n[targets]\n", "state_dir"),
        ("[targets\n", "invalid TOML"),
        (BASE + "bogus = 1\n", "bogus"),
        (BASE + '[[rules]]\ntable = "*"\ntarget = "nowhere"\n', "rules[0]`.target 'nowhere'"),
        (BASE + '[[rules]]\ntable = "*"\n', "give `target` or `exclude = true`"),
        (BASE + '[[rules]]\ntable = "x"\nexclude = true\ntarget = "core"\n', "cannot be combined"),
        (BASE.replace('path = "b.db"', 'path = "*.db"'), "needs `{stem}`"),
        (BASE.replace('name = "b"', 'name = "a"'), "declared twice"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, needle):
    p = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_unmatched_table_is_named(two_dbs):
    cfg = _cfg(two_dbs, '[[rules]]\nsource = "a"\ntable = "*"\ntarget = "core"\n')
    with pytest.raises(PlanError) as e:
        resolve_plan(cfg)
    msg = str(e.value)
    assert "'users' of source 'b'" in msg and "'trades' of source 'b'" in msg
    assert "matched by no rule" in msg


def test_collision_needs_rename_or_merge(two_dbs):
    cfg = _cfg(
        two_dbs,
        '[[rules]]\ntable = "*"\ntarget = "core"\n[[rules]]\ntable = "test"\nexclude = true\n',
    )
    with pytest.raises(PlanError) as e:
        resolve_plan(cfg)
    assert "core.users receives a.users, b.users" in str(e.value)
    assert "core.trades receives a.trades, b.trades" in str(e.value)


def test_merge_with_different_keys_is_refused(two_dbs):
    cfg = _cfg(
        two_dbs,
        '[[rules]]\ntable = "*"\ntarget = "core"\nmerge = true\n'
        '[[rules]]\ntable = "test"\nexclude = true\n',
    )
    with pytest.raises(PlanError, match="different primary keys"):
        resolve_plan(cfg)


def test_literal_rule_beats_glob_and_ties_are_errors(two_dbs):
    rules = (
        '[[rules]]\ntable = "*"\ntarget = "core"\nas = "{source}_{table}"\n'
        '[[rules]]\nsource = "a"\ntable = "test"\nexclude = true\n'
    )
    plan = resolve_plan(_cfg(two_dbs, rules))
    a = plan.source("a")
    assert a.excluded == ["test"]
    assert sorted(m.target_table for m in a.tables) == ["a_trades", "a_users"]
    tie = rules + '[[rules]]\nsource = "a"\ntable = "test"\ntarget = "cache"\n'
    with pytest.raises(PlanError, match="matched by rules"):
        resolve_plan(_cfg(two_dbs, tie))


def test_missing_and_non_sqlite_sources(tmp_path):
    (tmp_path / "b.db").write_bytes(b"this is not a database" * 100)
    cfg = _cfg(tmp_path, '[[rules]]\ntable = "*"\ntarget = "core"\n')
    with pytest.raises(PlanError) as e:
        resolve_plan(cfg)
    assert "a.db: legacy database not found" in str(e.value)
    assert "b.db: not a SQLite database" in str(e.value)
    assert not (tmp_path / "a.db").exists(), "a missing legacy file must never be created"


def test_fts_with_content_follows_its_table_and_other_virtual_tables_must_be_excluded(tmp_path):
    make_db(
        tmp_path / "a.db",
        "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);"
        "CREATE VIRTUAL TABLE docs_fts USING fts5(body, content='docs', content_rowid='id');"
        "CREATE VIRTUAL TABLE notes_fts USING fts5(body);",
    )
    make_db(tmp_path / "b.db", "CREATE TABLE x(id INTEGER PRIMARY KEY);")
    cfg = _cfg(tmp_path, '[[rules]]\ntable = "*"\ntarget = "core"\n')
    with pytest.raises(PlanError, match="'notes_fts' of source 'a' is a fts5 table that keeps"):
        resolve_plan(cfg)
    cfg = _cfg(
        tmp_path,
        '[[rules]]\ntable = "*"\ntarget = "core"\n[[rules]]\ntable = "notes_fts"\nexclude = true\n',
    )
    plan = resolve_plan(cfg)
    assert plan.source("a").uncapturable == ["notes_fts"]
    assert [m.table for m in plan.source("a").fts] == ["docs_fts"]  # re-created, not captured
    assert [m.table for m in plan.source("a").tables] == ["docs"]  # shadow tables skipped


def test_cli_reports_one_line_and_exit_code(two_dbs):
    write_config(two_dbs, BASE + '[[rules]]\nsource = "a"\ntable = "*"\ntarget = "core"\n')
    r = cdc_cmd("check", cwd=two_dbs)
    assert r.returncode == PlanError.exit_code
    assert r.stderr.startswith("error: ") and "matched by no rule" in r.stderr
    r = cdc_cmd("check", "-c", "missing.toml", cwd=two_dbs)
    assert r.returncode == ConfigError.exit_code
    assert r.stderr.count("\n") == 2 and "hint:" in r.stderr
