"""cdc.pool across a process: the registry finds pools by name from cdc.toml (or the
environment), a forked child starts with its own pools, a hooks source is captured through
a pool, and the exact metrics file is read back by `cdc status` in another process while
the writer lives, and dropped once it has exited. Lending itself is test_pool.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cdc import pool
from cdc.config import config_from_dict, load_config
from cdc.errors import ConfigError
from cdc.pool.stats import metrics_path, read_pool_metrics
from tests.conftest import REPO, cdc_cmd, make_db, write_config


def _write_cdc_toml(root: Path, **pool_settings) -> Path:
    make_db(root / "legacy" / "bots" / "a.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v);")
    settings = "".join(f"{k} = {json.dumps(v)}\n" for k, v in pool_settings.items())
    return write_config(
        root,
        f"""state_dir = "state"

[targets]
core = "targets/core.db"
cache = "targets/cache.db"

[[sources]]
name = "bot_{{stem}}"
path = "legacy/bots/*.db"

[[rules]]
table = "*"
target = "core"

[pool]
{settings}""",
    )


def test_the_registry_finds_targets_and_sources_by_name(tmp_path):
    pool.configure(_write_cdc_toml(tmp_path, size=2))
    with pool.connection("core") as c:
        c.execute("CREATE TABLE x(a)")
    with pool.connection("bot_a") as c:  # a source from a glob
        c.execute("INSERT INTO t(v) VALUES ('via pool')")
    with pytest.raises(ConfigError) as e, pool.connection("nope"):
        pass
    assert "nope" in str(e.value)
    names = {(m.database, m.kind) for m in pool.metrics()}
    assert names == {("core", "target"), ("bot_a", "legacy")}
    assert all(not m.hooks for m in pool.metrics())
    assert (tmp_path / "targets" / "core.db").exists()


def test_the_registry_reads_cdc_config_from_the_environment(tmp_path, monkeypatch):
    cfg = _write_cdc_toml(tmp_path)
    monkeypatch.setenv("CDC_CONFIG", str(cfg))
    with pool.connection("cache") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [m.database for m in pool.metrics()] == ["cache"]


def test_a_forked_child_starts_with_its_own_pools(tmp_path):
    pool.configure(_write_cdc_toml(tmp_path))
    with pool.connection("core") as c:
        c.execute("CREATE TABLE t(who)")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            with pool.connection("core") as c:
                c.execute("INSERT INTO t VALUES ('child')")
            (m,) = pool.metrics()  # a new pool: the parent's had one checkout already
            code = 0 if m.checkouts == 1 and m.pid == os.getpid() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pool.connection("core") as c:  # the parent's pool is untouched
        assert c.execute("SELECT who FROM t").fetchall() == [("child",)]
    (m,) = pool.metrics()
    assert m.checkouts == 2 and m.pid == os.getpid()


def test_a_hooks_source_is_captured_through_the_pool(tmp_path, pipeline_for):
    make_db(tmp_path / "bot.db", "CREATE TABLE kv(k TEXT PRIMARY KEY, v);")
    cfg = load_config(
        write_config(
            tmp_path,
            """state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "bot"
path = "bot.db"
capture = "hooks"
[[rules]]
table = "*"
target = "core"
""",
        )
    )
    p = pipeline_for(cfg)  # installs capture
    pool.configure(cfg)
    for i in range(5):
        with pool.connection("bot") as c:
            c.execute("INSERT INTO kv VALUES (?, ?)", (f"k{i}", i))
    with pool.connection("bot") as c:
        c.execute("UPDATE kv SET v = v + 1")
    (m,) = pool.metrics()
    assert m.hooks and m.extra == {"changes_captured": 10}
    p.sync()
    assert p.diffs() == []
    h = p.harvesters[0]
    assert h.hook_rows > 0 and h.foreign_rows == 0  # every change came through the pool


def test_metrics_file_is_private_and_atomic(tmp_path):
    cfg = load_config(_write_cdc_toml(tmp_path, metrics_interval=0.0))
    pool.configure(cfg)
    for _ in range(3):
        with pool.connection("core") as c:
            c.execute("SELECT 1").fetchall()
    path = Path(metrics_path(cfg.state_dir, os.getpid()))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    (mine,) = read_pool_metrics(cfg.state_dir)
    assert mine.database == "core" and mine.checkouts == 3 and mine.pid == os.getpid()
    (path.parent / "123.json").write_bytes(b"{not json")  # unreadable: skipped
    assert len(read_pool_metrics(cfg.state_dir)) == 1


_CHILD = """
import sys
from cdc import pool
pool.configure(sys.argv[1])
for i in range(20):
    with pool.connection("core") as c:
        c.execute("CREATE TABLE IF NOT EXISTS w(i)")
        c.execute("INSERT INTO w VALUES (?)", (i,))
with pool.connection("bot_a") as c:
    c.execute("SELECT count(*) FROM t").fetchall()
pool.close_all()   # publishes the figures now (the interval is long)
with pool.connection("core") as c:  # the config stays: new pools on demand
    c.execute("SELECT 1").fetchall()
print("ready", flush=True)
sys.stdin.readline()
"""


def test_cdc_status_shows_a_live_process_pools_and_drops_them_after_it_exits(tmp_path):
    cfg_path = _write_cdc_toml(tmp_path, size=3, metrics_interval=3600.0)
    cfg = load_config(cfg_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(cfg_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        pid_file = Path(metrics_path(cfg.state_dir, child.pid))
        assert stat.S_IMODE(pid_file.stat().st_mode) == 0o600

        r = cdc_cmd("status", "--json", "-c", str(cfg_path))
        assert r.returncode == 0, r.stderr
        pools = {p["database"]: p for p in json.loads(r.stdout)["pools"]}
        assert set(pools) == {"core", "bot_a"}
        core = pools["core"]
        assert core["pid"] == child.pid and core["checkouts"] == 20 and core["size"] == 3
        assert core["open"] == 0 and core["errors"] == 0 and core["kind"] == "target"
        assert pools["bot_a"]["kind"] == "legacy" and pools["bot_a"]["checkouts"] == 1

        text = cdc_cmd("status", "-c", str(cfg_path))
        assert text.returncode == 0, text.stderr
        assert f"pool core pid {child.pid}: 0/3 open, 0 in use, 20 checkouts" in text.stdout
    finally:
        child.communicate("\n", timeout=30)
    assert child.returncode == 0
    assert pid_file.exists()  # written again at exit, until a reader sees the pid gone

    r = cdc_cmd("status", "--json", "-c", str(cfg_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pools"] == []
    assert not pid_file.exists()


def test_config_checks_pool_settings(tmp_path):
    base = {"targets": {"core": "core.db"}, "sources": []}
    with pytest.raises(ConfigError, match="pool"):
        config_from_dict({**base, "pool": {"size": 0}}, tmp_path)
    with pytest.raises(ConfigError, match="synchronous"):
        config_from_dict({**base, "pool": {"synchronous": "SOMETIMES"}}, tmp_path)
