"""Issue 5 on the real corpus: inventory -> the operator's plan.json as a mapping -> `cdc plan`
names the four inconsistent targets; the corrected mapping passes, `cdc schema` writes the
DDL, and the targets replicated from it hold exactly that DDL and the legacy rows."""

from __future__ import annotations

import re

import apsw

from cdc.config import load_config
from cdc.planning.mapping import write_mapping
from tests.conftest import cdc_cmd
from tests.support.corpus import plan_to_mapping
from tests.support.planning import inventory_rows, plan_cli, schema_objects

TARGETS = ("--target", "core", "--target", "analytics", "--target", "cache")


def test_the_operators_plan_is_refused_with_the_four_inconsistent_targets(
    legacy, plan_json, tmp_path
):
    work = tmp_path / "work"
    rows = plan_to_mapping(plan_json, inventory_rows(legacy, work), resolve=False)
    write_mapping(rows, work / "plan_as_written.csv")
    r = plan_cli(work, "plan_as_written.csv", *TARGETS)
    assert r.returncode == 3, r.stdout + r.stderr
    assert not (work / "cdc.toml").exists()
    problems = [line for line in r.stderr.splitlines() if line.startswith("  - ")]
    receives = sorted(
        re.match(r"  - (\S+) receives", p).group(1) for p in problems if " receives " in p
    )
    assert receives == [
        "analytics.interactions",
        "analytics.predictions",
        "cache.memories",
        "core.users",
    ]
    users = next(p for p in problems if p.startswith("  - core.users receives"))
    assert "keys differ: jarvis.users(id), jarvis_admin.users(user_id)" in users
    assert "only in jarvis_admin.users: user_id, username" in users
    assert len(problems) == 4, problems


def test_the_corrected_plan_passes_and_the_targets_hold_its_schema(
    legacy, plan_json, tmp_path, pipeline_for
):
    work = tmp_path / "work"
    rows = plan_to_mapping(plan_json, inventory_rows(legacy, work), resolve=True)
    write_mapping(rows, work / "mapping.csv")
    r = plan_cli(work, "mapping.csv", *TARGETS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 FTS tables rebuilt" in r.stdout
    r = cdc_cmd("schema", "-c", str(work / "cdc.toml"), "--out", str(work / "schema"))
    assert r.returncode == 0, r.stderr
    cfg = load_config(work / "cdc.toml")
    p = pipeline_for(cfg)
    p.sync()
    assert p.diffs() == []
    for target, path in cfg.targets.items():
        expected = apsw.Connection(":memory:")
        expected.execute((work / "schema" / f"{target}_schema.sql").read_text())
        got = apsw.Connection(path)
        assert schema_objects(got) == schema_objects(expected), target
    analytics = apsw.Connection(cfg.targets["analytics"])
    for fts in ("facts_fts", "reflections_fts"):
        analytics.execute(f"INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 1)")
    n = analytics.execute("SELECT count(*) FROM facts_fts").fetchone()[0]
    assert n == analytics.execute("SELECT count(*) FROM facts").fetchone()[0] > 0
