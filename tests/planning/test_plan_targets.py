"""The set of targets is decided once (`cdc inventory --target`, `cdc plan --target`, a plan
file's `targets`), a typo in the sheet is refused with the name it was meant to be, and
`--default-target` fills the sheet's empty cells: all as the operator runs the commands."""

from __future__ import annotations

import msgspec
import pytest

from cdc.config import load_config
from cdc.planning.inventory_format import JSON, MAPPING, Inventory
from cdc.planning.mapping import read_mapping, write_mapping
from tests.conftest import cdc_cmd, make_db
from tests.support.planning import plan_cli

TARGETS = "core,analytics,cache"


@pytest.fixture
def legacy(tmp_path):
    root = tmp_path / "legacy"
    make_db(root / "data" / "app.db", "CREATE TABLE users(id INTEGER PRIMARY KEY, n TEXT);"
            "CREATE TABLE cache_pages(url TEXT PRIMARY KEY, body TEXT);"
            "CREATE TABLE log(msg TEXT);")  # fmt: skip
    make_db(root / "data" / "metrics.db", "CREATE TABLE samples(id INTEGER PRIMARY KEY, v);")
    make_db(root / "data" / "metrics_old.db", "CREATE TABLE points(t INTEGER, k TEXT,"
            " v REAL, PRIMARY KEY(t, k));"
            "CREATE TABLE users(user_id INTEGER PRIMARY KEY, handle TEXT);")  # fmt: skip
    return root


def inventory(legacy, out, *extra: str):
    return cdc_cmd("inventory", str(legacy), "--out", str(out), "--no-progress", *extra)


def fill(out, **targets: str) -> None:
    """Set the target cell of each `database:table` given, in OUT's migration_mapping.csv."""
    rows = read_mapping(out / MAPPING)
    rows = [
        msgspec.structs.replace(r, target=targets.get(f"{r.database}:{r.table}", r.target))
        for r in rows
    ]
    write_mapping(rows, out / MAPPING)


ALL = {
    "data/app.db:users": "core",
    "data/app.db:cache_pages": "cache",
    "data/app.db:log": "exclude",
    "data/metrics.db:samples": "analytics",
    "data/metrics_old.db:points": "analytics",
    "data/metrics_old.db:users": "analytics",
}


def test_inventory_records_the_targets_and_plan_refuses_a_typo_with_the_near_name(legacy, tmp_path):
    out = tmp_path / "plan"
    r = inventory(legacy, out, "--target", "core", "--target", "analytics,cache")
    assert r.returncode == 0, r.stderr
    assert "targets: core, analytics, cache" in r.stdout
    inv = msgspec.json.decode((out / JSON).read_bytes(), type=Inventory)
    assert inv.targets == ["core", "analytics", "cache"]
    fill(
        out,
        **{**ALL, "data/metrics.db:samples": "anlytics", "data/metrics_old.db:points": "anlytics"},
    )
    r = plan_cli(out, MAPPING)  # no --target: the inventory's
    assert r.returncode == 3, r.stdout + r.stderr
    assert (
        "target 'anlytics' (rows: data/metrics.db:samples, data/metrics_old.db:points) is not "
        "one of analytics, cache, core: did you mean analytics?"
    ) in r.stderr
    assert not (out / "cdc.toml").exists()
    fill(out, **ALL)
    r = plan_cli(out, MAPPING)
    assert r.returncode == 0, r.stderr
    assert sorted(load_config(out / "cdc.toml").targets) == ["analytics", "cache", "core"]


def test_plan_refuses_when_no_one_names_the_targets(legacy, tmp_path):
    out = tmp_path / "plan"
    assert inventory(legacy, out).returncode == 0
    fill(out, **ALL)
    r = plan_cli(out, MAPPING)
    assert r.returncode == 3
    assert r.stderr.splitlines() == [
        "error: no targets named: cdc plan does not take them from the sheet",
        "hint: name them once: `cdc inventory DIRS --target core,analytics,cache` (kept in "
        "inventory.json), or `cdc plan --target ...`, or `targets: [...]` in a plan file",
    ]
    assert not (out / "cdc.toml").exists()
    r = plan_cli(out, MAPPING, "--target", TARGETS)  # the command line names them
    assert r.returncode == 0, r.stderr


def test_plan_target_overrides_the_inventorys(legacy, tmp_path):
    out = tmp_path / "plan"
    assert inventory(legacy, out, "--target", "core,analytics").returncode == 0
    fill(out, **ALL)
    r = plan_cli(out, MAPPING)
    assert r.returncode == 3 and "target 'cache' (rows: data/app.db:cache_pages)" in r.stderr
    r = plan_cli(out, MAPPING, "--target", "core", "--target", "analytics,cache")
    assert r.returncode == 0, r.stderr


def test_a_rerun_without_target_keeps_the_targets(legacy, tmp_path):
    out = tmp_path / "plan"
    assert inventory(legacy, out, "--target", TARGETS).returncode == 0
    r = inventory(legacy, out, "--mapping", str(out / MAPPING))
    assert r.returncode == 0, r.stderr
    assert "targets core, analytics, cache kept from" in r.stderr
    assert msgspec.json.decode((out / JSON).read_bytes(), type=Inventory).targets == [
        "core",
        "analytics",
        "cache",
    ]


def test_default_targets_prefill_the_sheet_first_match_wins(legacy, tmp_path):
    out = tmp_path / "plan"
    r = inventory(
        legacy,
        out,
        "--target",
        TARGETS,
        "--default-target",
        "data/metrics*.db=analytics",
        "--default-target",
        "data/app.db:cache_*=cache",
        "--default-target",
        "data/app.db:LOG=exclude",
        "--default-target",
        "data/*.db=core",
        "--default-target",
        "bots/*.db=core",
    )
    assert r.returncode == 0, r.stderr
    assert "note: --default-target 'bots/*.db=core' matches no table" in r.stderr
    assert "--default-target filled 6 empty target cell(s)" in r.stderr
    got = {f"{x.database}:{x.table}": x.target for x in read_mapping(out / MAPPING)}
    assert got == ALL
    r = plan_cli(out, MAPPING)
    assert r.returncode == 0, r.stderr


def test_default_targets_at_plan_time_fill_only_empty_rows(legacy, tmp_path):
    out = tmp_path / "plan"
    assert inventory(legacy, out, "--target", TARGETS).returncode == 0
    fill(out, **{"data/metrics_old.db:users": "cache"})  # decided: no default changes it
    defaults = ["--default-target", "data/metrics*.db=analytics", "--default-target",
                "data/app.db:cache_*=cache", "--default-target", "data/app.db:log=exclude",
                "--default-target", "data/app.db=core"]  # fmt: skip
    r = plan_cli(out, MAPPING, *defaults)
    assert r.returncode == 0, r.stderr
    cfg = load_config(out / "cdc.toml")
    by_table = {(x.source, x.table): x.target for x in cfg.rules}
    assert by_table[("metrics_old", "users")] == "cache"
    assert by_table[("metrics_old", "points")] == "analytics"
    assert by_table[("app", "cache_pages")] == "cache"


def test_bad_default_targets_are_refused_by_name(legacy, tmp_path):
    out = tmp_path / "plan"
    r = inventory(legacy, out, "--target", TARGETS, "--default-target", "data/*.db=anlytics",
                  "--default-target", "data/*.db", "--default-target", "a.db:=core")  # fmt: skip
    assert r.returncode == 2
    assert not (out / MAPPING).exists()
    err = r.stderr.splitlines()[0]
    assert "'data/*.db=anlytics': target 'anlytics' is not one of analytics, cache, core" in err
    assert "did you mean analytics?" in err
    assert "'data/*.db' is not GLOB=TARGET" in err and "'a.db:=core' is not GLOB=TARGET" in err
    r = inventory(legacy, out, "--default-target", "data/*.db=core")  # no set to check against
    assert r.returncode == 2 and "no targets are named" in r.stderr
    r = inventory(legacy, out, "--target", "core,exclude")
    assert r.returncode == 2 and "'exclude' cannot be a target name" in r.stderr


def test_the_sheet_carries_key_collisions_and_a_suggested_as(legacy, tmp_path):
    out = tmp_path / "plan"
    assert inventory(legacy, out, "--target", TARGETS).returncode == 0
    rows = {f"{x.database}:{x.table}": x for x in read_mapping(out / MAPPING)}
    assert rows["data/app.db:users"].key == "id"
    assert rows["data/metrics_old.db:points"].key == "t,k"
    assert rows["data/app.db:log"].key == "rowid"
    assert rows["data/app.db:users"].collides_with == "data/metrics_old.db:users"
    assert rows["data/metrics_old.db:users"].collides_with == "data/app.db:users"
    assert rows["data/app.db:users"].suggested_as == "app_users"
    assert rows["data/metrics_old.db:users"].suggested_as == "metrics_old_users"
    assert rows["data/app.db:log"].collides_with == rows["data/app.db:log"].suggested_as == ""
    header = (out / MAPPING).read_text(encoding="utf-8-sig").splitlines()[0].split(",")
    assert {"key", "collides_with", "suggested_as"} <= set(header)
    # a clash the plan refuses names the `as` values to copy
    fill(out, **{**ALL, "data/metrics_old.db:users": "core"})
    r = plan_cli(out, MAPPING)
    assert r.returncode == 3
    assert (
        "suggested `as` (set it on all but one): data/app.db:users -> app_users, "
        "data/metrics_old.db:users -> metrics_old_users"
    ) in r.stderr
    # carried over (refreshed) by a re-run with --mapping; decisions kept
    r = inventory(legacy, out, "--mapping", str(out / MAPPING))
    assert r.returncode == 0, r.stderr
    again = {f"{x.database}:{x.table}": x for x in read_mapping(out / MAPPING)}
    assert again["data/app.db:users"].suggested_as == "app_users"
    assert again["data/metrics_old.db:users"].target == "core"


def test_an_old_sheet_without_the_new_columns_still_plans(legacy, tmp_path):
    out = tmp_path / "plan"
    assert inventory(legacy, out, "--target", TARGETS).returncode == 0
    old = ["database,source,table,kind,rows,target,as,merge,tag_column,tag,drop_foreign_keys,note"]
    for name, target in ALL.items():
        db, table = name.split(":")
        old.append(f"{db},,{table},table,,{target},,,,,,")
    (out / "old.csv").write_text("\n".join(old) + "\n", encoding="utf-8")
    r = plan_cli(out, "old.csv")
    assert r.returncode == 0, r.stderr
