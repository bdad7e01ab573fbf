"""`pool.record_queries`: each pooled connection's statements, normalised (placeholders kept),
counted, timed into a histogram, with the first parameters (storage classes kept) and the
database; written beside the metrics file and merged across processes; off by default.
Real pools, real files, a second real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cdc import pool
from cdc.config import load_config
from cdc.pool import recorded
from cdc.pool.recorded import BOUNDS_US, queries_dir, read_recorded
from tests.conftest import REPO, make_db, write_config


def _config(root: Path, record: bool | None) -> Path:
    make_db(root / "legacy" / "a.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v);")
    setting = "" if record is None else f"record_queries = {json.dumps(record)}\n"
    return write_config(
        root,
        f"""state_dir = "{root}/state"
[targets]
core = "{root}/core.db"
[[sources]]
name = "a"
path = "{root}/legacy/a.db"
[[rules]]
table = "*"
target = "core"
[pool]
metrics_interval = 0.0
{setting}""",
    )


WORK = """
from cdc import pool
pool.configure({cfg!r})
with pool.connection("a") as c:
    for i in range({n}):
        c.execute("INSERT INTO t(v) VALUES (?)", (i,))
        c.execute("SELECT v FROM t WHERE id = ?", (i + 1,)).fetchall()
pool.close_all()
"""


def _work(cfg: Path, n: int) -> None:
    exec(WORK.format(cfg=str(cfg), n=n), {})  # noqa: S102 - the same code the child runs


def test_statements_are_recorded_normalised_counted_and_histogrammed(tmp_path):
    cfg = _config(tmp_path, True)
    pool.configure(cfg)
    with pool.connection("a") as c:
        c.execute("INSERT INTO t(v) VALUES (?)", (b"\x00\xff",))
        c.execute("INSERT INTO t(v) VALUES (?)", ("5",))
        for i in (1, 2, 2):
            assert len(c.execute("SELECT v FROM t WHERE id = :id", {"id": i}).fetchall()) == 1
        c.execute("SELECT 1; SELECT 2").fetchall()
    p = pool._registry().pool("a")
    got = {s.sql: s for s in p.recorded()}
    ins = got["INSERT INTO t(v) VALUES (?)"]
    assert ins.count == 2 and ins.database == "a" and ins.kind == "legacy"
    assert ins.params() == [b"\x00\xff"]  # the first one seen, a blob still
    sel = got["SELECT v FROM t WHERE id = :id"]
    assert sel.count == 3 and sel.params() == {"id": 1}
    assert len(sel.buckets) == len(BOUNDS_US) + 1 and sum(sel.buckets) == 3
    assert 0 < sel.max_ns <= sel.total_ns
    assert got["SELECT 1;"].count == 1 and got["SELECT 2"].count == 1
    assert not any(s.startswith("PRAGMA") for s in got)  # the pool's own settings are not

    pool.close_all()  # writes the file, as the metrics file is written
    [written] = list(Path(queries_dir(str(tmp_path / "state"))).glob("*.json"))
    assert oct(written.stat().st_mode & 0o777) == "0o600"
    on_disk = {s.sql: s for s in read_recorded(str(tmp_path / "state"))}
    assert on_disk["SELECT v FROM t WHERE id = :id"].buckets == sel.buckets
    assert on_disk["INSERT INTO t(v) VALUES (?)"].params() == [b"\x00\xff"]


def test_distinct_statements_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(recorded, "MAX_STATEMENTS", 3)
    pool.configure(_config(tmp_path, True))
    with pool.connection("a") as c:
        for i in range(10):  # values written into the text: a new statement each time
            c.execute(f"SELECT {i}").fetchall()
    got = {s.sql: s.count for s in pool._registry().pool("a").recorded()}
    assert len(got) == 4 and got[recorded.OTHERS] == 7


def test_files_of_two_processes_are_merged(tmp_path):
    cfg = _config(tmp_path, True)
    _work(cfg, 5)
    child = subprocess.run(
        [sys.executable, "-c", WORK.format(cfg=str(cfg), n=7)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    state = tmp_path / "state"
    assert len(list(Path(queries_dir(str(state))).glob("*.json"))) == 2
    got = {s.sql: s for s in read_recorded(str(state))}
    sel = got["SELECT v FROM t WHERE id = ?"]
    assert sel.count == 12 and sum(sel.buckets) == 12
    assert got["INSERT INTO t(v) VALUES (?)"].count == 12


def test_recording_is_off_by_default(tmp_path):
    cfg = _config(tmp_path, None)
    assert load_config(cfg).pool.record_queries is False
    _work(cfg, 3)
    assert read_recorded(str(tmp_path / "state")) == []
    assert not Path(queries_dir(str(tmp_path / "state"))).exists()
    assert (tmp_path / "state" / "pools").exists()  # the metrics file was written
