"""What the daemon tests share: one bot's legacy file and its installed cdc.toml (`bot_cfg`);
the disk-full tests' three legacy files (`disk_cfg`) and their checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from cdc.changelog.retained import RetainedLog
from cdc.config import load_config
from cdc.planning.resolve import resolve_plan
from checkpoints.store import TABLE
from tests.conftest import cdc_cmd, make_db, write_config
from tests.support import workload
from tests.support.logcount import count_log
from tests.support.workload import SCHEMA
from verifier import compare_plan

BOT_CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
snapshot_chunk = 100
harvest_batch = 300
[[sources]]
name = "bot"
path = "legacy/bot.db"
[[rules]]
table = "*"
target = "core"
"""


@pytest.fixture
def bot_cfg(tmp_path: Path) -> Callable[..., Path]:
    """`make(wal, rows=0)`: tmp_path/legacy/bot.db (the workload's SCHEMA, `rows` seed rows in
    positions and log_lines, WAL or rollback journal), BOT_CONFIG (every table to core) and
    capture installed; returns the cdc.toml."""

    def make(wal: bool, rows: int = 0) -> Path:
        fill = "".join(
            f"INSERT INTO positions(symbol, qty, px) VALUES ('P{i}', {i}, {i}.5);"
            f"INSERT INTO log_lines VALUES ('seed {i}', {i});"
            for i in range(rows)
        )
        make_db(tmp_path / "legacy" / "bot.db", SCHEMA + fill, wal=wal)
        cfg = write_config(tmp_path, BOT_CONFIG)
        assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
        return cfg

    return make


# -- the disk-full tests (test_disk_full.py, test_disk_full_bots.py) ----------------------


DISK_CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
analytics = "out/analytics.db"
[daemon]
harvest_batch = 500
snapshot_chunk = 200
apply_batch = 700
segment_bytes = 131072
trim_interval = 0.2
[log]
retention = "archive"
archive_dir = "archive"
[[sources]]
name = "alpha"
path = "legacy/alpha.db"
[[sources]]
name = "beta"
path = "legacy/beta.db"
[[sources]]
name = "gamma"
path = "legacy/gamma.db"
[[rules]]
table = "positions"
target = "core"
merge = true
tag_column = "bot"
[[rules]]
table = "kv"
target = "core"
as = "{source}_kv"
[[rules]]
table = "ticks"
target = "analytics"
merge = true
[[rules]]
table = "log_lines"
target = "analytics"
as = "{source}_log"
"""


@pytest.fixture
def disk_cfg(tmp_path: Path) -> Callable[..., Path]:
    """`make(config=DISK_CONFIG, files=workload.FILES, seed_rows=200, extra="")`: legacy
    files in tmp_path as tests/support/workload.py makes them (written with apsw: the disk
    tests read them with apsw later, never with the stdlib sqlite3), the config, `cdc
    install`; returns the cdc.toml."""
    return lambda **kw: _disk_setup(tmp_path, **kw)


def _disk_setup(
    root: Path,
    config: str = DISK_CONFIG,
    files=workload.FILES,  # noqa: ANN001
    seed_rows: int = 200,
    extra: str = "",
) -> Path:
    seed = "".join(
        f"INSERT INTO positions(symbol, qty, px) VALUES ('P{i}', {i}, {i * 0.5});"
        f"INSERT INTO log_lines VALUES ('seed', {i});"
        for i in range(seed_rows)
    )
    for name, wal in files:
        path = root / "legacy" / f"{name}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        c = apsw.Connection(str(path))
        if wal:
            c.execute("PRAGMA journal_mode=WAL").fetchall()
        c.execute(workload.SCHEMA + extra + seed)
        c.close()
    cfg = write_config(root, config)
    r = cdc_cmd("install", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    return cfg


def unequal(cfg: Path) -> list:
    return [d for d in compare_plan(resolve_plan(load_config(cfg))) if not d.equal]


def assert_log_sound(cfg: Path) -> None:
    """`cdc log check` passes; every captured sequence was harvested once; every target
    applied exactly the events the log holds for it (nothing twice, nothing lost)."""
    r = cdc_cmd("log", "check", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    conf = load_config(cfg)
    plan = resolve_plan(conf)
    assert RetainedLog.of(conf).start() == 0, "the archive must hold the whole history"
    counted = count_log(conf, plan)
    assert counted.repeats == [], counted.repeats[:3]
    per_target = counted.per_target
    for name, path in plan.targets.items():
        c = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            applied = c.execute(f"SELECT events FROM {TABLE}").fetchone()[0]
        finally:
            c.close()
        assert applied == per_target[name], f"{name}: applied {applied} != {per_target[name]}"


def last_errors(st: dict, kind: str) -> dict[str, str | None]:
    return {x["name"]: x["last_error"] for x in st[kind]}
