"""`cdc plan`: inventory + mapping -> a checked cdc.toml, refusing with every problem named;
odd identifiers survive inventory -> plan -> schema -> replication."""

from __future__ import annotations

import apsw
import msgspec
import pytest

from cdc.config import load_config
from cdc.errors import PlanError
from cdc.planning.mapping import write_mapping
from cdc.planning.planner import make_plan
from cdc.planning.schema_out import write_schema
from tests.conftest import cdc_cmd, make_db
from tests.support.planning import inventory_rows, plan_cli, schema_objects


def _fill(rows, **by_table) -> list:
    """Set fields per (database, table) or per table name: {"a.db:users": {...}} or {"users": ...}."""
    out = []
    for r in rows:
        extra = by_table.get(f"{r.database}:{r.table}", by_table.get(r.table, {}))
        out.append(msgspec.structs.replace(r, **extra))
    return out


@pytest.fixture
def legacy(tmp_path):
    root = tmp_path / "legacy"
    make_db(
        root / "a.db",
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE trades(id INTEGER PRIMARY KEY, px REAL);"
        "INSERT INTO trades VALUES (1, 1.0), (2, 2.0), (3, 3.0);",
    )
    make_db(
        root / "sub" / "b.db",
        "CREATE TABLE users(id INTEGER PRIMARY KEY, handle TEXT);"
        "CREATE TABLE trades(id INTEGER PRIMARY KEY, px REAL);"
        "INSERT INTO trades VALUES (3, 30.0), (4, 40.0);",
    )
    return root


def test_every_problem_of_a_mapping_is_named_and_nothing_is_written(legacy, tmp_path):
    out = tmp_path / "work"
    rows = inventory_rows(legacy, out)
    rows = _fill(
        rows,
        **{
            "a.db:users": {"target": "core"},
            "sub/b.db:users": {"target": "core"},  # collides, not a merge
            "trades": {"target": "core", "merge": True},  # merge without a tag column
        },
    )
    rows.append(msgspec.structs.replace(rows[0], database="gone.db", table="x"))
    write_mapping(rows, out / "m.csv")
    with pytest.raises(PlanError) as e:
        make_plan(out / "inventory.json", out / "m.csv", out / "cdc.toml", ["core"])
    msg = str(e.value)
    assert "gone.db: in the mapping but not in the inventory (table 'x')" in msg
    assert (
        "core.users receives a.users, b.users (only in a.users: name; only in b.users: handle)"
        in msg
    )
    assert (
        "core.trades: merge of a.db:trades, sub/b.db:trades has no `tag_column`, and 1 key(s) "
        "exist in more than one of them (e.g. 3)" in msg
    )
    assert not (out / "cdc.toml").exists()


def test_an_undecided_table_and_an_unknown_target_are_refused(legacy, tmp_path):
    out = tmp_path / "work"
    rows = _fill(
        inventory_rows(legacy, out),
        **{"a.db:users": {"target": "core"}, "trades": {"target": "cor"}},
    )
    write_mapping(rows, out / "m.csv")
    r = plan_cli(out, "m.csv", "--target", "core")
    assert r.returncode == 3
    assert (
        "target 'cor' (rows: a.db:trades, sub/b.db:trades) is not one of core: did you mean core?"
    ) in r.stderr
    assert "table 'users' of source 'b' " in r.stderr and "matched by no rule" in r.stderr


def test_a_good_mapping_writes_a_config_that_checks(legacy, tmp_path):
    out = tmp_path / "work"
    rows = _fill(
        inventory_rows(legacy, out),
        **{
            "a.db:users": {"target": "core"},
            "sub/b.db:users": {"target": "core", "as_": "b_users"},
            "trades": {"target": "analytics", "merge": True, "tag_column": "bot"},
        },
    )
    write_mapping(rows, out / "m.csv")
    r = plan_cli(out, "m.csv", "--target", "core,analytics")
    assert r.returncode == 0, r.stderr
    assert "analytics: 2 tables" in r.stdout and "core: 2 tables" in r.stdout
    cfg = load_config(out / "cdc.toml")
    assert cfg.targets["core"] == str(out / "consolidated" / "core.db")
    assert [s.name for s in cfg.sources] == ["a", "b"]
    assert cdc_cmd("check", "-c", str(out / "cdc.toml")).returncode == 0


ODD = ["my table", 'quo"te', "ünï-côdé", "select", "it's"]


def test_odd_identifiers_survive_inventory_plan_schema_and_replication(tmp_path, pipeline_for):
    root = tmp_path / "legacy"
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    ddl = []
    for i, name in enumerate(ODD):
        ddl.append(
            f"CREATE TABLE {q(name)}({q('id ' + name)} INTEGER PRIMARY KEY, {q(name)} TEXT, "
            f"{q('order')} REAL, parent INTEGER REFERENCES {q(ODD[0])}({q('id ' + ODD[0])}));"
            f"CREATE INDEX {q('ix ' + name)} ON {q(name)}({q(name)});"
            f"INSERT INTO {q(name)} VALUES ({i}, 'v{i}', {i}.5, 0);"
        )
    make_db(root / "we ird.db", "".join(ddl))
    out = tmp_path / "work"
    rows = inventory_rows(root, out)
    assert sorted(r.table for r in rows) == sorted(ODD)
    rows = _fill(rows, **{n: {"target": "core", "as_": f"new {n}"} for n in ODD})
    write_mapping(rows, out / "m.csv")
    res = make_plan(out / "inventory.json", out / "m.csv", out / "cdc.toml", ["core"])
    assert res.targets == {"core": len(ODD)}
    cfg = load_config(out / "cdc.toml")
    write_schema(res.plan, out / "schema")
    p = pipeline_for(cfg)
    p.sync()
    assert p.diffs() == []
    got = apsw.Connection(cfg.targets["core"])
    expected = apsw.Connection(":memory:")
    expected.execute((out / "schema" / "core_schema.sql").read_text())
    assert schema_objects(got) == schema_objects(expected)
    for i, name in enumerate(ODD):
        assert got.execute(f"SELECT * FROM {q('new ' + name)}").fetchall() == [
            (i, f"v{i}", i + 0.5, 0)
        ]
        fk = got.execute('SELECT "table" FROM pragma_foreign_key_list(?)', ("new " + name,))
        assert [r[0] for r in fk] == [f"new {ODD[0]}"]


def test_rules_can_come_from_a_cdc_toml(legacy, tmp_path):
    out = tmp_path / "work"
    inventory_rows(legacy, out)
    (legacy / "new.db").write_bytes(b"")  # not in the inventory: ignored by the plan
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'state_dir = "s"\n[targets]\ncore = "c.db"\nanalytics = "a.db"\n'
        '[[sources]]\nname = "alpha"\npath = "legacy/a.db"\n'
        '[[rules]]\nsource = "alpha"\ntable = "*"\ntarget = "core"\n'
        '[[rules]]\nsource = "b"\ntable = "users"\ntarget = "core"\nas = "b_users"\n'
        '[[rules]]\nsource = "b"\ntable = "trades"\ntarget = "analytics"\n'
    )
    res = make_plan(out / "inventory.json", rules, out / "cdc.toml")
    assert res.targets == {"core": 3, "analytics": 1}
    cfg = load_config(out / "cdc.toml")
    assert [s.name for s in cfg.sources] == ["alpha", "b"]  # declared name kept, other derived
    assert cfg.targets["core"] == str(tmp_path / "c.db")


def test_a_foreign_key_to_a_merged_table_and_an_fts_sent_elsewhere_are_refused(tmp_path):
    root = tmp_path / "legacy"
    make_db(
        root / "a.db",
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, n TEXT);"
        "CREATE TABLE fills(id INTEGER PRIMARY KEY, acct INTEGER REFERENCES acct(id));"
        "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);"
        "CREATE VIRTUAL TABLE docs_fts USING fts5(body, content='docs', content_rowid='id');",
    )
    make_db(root / "b.db", "CREATE TABLE acct(id INTEGER PRIMARY KEY, n TEXT);")
    out = tmp_path / "work"
    rows = _fill(
        inventory_rows(root, out),
        acct={"target": "core", "merge": True, "tag_column": "bot"},
        fills={"target": "core"},
        docs={"target": "core"},
        docs_fts={"target": "analytics"},
    )
    write_mapping(rows, out / "m.csv")
    with pytest.raises(PlanError) as e:
        make_plan(out / "inventory.json", out / "m.csv", out / "cdc.toml", ["core", "analytics"])
    msg = str(e.value)
    assert (
        "foreign key a.fills(acct) -> acct: 'acct' is merged into core.acct (key now includes "
        "'bot'), so the key cannot hold" in msg
    )
    assert (
        "virtual table 'docs_fts' of source 'a' goes to 'analytics' but its content table "
        "'docs' goes to 'core'" in msg
    )
