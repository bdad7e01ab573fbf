"""A table whose initial copy finishes after the verifier's pass is verified soon after,
not a whole `cycle_pause` later.

Seen on the corpus: right after start, `cdc status` listed 63 tables as SKIPPED "initial
copy still in progress" for a minute and more while its snapshot column said `done`,
because the first pass ran while the copy was being applied and the next one waited for
the pause between passes."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import cdc_cmd, make_db, wait_until, write_config

CONFIG = """
state_dir = "state"
[targets]
core = "core.db"
[verify]
cycle_pause = 600
rows_per_second = 0
[[sources]]
name = "a"
path = "legacy/a.db"
[[rules]]
source = "a"
table = "*"
target = "core"
"""


def _tables(d) -> list[dict]:  # noqa: ANN001 - a DaemonProcess
    v = d.status().get("verifier")
    return v["tables"] if v else []


def test_a_copy_applied_after_the_pass_is_verified_without_waiting_a_cycle(
    tmp_path: Path, daemons
) -> None:
    rows = "".join(f"INSERT INTO t(v) VALUES ({i});" for i in range(500))
    make_db(tmp_path / "legacy" / "a.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v);" + rows)
    cfg = str(write_config(tmp_path, CONFIG))
    assert cdc_cmd("install", "-c", cfg).returncode == 0
    assert cdc_cmd("pause", "--apply", "core", "-c", cfg).returncode == 0
    d = daemons(Path(cfg))
    wait_until(
        lambda: [t["state"] for t in _tables(d)] == ["skipped"], 30, 0.2, "the pass skipping t"
    )
    assert cdc_cmd("resume", "--apply", "core", "-c", cfg).returncode == 0
    wait_until(lambda: [t["state"] for t in _tables(d)] == ["equal"], 30, 0.2, "t verified")
    assert d.stop() == 0
