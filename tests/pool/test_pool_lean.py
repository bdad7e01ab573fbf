"""A bot that only borrows connections loads only what borrowing needs (docs/pool.md, "What
importing the pool loads").

Each check runs in a fresh interpreter (`python -c`), since this test process has long
imported everything. Structural only: which modules are in `sys.modules` after the work, never
how long the import took (the timings are bench/test_pool_import.py's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cdc.config import load_config
from cdc.pool import registry
from tests.conftest import make_db

REPO = Path(__file__).resolve().parents[2]

# Never needed to lend a connection: the capture and everything it drags in.
HEAVY = (
    "cdc.capture",
    "cdc.changelog",
    "cdc.planning",
    "cdc.inventory",
    "cdc.exact_text",
    "cdc.events",
    "cdc.daemon",
    "cdc.cutover",
    "cdc.cli",
    "verifier",
    "replicator",
    "checkpoints",
    "prometheus_client",
)

_CHILD = r"""
import json, sys
from cdc import pool
imported = set(sys.modules)
pool.configure(sys.argv[1])
for name in sys.argv[2:]:
    with pool.connection(name) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v)")
        conn.execute("INSERT INTO t(v) VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchall()[0][0] >= 1
print(json.dumps({
    "at_import": sorted(imported),
    "after": sorted(sys.modules),
    "metrics": [m.database for m in pool.metrics()],
}))
"""


def _run(config: Path, *names: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(config), *names],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def _config(tmp_path: Path, capture: str = "triggers") -> Path:
    make_db(tmp_path / "bot.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    path = tmp_path / "cdc.toml"
    path.write_text(
        f"""state_dir = "state"
targets = {{ core = "core.db" }}

[[sources]]
name = "bot"
path = "bot.db"
capture = "{capture}"

[[rules]]
table = "*"
target = "core"
"""
    )
    return path


def test_borrowing_a_target_loads_no_capture_log_or_planning(tmp_path):
    got = _run(_config(tmp_path), "core")
    assert got["metrics"] == ["core"]
    assert _heavy(got["at_import"]) == []
    assert _heavy(got["after"]) == []
    assert "apsw" in got["after"]
    assert (tmp_path / "state" / "pools").is_dir()  # the metrics were still published


def test_borrowing_a_trigger_captured_source_loads_no_capture_or_planning(tmp_path):
    """A source name is found through the glob expansion of `cdc.config`; the capture
    stays unloaded unless the source uses hooks, the planning and the change log always."""
    got = _run(_config(tmp_path), "bot")
    assert got["metrics"] == ["bot"]
    assert _heavy(got["at_import"]) == []
    assert _heavy(got["after"]) == []


def test_hook_capture_only_for_a_source_that_asks_for_it(tmp_path):
    cfg = load_config(_config(tmp_path / "hooks", capture="hooks"))
    assert registry._capture_factory(cfg, "core") is None
    assert registry._capture_factory(cfg, "bot") is not None
    cfg = load_config(_config(tmp_path / "triggers"))
    assert registry._capture_factory(cfg, "bot") is None
