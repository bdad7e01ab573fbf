"""`cdc plan --mapping plan.yaml / plan.json`: an operator's existing plan, per database and
table, goes through the same planner as the CSV; what only a plan file can get wrong is
refused with where it is. On the real corpus, its plan.json is refused with exactly the four
collisions its README names, and passes once they are resolved."""

from __future__ import annotations

import copy
import json
import re

import pytest

from cdc.config import load_config
from tests.conftest import cdc_cmd, make_db
from tests.support.corpus import RESOLUTIONS
from tests.support.planning import plan_cli


@pytest.fixture
def work(tmp_path):
    """An inventory (targets not named) of three small files, in tmp_path/work."""
    root = tmp_path / "legacy"
    make_db(root / "data" / "jarvis.db", "CREATE TABLE positions(id INTEGER PRIMARY KEY);"
            "CREATE TABLE scorecard(id INTEGER PRIMARY KEY, s REAL);"
            "CREATE TABLE users(id INTEGER PRIMARY KEY); CREATE TABLE scratch(x);")  # fmt: skip
    make_db(root / "data" / "llm_costs.db", "CREATE TABLE llm_costs(id INTEGER PRIMARY KEY);")
    make_db(root / "data" / "admin.db", "CREATE TABLE users(user_id INTEGER PRIMARY KEY);")
    out = tmp_path / "work"
    r = cdc_cmd("inventory", str(root), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


GOOD_YAML = """\
about: the operator's plan
targets: [core, analytics, cache]
databases:
  data/jarvis.db:
    target: core            # the tables not listed below
    comment: the trading bot
    tables:
      positions: core
      scorecard: {target: analytics, as: scorecards, note: "four sources one day"}
      scratch: exclude
  data/admin.db:
    tables:
      users: {target: core, as: admin_users, drop_foreign_keys: false}
tables:
  llm_costs: analytics
"""


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_a_yaml_plan_file_makes_the_same_config_as_the_sheet(work, suffix):
    (work / f"plan{suffix}").write_text(GOOD_YAML, encoding="utf-8")
    r = plan_cli(work, f"plan{suffix}")  # targets from the file: the inventory has none
    assert r.returncode == 0, r.stderr
    cfg = load_config(work / "cdc.toml")
    assert sorted(cfg.targets) == ["analytics", "cache", "core"]
    rules = {(x.source, x.table): x for x in cfg.rules}
    assert rules[("jarvis", "scorecard")].target == "analytics"
    assert rules[("jarvis", "scorecard")].as_ == "scorecards"
    assert rules[("jarvis", "users")].target == "core"  # the database's own target
    assert rules[("jarvis", "scratch")].exclude
    assert rules[("admin", "users")].as_ == "admin_users"
    assert rules[("llm_costs", "llm_costs")].target == "analytics"


def test_a_json_plan_file_and_an_unknown_target_in_it(work):
    plan = {"about": "x", "databases": {"data/jarvis.db": {"target": "core"},
            "data/admin.db": {"tables": {"users": {"target": "core", "as": "admin_users"}}},
            "data/llm_costs.db": {"tables": {"llm_costs": "anlytics"}}}}  # fmt: skip
    (work / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    r = plan_cli(work, "plan.json", "--target", "core,analytics,cache")
    assert r.returncode == 3
    assert (
        "target 'anlytics' (rows: data/llm_costs.db:llm_costs) is not one of analytics, cache, "
        "core: did you mean analytics?"
    ) in r.stderr
    r = plan_cli(work, "plan.json", "--target", "core,analytics", "--default-target",
                 "data/llm_costs.db=analytics")  # fmt: skip
    assert r.returncode == 3  # a default fills empty rows only, never a decided one
    plan["databases"]["data/llm_costs.db"] = {}
    (work / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    r = plan_cli(work, "plan.json", "--target", "core,analytics", "--default-target",
                 "data/llm_costs.db=analytics")  # fmt: skip
    assert r.returncode == 0, r.stderr


BAD_YAML = """\
targets: [core, analytics]
colour: blue
databases:
  data/jarvis.dbx: {target: core}
  data/jarvis.db:
    target: 7
    tables:
      positons: core
      scorecard: {target: analytics, merge: "yes", alias: x}
      scratch: [core]
  data/admin.db:
    tables:
      users: core
tables:
  users: core
  nowhere: core
  llm_costs: analytics
  positions: {target: core}
"""


def test_every_problem_of_a_plan_file_is_named_with_where_it_is(work):
    (work / "plan.yaml").write_text(
        BAD_YAML.replace("  positions: {target: core}\n", "")
        + "  scorecard: analytics\n",  # also under databases
        encoding="utf-8",
    )
    r = plan_cli(work, "plan.yaml")
    assert r.returncode == 3, r.stderr
    assert not (work / "cdc.toml").exists()
    problems = [x[4:] for x in r.stderr.splitlines() if x.startswith("  - ")]
    assert problems == [
        'the top level: unknown key "colour" (expected: targets, databases, tables, about, '
        "comment)",
        'databases["data/jarvis.dbx"]: not a database of the inventory (did you mean '
        "data/jarvis.db?)",
        'databases["data/jarvis.db"].target: expected text, got int 7',
        'databases["data/jarvis.db"].tables["positons"]: no table "positons" in data/jarvis.db '
        "(did you mean positions?)",
        'databases["data/jarvis.db"].tables["scorecard"]: unknown key "alias" (expected: target, '
        "as, tag_column, tag, note, merge, drop_foreign_keys)",
        'databases["data/jarvis.db"].tables["scorecard"].merge: expected true or false, got \'yes\'',
        'databases["data/jarvis.db"].tables["scratch"]: expected a target or a mapping, got [\'core\']',
        'tables["users"]: in 2 databases (data/admin.db, data/jarvis.db): give it under '
        "`databases` instead",
        'tables["nowhere"]: in no database of the inventory',
        'tables["scorecard"]: also given at databases["data/jarvis.db"].tables["scorecard"]',
    ]
    assert r.stderr.startswith(f"error: {work / 'plan.yaml'}: 10 problem(s) in the plan file:")
    assert 'hint: the format: `cdc docs planning` ("A plan file")' in r.stderr


def test_an_unreadable_plan_file_is_one_line(work):
    (work / "plan.yaml").write_text("databases: [unclosed\n", encoding="utf-8")
    r = plan_cli(work, "plan.yaml", "--target", "core")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "not valid YAML" in r.stderr
    (work / "plan.json").write_text("[1, 2]", encoding="utf-8")
    r = plan_cli(work, "plan.json", "--target", "core")
    assert r.returncode == 2 and "a plan file is a mapping" in r.stderr


# -- the real corpus ---------------------------------------------------------------------------


def _corpus_inventory(legacy, tmp_path):
    work = tmp_path / "work"
    r = cdc_cmd("inventory", str(legacy), "--out", str(work), "--no-progress",
                "--target", "core,analytics,cache")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return work


def test_the_corpus_plan_json_is_refused_with_exactly_its_four_collisions(
    legacy, plan_json, tmp_path
):
    work = _corpus_inventory(legacy, tmp_path)
    (work / "plan.json").write_text(json.dumps(plan_json), encoding="utf-8")
    r = plan_cli(work, "plan.json")
    assert r.returncode == 3, r.stdout + r.stderr
    assert not (work / "cdc.toml").exists()
    problems = [line for line in r.stderr.splitlines() if line.startswith("  - ")]
    receives = sorted(re.match(r"  - (\S+) receives", p).group(1) for p in problems)
    assert receives == [
        "analytics.interactions",
        "analytics.predictions",
        "cache.memories",
        "core.users",
    ]
    assert "target '" not in r.stderr
    users = next(p for p in problems if p.startswith("  - core.users receives"))
    assert "data/jarvis_admin.db:users -> jarvis_admin_users" in users


def test_the_corpus_plan_json_with_the_resolutions_passes(legacy, plan_json, tmp_path):
    work = _corpus_inventory(legacy, tmp_path)
    resolved = copy.deepcopy(plan_json)
    for (rel, table), new in RESOLUTIONS.items():
        resolved["databases"][rel]["tables"][table]["as"] = new
    (work / "plan.json").write_text(json.dumps(resolved), encoding="utf-8")
    r = plan_cli(work, "plan.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 FTS tables rebuilt" in r.stdout
    cfg = load_config(work / "cdc.toml")
    assert sorted(cfg.targets) == ["analytics", "cache", "core"]
    assert {x.as_ for x in cfg.rules if x.as_} >= set(RESOLUTIONS.values())
