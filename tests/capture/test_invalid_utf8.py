"""TEXT values whose bytes are not valid UTF-8 (SQLite keeps whatever a writer stores as
TEXT): replicated with their exact bytes and storage class, through the snapshot and the
stream, in value columns and in TEXT keys, without stopping the daemon or any other source;
verified, repaired, shown by the history commands, and carried back by a rollback."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import apsw
import pytest

from cdc.changelog.segments import LogReader
from cdc.config import load_config
from cdc.events import RowBatch
from tests.conftest import cdc_cmd, cdc_step, make_db, wait_until, write_config

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
snapshot_chunk = 2
harvest_batch = 3
[verify]
chunk_rows = 2
rows_per_second = 0
settle_timeout = 5.0
[[sources]]
name = "a"
path = "legacy/a.db"
[[sources]]
name = "b"
path = "legacy/b.db"
[[rules]]
table = "quotes"
target = "core"
merge = true
tag_column = "src"
[[rules]]
table = "*"
target = "core"
"""

# x'41ff42' is 'A', a byte no UTF-8 text holds, 'B'. notes.data holds the same bytes as a
# BLOB, which must stay one. tags and pairs have invalid TEXT keys, several, so that the
# snapshot's chunk of 2 rows ends on one (its cursor is such a key).
SCHEMA_A = """
CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, data BLOB, other, "a?b" TEXT);
CREATE TABLE tags(name TEXT PRIMARY KEY, v);
CREATE TABLE pairs(k TEXT, n INTEGER, v, PRIMARY KEY(k, n)) WITHOUT ROWID;
CREATE TABLE quotes(sym TEXT PRIMARY KEY, px REAL);
INSERT INTO notes VALUES (1, CAST(x'41ff42' AS TEXT), x'41ff42', 'ok', NULL),
                         (2, 'plain', NULL, CAST(x'c3' AS TEXT), CAST(x'3fff' AS TEXT)),
                         (3, CAST(x'' AS TEXT), x'', CAST(x'e282' AS TEXT), '?');
INSERT INTO tags VALUES (CAST(x'ff01' AS TEXT), 1), (CAST(x'ff02' AS TEXT), 2),
                        ('ok', CAST(x'80' AS TEXT)), (CAST(x'fe' AS TEXT), 4), ('z', 5);
INSERT INTO pairs VALUES (CAST(x'ff' AS TEXT), 1, 'a'), (CAST(x'ff' AS TEXT), 2, x'ff'),
                         ('x', 1, CAST(x'ff' AS TEXT));
INSERT INTO quotes VALUES (CAST(x'5aff' AS TEXT), 1.5), ('AAA', 2.5);
"""
SCHEMA_B = """
CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);
INSERT INTO items VALUES (1, 'one');
CREATE TABLE quotes(sym TEXT PRIMARY KEY, px REAL);
INSERT INTO quotes VALUES (CAST(x'5aff' AS TEXT), 3.5);
"""

# Later writes, captured by the triggers: inserts, updates, a key change, deletes.
STREAM = [
    "INSERT INTO notes VALUES (4, CAST(x'c328' AS TEXT), x'c328', CAST(x'ed' AS TEXT), 'x')",
    "UPDATE notes SET body = CAST(x'41fe42' AS TEXT) WHERE id = 2",
    "UPDATE notes SET other = 'fixed' WHERE id = 3",
    "INSERT INTO tags VALUES (CAST(x'ff03' AS TEXT), CAST(x'ff03' AS TEXT))",
    "UPDATE tags SET name = CAST(x'ff04' AS TEXT) WHERE name = CAST(x'ff02' AS TEXT)",
    "DELETE FROM tags WHERE name = CAST(x'fe' AS TEXT)",
    "UPDATE tags SET v = CAST(x'c0' AS TEXT) WHERE name = CAST(x'ff01' AS TEXT)",
    "INSERT INTO pairs VALUES (CAST(x'ff' AS TEXT), 3, CAST(x'ffff' AS TEXT))",
    "DELETE FROM pairs WHERE k = CAST(x'ff' AS TEXT) AND n = 1",
    "INSERT INTO quotes VALUES (CAST(x'9f' AS TEXT), 7.0)",
    "UPDATE notes SET \"a?b\" = CAST(x'3f3fff' AS TEXT), data = NULL WHERE id = 3",
]
# A BLOB too big to carry in its row (streamed in pieces) under a TEXT key that is not UTF-8.
BIG = "INSERT INTO tags VALUES (CAST(x'ff09' AS TEXT), randomblob(9 * 1024 * 1024))"
KEYS = {"notes": "id", "tags": "name", "pairs": "k, n", "items": "id"}


def _exact_rows(path: Path, table: str, order: str, where: str = "") -> list[tuple]:
    """Every value as (typeof, its bytes): Python never decodes one."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        cols = [r[1] for r in conn.execute(f"SELECT * FROM pragma_table_info('{table}')")]
        cols = [c for c in cols if c != "src"]
        sel = ", ".join(
            f'typeof("{c}"), CASE WHEN typeof("{c}") = \'text\' '
            f'THEN CAST("{c}" AS BLOB) ELSE "{c}" END'
            for c in cols
        )
        return [
            tuple(r) for r in conn.execute(f"SELECT {sel} FROM {table} {where} ORDER BY {order}")
        ]
    finally:
        conn.close()


def _same_everywhere(root: Path) -> None:
    a, b, core = root / "legacy" / "a.db", root / "legacy" / "b.db", root / "out" / "core.db"
    for table in ("notes", "tags", "pairs"):
        legacy = _exact_rows(a, table, KEYS[table])
        assert legacy and legacy == _exact_rows(core, table, KEYS[table]), table
    assert _exact_rows(b, "items", "id") == _exact_rows(core, "items", "id")
    for src, path in (("a", a), ("b", b)):
        legacy = _exact_rows(path, "quotes", "sym")
        assert legacy == _exact_rows(core, "quotes", "sym", f"WHERE src = '{src}'")


def _setup(root: Path, wal: bool = False) -> Path:
    make_db(root / "legacy" / "a.db", SCHEMA_A, wal=wal)
    make_db(root / "legacy" / "b.db", SCHEMA_B, wal=True)
    return write_config(root, CONFIG)


def _log_copy(cfg: Path) -> Path:
    """The initial copy's rows in the log too, for a history that shows them (by
    reference, the default, they are not: tests/capture/test_copy_range.py)."""
    cfg.write_text(cfg.read_text().replace("[daemon]\n", '[daemon]\nsnapshot_copy = "log"\n'))
    return cfg


def _write(root: Path, name: str, sqls: list[str]) -> None:
    c = sqlite3.connect(root / "legacy" / f"{name}.db", isolation_level=None, timeout=10)
    try:
        for sql in sqls:
            c.execute(sql)
    finally:
        c.close()


def test_snapshot_and_stream_keep_the_exact_bytes(tmp_path, pipeline_for):
    cfg = _setup(tmp_path)
    p = pipeline_for(cfg)
    p.sync()
    _same_everywhere(tmp_path)
    assert p.diffs() == []
    _write(tmp_path, "a", [*STREAM, BIG])
    p.sync()
    _same_everywhere(tmp_path)
    assert p.diffs() == []
    core = tmp_path / "out" / "core.db"
    # spelled out once: TEXT stays TEXT with its bytes, the BLOB of the same bytes a BLOB
    assert _exact_rows(core, "notes", "id", "WHERE id = 1")[0][:6] == (
        "integer",
        1,
        "text",
        b"A\xffB",
        "blob",
        b"A\xffB",
    )
    # the log carries such a value apart from str and from bin
    frames = [e.frame for e in LogReader(str(tmp_path / "state" / "log")).iter_from(0)]
    rows = [
        ev.row for f in frames if isinstance(f, RowBatch) and f.table == "notes" for ev in f.events
    ]
    assert any(r is not None and r[1] != r[2] and not isinstance(r[1], str | bytes) for r in rows)


def test_a_daemon_replicates_verifies_and_repairs_them(tmp_path, daemons):
    cfg = _setup(tmp_path, wal=True)
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg)
    d.wait_synced()
    _write(tmp_path, "a", STREAM)
    _write(tmp_path, "b", ["INSERT INTO items VALUES (2, 'two')"])
    d.wait_synced()
    assert d.proc.poll() is None, d.output()
    _same_everywhere(tmp_path)

    r = cdc_cmd("verify", "-c", str(cfg), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {t["state"] for t in json.loads(r.stdout)["tables"]} == {"equal"}

    core = tmp_path / "out" / "core.db"
    damage = [  # one byte off; the same bytes as a BLOB; a TEXT key's value
        "UPDATE notes SET body = CAST(x'41fe42' AS TEXT) WHERE id = 1",
        "UPDATE notes SET other = CAST(other AS BLOB) WHERE id = 4",
        "UPDATE tags SET v = 99 WHERE name = CAST(x'ff01' AS TEXT)",
    ]
    c = sqlite3.connect(core, isolation_level=None, timeout=10)
    for sql in damage:
        assert c.execute(sql).rowcount == 1
    c.close()
    r = cdc_cmd("verify", "-c", str(cfg), "--json", "a.notes", "a.tags")
    assert r.returncode == 10, r.stdout + r.stderr
    found = {t["table"]: t for t in json.loads(r.stdout)["tables"]}
    notes = {tuple(x["key"]): x for x in found["notes"]["diverged"]}
    assert set(notes) == {("1",), ("4",)}
    assert notes[("1",)]["columns"] == ["body"] and notes[("4",)]["columns"] == ["other"]
    # the row's values (id, body, data, other): TEXT and BLOB of the same bytes told apart
    assert notes[("4",)]["source"][3] == "CAST(X'ED' AS TEXT)"
    assert notes[("4",)]["target"][3] == "X'ED'"
    assert [x["columns"] for x in found["tags"]["diverged"]] == [["v"]]

    r = cdc_cmd("repair", "-c", str(cfg), "--json", "a.notes", "a.tags")
    assert r.returncode == 0, r.stdout + r.stderr
    _same_everywhere(tmp_path)
    _write(tmp_path, "b", ["INSERT INTO items VALUES (3, 'three')"])
    d.wait_synced()
    _same_everywhere(tmp_path)
    assert d.proc.poll() is None


def test_history_tail_and_rebuild_show_them(tmp_path, pipeline_for):
    cfg = _log_copy(_setup(tmp_path))
    p = pipeline_for(cfg)
    p.sync()
    _write(tmp_path, "a", STREAM)
    p.sync()
    r = cdc_cmd("log", "tail", "-c", str(cfg), "--from", "0", "--table", "notes")
    assert r.returncode == 0, r.stderr
    assert "CAST(X'41FF42' AS TEXT)" in r.stdout and "X'41FF42'" in r.stdout
    r = cdc_cmd("log", "tail", "-c", str(cfg), "--from", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert any(
        "CAST(X'FF03' AS TEXT)" in e.get("key", []) for e in map(json.loads, r.stdout.splitlines())
    )

    # a key given on the command line as its bytes (undecodable: surrogate escapes)
    key = b"\xff\x04".decode("utf-8", "surrogateescape")
    r = cdc_cmd("history", "-c", str(cfg), "--json", "core.tags", key)
    assert r.returncode == 0, r.stderr
    h = json.loads(r.stdout)
    assert [(c["op"], c["row"]) for c in h["changes"]] == [
        ("upsert", ["CAST(X'FF04' AS TEXT)", "2"])
    ]
    r = cdc_cmd("history", "-c", str(cfg), "core.tags", b"\xfe".decode("utf-8", "surrogateescape"))
    assert r.returncode == 0, r.stderr
    assert "delete" in r.stdout and "2 changes" in r.stdout

    out = tmp_path / "rebuilt.db"
    end = load_config(cfg)
    r = cdc_cmd(
        "rebuild", "-c", str(cfg), "core", "--as-of", str(p.writer.end_offset), "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    for table in ("notes", "tags", "pairs"):
        assert _exact_rows(out, table, KEYS[table]) == _exact_rows(
            Path(end.targets["core"]), table, KEYS[table]
        )


def test_the_way_back_carries_them_exactly(tmp_path, daemons):
    cfg = _setup(tmp_path, wal=True)
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg)
    d.wait_synced()
    r = cdc_step("cutover", cfg, "core")
    assert r.returncode == 0, r.stdout + r.stderr
    core = tmp_path / "out" / "core.db"
    c = sqlite3.connect(core, isolation_level=None, timeout=10)
    for sql in [
        *STREAM[:8],
        "INSERT INTO quotes(src, sym, px) VALUES ('b', CAST(x'f0' AS TEXT), 8.5)",
        "UPDATE quotes SET px = 9.5 WHERE src = 'a' AND sym = CAST(x'5aff' AS TEXT)",
    ]:
        c.execute(sql)
    c.close()
    r = cdc_step("rollback", cfg, "core")
    assert r.returncode == 0, r.stdout + r.stderr
    assert d.proc.poll() is None, d.output()
    _same_everywhere(tmp_path)
    tags = _exact_rows(tmp_path / "legacy" / "a.db", "tags", "name")
    assert ("text", b"\xff\x03", "text", b"\xff\x03") in tags
    # replication goes on forward with them after the rollback
    _write(tmp_path, "a", ["UPDATE notes SET body = CAST(x'ff' AS TEXT) WHERE id = 1"])
    wait_until(
        lambda: _exact_rows(core, "notes", "id", "WHERE id = 1")[0][3] == b"\xff",
        30,
        0.1,
        "the forward change applied",
    )


def test_a_utf16_file_is_refused_by_name(tmp_path):
    """Only UTF-8 databases keep such bytes through CAST: a UTF-16 file holding text that
    is not valid Unicode (a lone surrogate), or asked to store such bytes, is refused with
    its name instead of a traceback or changed bytes."""
    from cdc.exact_text import RawText, TextEncodingError, executemany, select

    path = tmp_path / "u16.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA encoding='UTF-16le'; CREATE TABLE t(a)")
    executemany(conn, "INSERT INTO t VALUES (?)", [["fine"]])
    assert select(conn, ["a"], "FROM t") == [("fine",)]
    with pytest.raises(TextEncodingError, match="u16.db"):
        executemany(conn, "INSERT INTO t VALUES (?)", [[RawText(b"\xff")]])
    conn.execute("INSERT INTO t VALUES (CAST(x'00d8' AS TEXT))")  # U+D800 alone
    with pytest.raises(TextEncodingError, match="u16.db.*UTF-16le"):
        select(conn, ["a"], "FROM t")
    conn.close()


def test_key_json_takes_bytes_that_are_not_utf8(tmp_path, pipeline_for):
    cfg = _log_copy(_setup(tmp_path))
    pipeline_for(cfg).sync()
    key = json.dumps([b"\xff\x01".decode("utf-8", "surrogateescape")], ensure_ascii=False)
    r = cdc_cmd("history", "-c", str(cfg), "--json", "core.tags", "--key-json", key)
    assert r.returncode == 0, r.stderr
    h = json.loads(r.stdout)
    assert h["key"] == ["CAST(X'FF01' AS TEXT)"]
    assert [c["row"] for c in h["changes"]] == [["CAST(X'FF01' AS TEXT)", "1"]]
