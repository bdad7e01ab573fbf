"""The jarvis legacy corpus's plan: audited against the files, converted, resolved.

As written the plan is rejected before anything is installed; resolved, it maps every table.
Its live replication is `test_corpus_live.py`; shared helpers are in `tests/support/corpus.py`.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path

import pytest

from cdc.capture import install as ops
from cdc.config import config_from_dict, load_config
from cdc.errors import PlanError
from cdc.planning.resolve import resolve_plan
from tests.support.corpus import (
    DAEMON,
    RESOLUTIONS,
    assert_nothing_orphaned,
    audit_plan,
    cdc_objects,
    config_to_toml,
    is_internal,
    make_config,
    plan_to_config,
    run_cli,
    source_name,
    source_names,
)

INCONSISTENT = ["core.users", "analytics.predictions", "analytics.interactions", "cache.memories"]


def test_source_names_are_derived_from_paths_unique_and_valid(plan_json: dict) -> None:
    assert source_name("data/jarvis_admin.db") == "jarvis_admin"
    assert source_name("bots/twitter/engagement.db") == "twitter_engagement"
    assert source_name("data/memory/long_term.db") == "memory_long_term"
    assert source_name("database.db") == "database"
    assert source_name("bots/treasury/.positions.db") == "treasury_.positions"
    names = source_names(list(plan_json["databases"]))
    assert len(set(names.values())) == len(names) == 29
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names.values())
    # colliding short names fall back to the whole path, still unique
    assert source_names(["data/x.db", "bots/x.db"]) == {
        "data/x.db": "data_x",
        "bots/x.db": "bots_x",
    }


def test_plan_audit_against_the_files(plan_json: dict, manifest: dict, legacy: Path) -> None:
    a = audit_plan(plan_json, legacy)
    assert a.unlisted_files == []  # every SQLite file on disk is in the plan ...
    assert a.missing_files == []  # ... and every file of the plan is on disk
    assert sorted(a.listed) == sorted(manifest)
    assert a.unplanned_tables == [] and a.stale_tables == []
    assert a.virtual_tables == [
        ("data/jarvis_memory.db", "facts_fts"),
        ("data/jarvis_memory.db", "reflections_fts"),
    ]
    assert sorted(a.excluded_files) == ["data/alerts.db", "data/recycle_test.db", "database.db"]
    # recycle_test.db is excluded as a whole and holds nothing at all
    assert plan_json["databases"]["data/recycle_test.db"] == {"target": "exclude", "tables": {}}
    assert [t for t in a.tables["data/recycle_test.db"] if not is_internal(t)] == []
    # the four collisions are exactly the README's, each between tables whose columns differ
    assert sorted(f"{t}.{n}" for t, n in a.inconsistent) == sorted(INCONSISTENT)
    assert a.collisions == a.inconsistent
    for members in a.inconsistent.values():
        (r1, t1), (r2, t2) = members
        assert a.tables[r1][t1].columns != a.tables[r2][t2].columns
    # each resolution renames one side of one of them
    for (rel, table), new in RESOLUTIONS.items():
        assert any((rel, table) in m for m in a.inconsistent.values()), (rel, table)
        assert all(
            new != rule.get("as")
            for e in plan_json["databases"].values()
            for rule in e["tables"].values()
        )


def test_conversion_rules(plan_json: dict, legacy: Path, tmp_path: Path) -> None:
    data = plan_to_config(plan_json, legacy, tmp_path / "out", resolve=False)
    assert sorted(data["targets"]) == ["analytics", "cache", "core"]
    rules = {(r["source"], r["table"]): r for r in data["rules"]}
    assert not any(t.startswith("sqlite_") for _, t in rules)  # internal: no rule
    assert not any("_fts_" in t for _, t in rules)  # FTS5 shadow tables: no rule
    # virtual tables excluded although the plan maps them to analytics
    assert (
        plan_json["databases"]["data/jarvis_memory.db"]["tables"]["facts_fts"]["target"]
        == "analytics"
    )
    assert rules[("jarvis_memory", "facts_fts")] == {
        "source": "jarvis_memory",
        "table": "facts_fts",
        "exclude": True,
    }
    assert rules[("jarvis_memory", "reflections_fts")]["exclude"] is True
    assert rules[("jarvis", "test")]["exclude"] is True
    assert rules[("twitter_engagement", "threads")] == {
        "source": "twitter_engagement",
        "table": "threads",
        "target": "analytics",
        "as": "threads",
    }
    assert rules[("telegram_memory", "messages")]["as"] == "telegram_messages"
    # DB-level "exclude": declared, every table excluded by a literal rule, no glob anywhere
    for src in ("database", "alerts"):
        assert {r.get("exclude") for (s, _), r in rules.items() if s == src} == {True}
    assert "recycle_test" in {s["name"] for s in data["sources"]}
    assert not any(set("*?[") & set(r["table"] + r["source"]) for r in data["rules"])
    # the TOML rendering loads back to the same config
    data["daemon"] = dict(DAEMON)
    toml = tmp_path / "out" / "cdc.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text(config_to_toml(data), encoding="utf-8")
    from_file = load_config(toml)
    from_dict = config_from_dict(data, toml.parent)
    assert from_file.sources == from_dict.sources and from_file.rules == from_dict.rules
    assert from_file.targets == from_dict.targets and from_file.daemon == from_dict.daemon


def test_plan_as_written_is_rejected_before_anything_is_installed(
    plan_json: dict, legacy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    data, cfg = make_config(plan_json, legacy, out, resolve=False)
    with pytest.raises(PlanError) as ei:
        resolve_plan(cfg)
    msg = str(ei.value)
    assert "4 problem(s)" in msg  # the four collisions and nothing else
    for target in INCONSISTENT:
        assert f"{target} receives" in msg, target
    with pytest.raises(PlanError):
        ops.install(cfg)
    (out / "cdc.toml").write_text(config_to_toml(data), encoding="utf-8")
    r = run_cli("install", out / "cdc.toml")
    assert r.returncode == PlanError.exit_code, r.stderr
    assert all(t in r.stderr for t in INCONSISTENT)
    assert cdc_objects(legacy) == []
    assert not any(Path(p).exists() for p in cfg.targets.values())


def test_merge_is_refused_where_primary_keys_differ(
    plan_json: dict, legacy: Path, tmp_path: Path
) -> None:
    """Why core.users is a rename: its two tables key on `id` and `user_id`."""
    data = plan_to_config(plan_json, legacy, tmp_path / "out", resolve=False)
    for r in data["rules"]:
        if r["table"] == "users" and r["source"] in ("jarvis", "jarvis_admin"):
            r["merge"] = True
    with pytest.raises(PlanError) as ei:
        resolve_plan(config_from_dict(data, tmp_path))
    assert "core.users: merged tables have different primary keys (id; user_id)" in str(ei.value)


def test_resolved_plan_maps_every_table(plan_json: dict, legacy: Path, tmp_path: Path) -> None:
    _, cfg = make_config(plan_json, legacy, tmp_path / "out", resolve=True)
    plan = resolve_plan(cfg)
    assert_nothing_orphaned(plan, plan_json, legacy)
    assert sum(len(s.tables) for s in plan.sources) == 95  # 104 tables - 9 excluded
    assert plan.mapping("jarvis", "users").target_table == "users"
    assert plan.mapping("jarvis_admin", "users").target_table == "admin_users"
    assert plan.mapping("jarvis_memory", "predictions").target_table == "predictions"
    assert plan.mapping("sentiment", "predictions").target_table == "sentiment_predictions"
    assert plan.mapping("jarvis_memory", "interactions").target_table == "interactions"
    assert plan.mapping("jarvis_x_memory", "interactions").target_table == "x_interactions"
    assert plan.mapping("ai_memory", "memories").target_table == "memories"
    assert plan.mapping("memory_long_term", "memories").target_table == "long_term_memories"
    assert all(m.tag_column is None for s in plan.sources for m in s.tables)  # no merges
    assert plan.source("jarvis_memory").uncapturable == ["facts_fts", "reflections_fts"]
    for name in ("database", "alerts", "recycle_test"):
        assert plan.source(name).tables == []
    assert plan.source("recycle_test").excluded == []


def test_file_the_plan_does_not_list_is_not_dropped(
    plan_json: dict, legacy: Path, tmp_path: Path
) -> None:
    """An unlisted SQLite file becomes a source with no rule: its tables stop the plan."""
    stray = legacy / "data" / "stray.sqlite3"
    with contextlib.closing(sqlite3.connect(stray)) as c, c:
        c.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    assert audit_plan(plan_json, legacy).unlisted_files == ["data/stray.sqlite3"]
    _, cfg = make_config(plan_json, legacy, tmp_path / "out", resolve=True)
    assert ("stray", str(stray)) in {(s.name, s.path) for s in cfg.sources}
    with pytest.raises(PlanError) as ei:
        resolve_plan(cfg)
    assert "1 problem(s)" in str(ei.value)
    assert f"table 'notes' of source 'stray' ({stray}) is matched by no rule" in str(ei.value)
    # an empty unlisted file is declared too, and has nothing to capture
    stray.unlink()
    with contextlib.closing(sqlite3.connect(stray)) as c:
        c.execute("PRAGMA user_version=1")
    _, cfg = make_config(plan_json, legacy, tmp_path / "out2", resolve=True)
    assert resolve_plan(cfg).source("stray").tables == []


def test_file_the_plan_lists_but_is_missing_is_reported(
    plan_json: dict, legacy: Path, tmp_path: Path
) -> None:
    # the corpus may ship the file with or without its -wal beside it
    for suffix in ("", "-wal", "-shm"):
        (legacy / f"data/custom.db{suffix}").unlink(missing_ok=suffix != "")
    assert audit_plan(plan_json, legacy).missing_files == ["data/custom.db"]
    _, cfg = make_config(plan_json, legacy, tmp_path / "out", resolve=True)
    with pytest.raises(PlanError) as ei:
        resolve_plan(cfg)
    assert "source 'custom'" in str(ei.value) and "not found" in str(ei.value)
    assert not (legacy / "data/custom.db").exists()  # and it was not created by accident
