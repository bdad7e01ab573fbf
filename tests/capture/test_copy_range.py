"""The initial copy by reference (`cdc.events.CopyRange`, `replicator.copy_range`): the log
carries key ranges, the apply side copies their rows from the legacy file inside SQLite.

The oracle is the copy through the log (`daemon.snapshot_copy = "log"`), which the rest of
the suite has proven for a long time, and an independent (typeof, hex) image of both
files: the two ways must leave the same bytes and storage classes in the target, and the
log must show that the fast way was the one taken. Then what happens between a range's
frame and its copy: writes, a widened table, a reshaped one, a dropped one.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from cdc.changelog.segments import LogReader
from cdc.errors import TargetBusyError
from cdc.events import CopyRange, RowBatch, TableReset
from cdc.sqlconn import open_target
from tests.conftest import cdc_cmd, make_db, write_config
from tests.support.images import bot, image

SCHEMA = """
CREATE TABLE typed(id INTEGER PRIMARY KEY, r REAL, i INTEGER, t TEXT, b BLOB, n NUMERIC, u);
CREATE TABLE nokey(a, v);
CREATE TABLE wr(a TEXT, b INTEGER, v, PRIMARY KEY(a, b)) WITHOUT ROWID;
CREATE TABLE nullkey(a TEXT, b INTEGER, v, PRIMARY KEY(a, b));
CREATE TABLE uniq(id INTEGER PRIMARY KEY, code TEXT UNIQUE, v);
CREATE TABLE m(k TEXT PRIMARY KEY COLLATE NOCASE, v);
CREATE TABLE mb(k INTEGER PRIMARY KEY, v);
"""

SCHEMA_B = """
CREATE TABLE m(k TEXT PRIMARY KEY, v);
CREATE TABLE mb(k INTEGER PRIMARY KEY, v);
INSERT INTO m VALUES ('alpha', 'b'), ('BETA', 'b');
INSERT INTO mb VALUES (1, 'b');
"""

ROWS = [
    # typed: edge values in every column, a TEXT that is not UTF-8, -0.0, a big BLOB
    "INSERT INTO typed VALUES (1, -0.0, 9223372036854775807, 'é', x'00ff', '1.0', 1.5)",
    "INSERT INTO typed VALUES (2, 1e-300, -1, CAST(x'41ff42' AS TEXT), zeroblob(3000000),"
    " 'abc', x'')",
    "INSERT INTO typed VALUES (3, 0.1, 2.0, '', NULL, 2, CAST(x'ff' AS TEXT))",
    "WITH RECURSIVE n(i) AS (SELECT 11 UNION ALL SELECT i + 1 FROM n WHERE i < 50) "
    "INSERT INTO typed(id, r) SELECT i, i / 3.0 FROM n",
    "INSERT INTO nokey VALUES (1, 'one'), ('1', 'text one'), (1.0, 'real one'), (NULL, x'01')",
    "INSERT INTO wr VALUES ('a', 1, 1), ('a', 2, 2.0), ('b', 1, '3'), ('é', -1, NULL)",
    "INSERT INTO nullkey VALUES ('a', 1, 1), (NULL, 2, 'null a'), ('b', NULL, 'null b'),"
    " (NULL, NULL, 'both'), ('c', 3, 3)",
    "INSERT INTO uniq VALUES (1, 'x', 1), (2, 'y', 2), (3, NULL, 3)",
    "INSERT INTO m VALUES ('Alpha', 1), ('beta', 2), ('GAMMA', 3), ('d ', 4)",
    "INSERT INTO mb VALUES (1, 'a'), (2, 'b'), (3, 'c')",
]

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
snapshot_chunk = 4
snapshot_copy = "{copy}"
[[sources]]
name = "a"
path = "legacy/a.db"
[[sources]]
name = "b"
path = "legacy/b.db"
[[rules]]
table = "m"
target = "core"
merge = true
[[rules]]
table = "mb"
target = "core"
merge = true
[[rules]]
table = "*"
target = "core"
"""

COPIED = ["typed", "nokey", "wr", "nullkey", "uniq"]


def _files(root: Path, wal: bool) -> Path:
    a = make_db(root / "legacy" / "a.db", SCHEMA, wal=wal)
    make_db(root / "legacy" / "b.db", SCHEMA_B)
    c = bot(a)
    for sql in ROWS:
        c.execute(sql)
    c.close()
    return a


def _frames(root: Path) -> list:
    r = LogReader(str(root / "state" / "log"))
    return [e.frame for e in r.read(0, None, max_frames=1_000_000)]


def _logged_not_copied(tmp_path: Path, pipeline_for, wal: bool):
    """Every range of the initial copy by reference in the log, none copied yet."""
    root = tmp_path / "r"
    a = _files(root, wal=wal)
    p = pipeline_for(write_config(root, CONFIG.format(copy="reference")))
    p.snapshot()
    return root, a, p


def _copy(tmp_path: Path, pipeline_for, copy: str, wal: bool = False):
    root = tmp_path / copy
    a = _files(root, wal)
    p = pipeline_for(write_config(root, CONFIG.format(copy=copy)))
    p.sync()
    assert p.diffs() == []
    return root, a, p


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
def test_by_reference_leaves_the_bytes_the_log_copy_leaves(tmp_path, pipeline_for, wal):
    ref, a, _ = _copy(tmp_path, pipeline_for, "reference", wal)
    log_root, _, _ = _copy(tmp_path, pipeline_for, "log", wal)
    target, oracle = ref / "out" / "core.db", log_root / "out" / "core.db"
    for t in COPIED:
        assert image(target, t) == image(a, t) == image(oracle, t), t
    for t in ("m", "mb"):
        for src in ("a", "b"):
            where = f"WHERE source = '{src}'"
            assert image(target, t, where) == image(oracle, t, where), (t, src)
    # the fast way was taken: every chunk but the NULL keys' rows went as a range
    frames = _frames(ref)
    ranges = {f.table for f in frames if isinstance(f, CopyRange)}
    assert ranges == {*COPIED, "m", "mb"}
    by_value = [f for f in frames if isinstance(f, RowBatch) and f.events]
    assert {f.table for f in by_value} == {"nullkey"}
    assert all(len(e.key) == 3 for f in by_value for e in f.events)  # key + rowid: NULLs
    assert not any(isinstance(f, CopyRange) for f in _frames(log_root))


def test_writes_between_the_range_and_its_copy(tmp_path, pipeline_for):
    """Rows changed after the range was logged and before the apply read it: the copy
    reads them newer, and the harvest that follows (with images read before the copy, or
    after) ends at the legacy table's newest image either way."""
    root, a, p = _logged_not_copied(tmp_path, pipeline_for, wal=True)
    c = bot(a)
    c.execute("UPDATE typed SET t = 'changed', r = -0.0 WHERE id IN (1, 12)")
    c.execute("DELETE FROM typed WHERE id IN (2, 13)")
    c.execute("INSERT INTO typed(id, t) VALUES (5, 'new, inside a range')")
    c.execute("UPDATE wr SET v = 'w' WHERE a = 'a'")
    p.harvest()  # images read now: before the copy
    c.execute("UPDATE typed SET t = 'after the harvest' WHERE id = 1")
    c.execute("DELETE FROM wr WHERE a = 'b'")
    p.apply()  # the copy reads the newest rows; the older harvest is applied after it
    p.sync()
    target = root / "out" / "core.db"
    for t in COPIED:
        assert image(target, t) == image(a, t), t
    assert p.diffs() == []


def test_a_column_added_between_the_range_and_its_copy(tmp_path, pipeline_for):
    root, a, p = _logged_not_copied(tmp_path, pipeline_for, wal=False)
    c = bot(a)
    c.execute("ALTER TABLE typed ADD COLUMN extra TEXT DEFAULT 'd'")
    c.execute("UPDATE typed SET extra = 'set' WHERE id = 3")
    p.apply()  # the widened table's first columns, by the frame's names
    p.sync()
    assert image(root / "out" / "core.db", "typed") == image(a, "typed")
    assert p.diffs() == []


def test_a_reshaped_table_waits_for_its_reset(tmp_path, pipeline_for):
    """A column renamed after the range was logged: the copy must not read the renamed
    table by the old names. The apply waits (a retry) until the harvester's reset is in
    the log, then skips the range; the reset's fresh copy makes the target exact."""
    root, a, p = _logged_not_copied(tmp_path, pipeline_for, wal=False)
    bot(a).execute("ALTER TABLE typed RENAME COLUMN t TO tt")
    p.replicator.step(p.writer.end_offset)
    err = p.replicator.errors.get("core")
    assert isinstance(err, TargetBusyError) and "renamed or dropped" in str(err), err
    p.harvest()  # the harvester sees the rename: a reset, then a fresh copy
    assert any(isinstance(f, TableReset) and f.table == "typed" for f in _frames(root))
    p.sync()
    assert image(root / "out" / "core.db", "typed") == image(a, "typed")
    assert p.diffs() == []


def test_a_table_dropped_between_the_range_and_its_copy(tmp_path, pipeline_for):
    root, a, p = _logged_not_copied(tmp_path, pipeline_for, wal=True)
    bot(a).execute("DROP TABLE uniq")
    p.apply()  # skipped, not failed: the other tables are copied
    target = root / "out" / "core.db"
    for t in ("typed", "wr", "nokey"):
        assert image(target, t) == image(a, t), t


def test_history_shows_ranges_and_rebuild_refuses_them(tmp_path, pipeline_for):
    root, a, _ = _copy(tmp_path, pipeline_for, "reference")
    cfg = root / "cdc.toml"
    r = cdc_cmd("log", "tail", "-c", str(cfg), "--from", "0", "--table", "typed")
    assert r.returncode == 0, r.stderr
    assert 'a.typed  copy  ("id") in (start]..[11]  rows=4 (by reference' in r.stdout, r.stdout
    r = cdc_cmd(
        "rebuild", "core", "-c", str(cfg), "--as-of", "@9999999999", "--out", str(root / "x.db")
    )
    assert r.returncode != 0 and "went by reference" in r.stderr, r.stdout + r.stderr
    r = cdc_cmd("history", "core.typed", "1", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "the initial copy went by reference" in r.stdout, r.stdout


def test_the_setting_is_checked(tmp_path):
    cfg = write_config(tmp_path, CONFIG.format(copy="fast"))
    r = cdc_cmd("status", "-c", str(cfg))
    assert r.returncode != 0 and "daemon.snapshot_copy" in r.stderr, r.stderr


def test_a_target_named_like_a_uri_stays_a_file(tmp_path, monkeypatch):
    """Targets are opened with URI names on (for the read-only ATTACH): a path that
    starts with "file:" must still be that file, not a URI."""
    monkeypatch.chdir(tmp_path)
    conn = open_target("file:x.db")
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    assert (tmp_path / "file:x.db").exists()
    sqlite3.connect(tmp_path / "file:x.db").execute("SELECT * FROM t").fetchall()


@pytest.mark.parametrize("point", ["snapshot", "staged", "apply", "checkpoint", "committed"])
def test_sigkill_in_a_copy_by_reference_converges(tmp_path, daemons, point):
    """A real daemon killed (SIGKILL, daemon and apply worker) at each point of a copy by
    reference, with a bot writing throughout; restarted, the target equals its source.
    Staged rows live in the worker's memory only: a kill before its commit leaves the
    range to be copied again from the checkpoint, as any batch is applied again."""
    root = tmp_path
    a = _files(root, wal=point in ("staged", "checkpoint"))
    c = bot(a)
    c.executemany(
        "INSERT INTO typed(id, t) VALUES (?, ?)", [(i, f"r{i}") for i in range(100, 3000)]
    )
    cfg = write_config(
        root, CONFIG.format(copy="reference").replace("snapshot_chunk = 4", "snapshot_chunk = 200")
    )
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg, extra_env={"CDC_CRASH_AT": f"{point}:3"})
    for i in range(200):  # a bot writing across the copy and the crash
        c.execute("UPDATE typed SET t = ? WHERE id = ?", (f"w{i}", 100 + 7 * i))
        c.execute("DELETE FROM typed WHERE id = ?", (2999 - i,))
        if d.proc.poll() is not None:
            break
    assert d.proc.wait(timeout=60) == -signal.SIGKILL, d.output()
    assert f"crash point {point!r}" in d.output(), d.output()
    d.kill()
    c.execute("UPDATE typed SET t = 'after' WHERE id = 1")
    d = daemons(cfg)
    d.wait_synced()
    assert d.stop() == 0, d.output()
    target = root / "out" / "core.db"
    for t in COPIED:
        assert image(target, t) == image(a, t), t
    for t in ("m", "mb"):
        assert image(target, t, "WHERE source = 'a'") == image(a, t), t
    assert any(isinstance(f, CopyRange) for f in _frames(root))


def test_auto_copies_only_a_big_table_by_reference(tmp_path, pipeline_for, monkeypatch):
    """`snapshot_copy = "auto"` (the default): a table above the threshold by reference,
    a smaller one through the log, where `cdc rebuild` can replay it."""
    monkeypatch.setattr("cdc.capture.harvester.AUTO_ROWS", 10)  # typed has 43 rows
    root = tmp_path / "auto"
    a = _files(root, wal=False)
    p = pipeline_for(write_config(root, CONFIG.format(copy="auto")))
    p.sync()
    assert p.diffs() == []
    frames = _frames(root)
    assert {f.table for f in frames if isinstance(f, CopyRange)} == {"typed"}
    logged = {f.table for f in frames if isinstance(f, RowBatch) and f.events}
    assert {"wr", "nokey", "uniq", "m"} <= logged and "typed" not in logged
    assert image(root / "out" / "core.db", "typed") == image(a, "typed")
