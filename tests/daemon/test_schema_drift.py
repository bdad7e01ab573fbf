"""Schema drift on a live system: what the bots do to their tables while the daemon runs.

The real bots add columns at start-up, create tables with `CREATE TABLE IF NOT EXISTS`,
and some rewrite a table by dropping and creating it. Each is a named behaviour here
(docs/architecture.md, "Schema drift"), tested with a real daemon process; the windows
that matter (rows written after a change and before the daemon looks) are made certain by
pausing the daemon's harvest (`cdc pause`) while the bot works.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager

from cdc.changelog.retained import RetainedLog
from cdc.config import load_config
from cdc.events import RowBatch, TableReset, TableSchema
from cdc.planning.resolve import resolve_plan
from tests.conftest import cdc_cmd, make_db, wait_until, write_config
from tests.support.workload import SCHEMA
from verifier import compare_plan

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[log]
retention = "archive"
[daemon]
snapshot_chunk = 40
[[sources]]
name = "bot"
path = "legacy/bot.db"
[[rules]]
table = "*"
target = "core"
"""


def _setup(tmp_path, config: str = CONFIG, rows: int = 100):
    fill = "".join(
        f"INSERT INTO positions(symbol, qty, px) VALUES ('P{i}', {i}, {i}.5);"
        f"INSERT INTO kv VALUES ('k{i}', {i});"
        for i in range(rows)
    )
    make_db(tmp_path / "legacy" / "bot.db", SCHEMA + fill)
    cfg = write_config(tmp_path, config)
    r = cdc_cmd("install", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    return cfg


def _bot(tmp_path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "legacy" / "bot.db", isolation_level=None, timeout=5)


def _unequal(cfg) -> list:
    return [d for d in compare_plan(resolve_plan(load_config(cfg), strict=False)) if not d.equal]


def _target(tmp_path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{tmp_path / 'out' / 'core.db'}?mode=ro", uri=True)


@contextmanager
def frozen(d):
    """The daemon kept away from the legacy file (`cdc pause`) while the block runs: what
    the bot does in it happens after the daemon's last look and before its next one."""
    n = d.output().count("controls now")
    assert cdc_cmd("pause", "-c", str(d.config), "bot").returncode == 0
    wait_until(lambda: d.output().count("controls now") > n, 10, what="the pause")
    time.sleep(0.3)  # a harvest already under way ends (they take milliseconds)
    try:
        yield
    finally:
        assert cdc_cmd("resume", "-c", str(d.config), "bot").returncode == 0


def _frames(cfg, table: str) -> list:
    log = RetainedLog.of(load_config(cfg))
    return [
        e.frame
        for batch in log.batches(0)
        for e in batch
        if getattr(e.frame, "table", None) == table
    ]


def test_added_column_keeps_every_value_written_before_the_daemon_noticed(tmp_path, daemons):
    cfg = _setup(tmp_path)
    d = daemons(cfg)
    d.wait_synced()
    c = _bot(tmp_path)
    with frozen(d):
        c.execute("ALTER TABLE positions ADD COLUMN note TEXT DEFAULT 'none'")
        c.execute("UPDATE positions SET note = 'between' WHERE id <= 10")
        c.execute("INSERT INTO positions(symbol, note) VALUES ('NEW', x'00ff')")
        c.execute("ALTER TABLE positions ADD COLUMN score REAL")
        c.execute("UPDATE positions SET score = -0.0 WHERE id % 7 = 0")
    d.wait_synced()
    c.execute("UPDATE positions SET note = 'after', score = 1e-300 WHERE id = 3")
    d.wait_synced()
    assert d.stop() == 0, d.output()
    assert _unequal(cfg) == []
    t = _target(tmp_path)
    assert t.execute("SELECT count(*) FROM positions WHERE note = 'between'").fetchone() == (9,)
    assert t.execute("SELECT typeof(note) FROM positions WHERE symbol = 'NEW'").fetchone() == (
        "blob",
    )
    assert t.execute("SELECT note, score FROM positions WHERE id = 3").fetchone() == (
        "after",
        1e-300,
    )

    # The log holds each shape before the rows of that shape, and both decode.
    shapes = [len(f.columns) for f in _frames(cfg, "positions") if isinstance(f, TableSchema)]
    assert shapes[0] == 6 and shapes[-1] == 8, shapes
    width = None
    for f in _frames(cfg, "positions"):
        if isinstance(f, TableSchema):
            width = len(f.columns)
        elif isinstance(f, RowBatch):
            assert all(len(e.row) == width for e in f.events if e.row is not None), width


def test_a_table_created_and_mapped_mid_run_is_captured_from_its_first_row(tmp_path, daemons):
    cfg = _setup(tmp_path, rows=5)
    d = daemons(cfg)
    d.wait_synced()
    pid = d.status()["daemon"]["pid"]
    c = _bot(tmp_path)
    with frozen(d):  # rows before capture can be installed on it: the snapshot has them
        c.execute("CREATE TABLE IF NOT EXISTS budget_alerts(id INTEGER PRIMARY KEY, msg TEXT)")
        c.executemany(
            "INSERT INTO budget_alerts(msg) VALUES (?)", [(f"early {i}",) for i in range(100)]
        )
    wait_until(lambda: "budget_alerts" in d.output() and "starting over" in d.output(), 30)
    c.execute("INSERT INTO budget_alerts(msg) VALUES ('streamed')")
    c.execute("UPDATE budget_alerts SET msg = 'changed' WHERE id = 1")
    c.execute("DELETE FROM budget_alerts WHERE id = 2")
    st = d.wait_synced()
    assert st["daemon"]["pid"] == pid  # started over in-process, not restarted
    assert d.stop() == 0, d.output()
    assert _unequal(cfg) == []
    t = _target(tmp_path)
    assert t.execute("SELECT count(*) FROM budget_alerts").fetchone() == (100,)
    assert t.execute("SELECT msg FROM budget_alerts WHERE id = 1").fetchone() == ("changed",)


def test_an_unmapped_table_is_named_and_the_rest_keeps_running_also_after_restart(
    tmp_path, daemons
):
    cfg = _setup(
        tmp_path,
        CONFIG.replace('table = "*"', 'table = "positions"')
        + '[[rules]]\ntable = "kv"\ntarget = "core"\n'
        + '[[rules]]\ntable = "ticks"\nexclude = true\n'
        + '[[rules]]\ntable = "log_lines"\nexclude = true\n',
    )
    d = daemons(cfg)
    d.wait_synced()
    c = _bot(tmp_path)
    c.execute("CREATE TABLE IF NOT EXISTS surprise(id INTEGER PRIMARY KEY, v)")
    wait_until(lambda: "surprise appeared" in d.output(), 30, what="the warning")
    assert d.stop() == 0

    d = daemons(cfg)  # a restart must not refuse to run: that would stop every table
    c.execute("INSERT INTO kv VALUES ('after restart', 1)")
    st = d.wait_synced()
    assert any("'surprise'" in p and "no rule" in p for p in st["problems"]), st["problems"]
    assert "surprise of source bot is matched by no rule" in d.output()
    assert d.stop() == 0
    assert _unequal(cfg) == []
    r = cdc_cmd("check", "-c", str(cfg))  # the operator's check still refuses it
    assert r.returncode != 0 and "'surprise'" in r.stderr


def test_a_dropped_table_is_named_and_the_others_keep_replicating(tmp_path, daemons):
    cfg = _setup(tmp_path)
    d = daemons(cfg)
    d.wait_synced()
    c = _bot(tmp_path)
    with frozen(d):
        c.execute("UPDATE kv SET v = 'last words' WHERE k = 'k1'")  # its image is gone too
        c.execute("DROP TABLE kv")
    c.execute("INSERT INTO positions(symbol) VALUES ('still here')")
    d.wait_synced()
    st = wait_until(
        lambda: (s := d.status()) and any("'kv'" in p for p in s["problems"]) and s,
        10,
        what="the status to name the dropped table",
    )
    lost = [p for p in st["problems"] if "'kv'" in p]
    assert "dropped" in lost[0] and "keeps the rows" in lost[0], st["problems"]
    assert [s["last_error"] for s in st["sources"]] == [None]
    errors = d.status()["sources"][0]
    c.execute("INSERT INTO positions(symbol) VALUES ('and here')")
    d.wait_synced()
    assert d.status()["sources"][0]["last_error"] is None and errors["last_error"] is None
    assert d.proc.poll() is None
    assert d.stop() == 0
    t = _target(tmp_path)
    assert t.execute("SELECT count(*) FROM kv").fetchone() == (100,)  # the last copy
    assert t.execute("SELECT count(*) FROM positions WHERE symbol LIKE '%here'").fetchone() == (2,)

    d = daemons(cfg)  # after a restart the dropped table is still named
    st = d.wait_synced()
    assert any("'kv'" in p and "dropped" in p for p in st["problems"]), st["problems"]
    assert d.stop() == 0


def test_drop_and_create_again_resets_the_target_table(tmp_path, daemons):
    """A whole-table rewrite by DROP + CREATE fires no trigger and takes ours with it:
    the daemon puts capture back and sends the table afresh, after a reset."""
    cfg = _setup(tmp_path)
    d = daemons(cfg)
    d.wait_synced()
    c = _bot(tmp_path)
    with frozen(d):
        c.execute("BEGIN IMMEDIATE")
        c.execute("DROP TABLE kv")
        c.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v)")
        c.executemany("INSERT INTO kv VALUES (?, ?)", [(f"n{i}", i * 0.5) for i in range(30)])
        c.execute("COMMIT")
    d.wait_synced()
    c.execute("INSERT INTO kv VALUES ('streamed', x'01')")  # captured again
    d.wait_synced()
    assert d.stop() == 0, d.output()
    assert _unequal(cfg) == []
    t = _target(tmp_path)
    assert t.execute("SELECT count(*) FROM kv").fetchone() == (31,)
    assert any(isinstance(f, TableReset) for f in _frames(cfg, "kv"))

    # The same while the daemon is down: found at start, same outcome.
    c.execute("DROP TABLE kv")
    c.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v)")
    c.execute("INSERT INTO kv VALUES ('only', 1)")
    d = daemons(cfg)
    d.wait_synced()
    c.execute("INSERT INTO kv VALUES ('then', 2)")
    d.wait_synced()
    assert d.stop() == 0, d.output()
    assert _unequal(cfg) == []
    assert t.execute("SELECT k FROM kv ORDER BY k").fetchall() == [("only",), ("then",)]


def test_a_renamed_table_is_a_new_table_and_the_old_name_is_named(tmp_path, daemons):
    cfg = _setup(tmp_path)
    d = daemons(cfg)
    d.wait_synced()
    c = _bot(tmp_path)
    c.execute("ALTER TABLE kv RENAME TO kv_archive")
    c.execute("INSERT INTO kv_archive VALUES ('after rename', 1)")
    wait_until(lambda: "starting over" in d.output(), 30, what="the start-over")
    c.execute("INSERT INTO kv_archive VALUES ('streamed', 2)")
    st = d.wait_synced()
    assert d.stop() == 0, d.output()
    assert _unequal(cfg) == []  # kv_archive, mapped by `*`, was copied and is captured
    t = _target(tmp_path)
    assert t.execute("SELECT count(*) FROM kv_archive").fetchone() == (102,)
    assert t.execute("SELECT count(*) FROM kv").fetchone() == (100,)  # as of the rename
    legacy = _bot(tmp_path)
    ours = legacy.execute(
        "SELECT count(*) FROM sqlite_schema WHERE type='trigger' AND tbl_name='kv_archive'"
    ).fetchone()[0]
    assert ours > 0  # the new table's own capture, not the old one's triggers twice
    del st
