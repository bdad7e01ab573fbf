"""History from the change log: `cdc log tail`, `cdc history`, `cdc rebuild`.

The workload records its own past: after every round of writes (inserts, updates to REAL,
BLOB, TEXT and NULL values, deletes, a key change, an ADD COLUMN) the test syncs the
in-process pipeline and keeps the log end, the time and an exact copy of each legacy
table. Rebuilds as of those offsets and times must equal the copies value by value and
storage class by storage class, and a row's history must list exactly the changes the
rounds made to it. Retention against a real daemon that deletes (or archives) applied segments, and
`cdc history --follow`, are in test_history_daemon.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import apsw
import msgspec
import pytest

from cdc.changelog.segments import list_segments, segment_name
from cdc.config import load_config
from cdc.errors import ConfigError
from cdc.history.rebuild import AsOf, parse_as_of, rebuild
from cdc.history.rows import (
    HistoryIncomplete,
    RetainedLog,
    parse_key,
    row_history,
    tail,
)
from cdc.planning.resolve import resolve_plan
from tests.conftest import cdc_cmd, make_db, write_config
from tests.history.conftest import SCHEMA_A, same_tables, table_rows
from verifier.values import encode

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
segment_bytes = 700
snapshot_copy = "log"  # rebuilds replay the initial copy's rows from the log
snapshot_chunk = 4
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

SCHEMA_B = """
CREATE TABLE quotes(sym TEXT PRIMARY KEY, px REAL);
INSERT INTO quotes VALUES ('AAA', 11.0);
"""

ROUNDS = [
    [],  # round 0: the initial copy of the rows above
    [
        ("a", "UPDATE items SET qty = 1.0, name = 'it''s' WHERE id = 1"),
        ("a", "INSERT INTO items VALUES (10, 'ten', 10, 10, X'00FF', NULL)"),
        ("a", "INSERT INTO pairs VALUES ('y', 1, X'31')"),
        ("b", "UPDATE quotes SET px = 12.5 WHERE sym = 'AAA'"),
    ],
    [
        ("a", "UPDATE items SET qty = '1', price = 2 WHERE id = 1"),
        ("a", "DELETE FROM items WHERE id = 3"),
        ("a", "UPDATE items SET id = 20 WHERE id = 2"),
        ("a", "UPDATE pairs SET v = 1.0 WHERE k = 'x' AND n = 1"),
    ],
    [
        ("a", "INSERT INTO items VALUES (3, 'again', -0.0, NULL, X'', 'back')"),
        ("a", "UPDATE quotes SET px = 10.25 WHERE sym = 'AAA'"),
        ("b", "DELETE FROM quotes WHERE sym = 'AAA'"),
    ],
    [
        ("a", "ALTER TABLE items ADD COLUMN extra TEXT DEFAULT 'd'"),
        ("a", "UPDATE items SET extra = 'e', qty = NULL WHERE id = 1"),
        ("a", "DELETE FROM pairs WHERE k = 'y'"),
    ],
]
TABLES = {("a", "items"): "id", ("a", "pairs"): "k, n", ("a", "quotes"): "sym"}
TABLES[("b", "quotes")] = "sym"


class Past(msgspec.Struct):
    """What the test saw after one round: the log end, the time, every legacy table."""

    offset: int
    at: float
    tables: dict[str, list[tuple]]  # "source.table" -> rows with each value's typeof


def _legacy_copy(root: Path) -> dict[str, list[tuple]]:
    out = {}
    for (src, table), order in TABLES.items():
        conn = apsw.Connection(str(root / "legacy" / f"{src}.db"), flags=apsw.SQLITE_OPEN_READONLY)
        out[f"{src}.{table}"] = table_rows(conn, table, order)
        conn.close()
    return out


def _target_copy(path: Path) -> dict[str, list[tuple]]:
    """The same view of a target (or a rebuilt file): merged quotes split by tag."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    out = {f"a.{t}": table_rows(conn, t, TABLES[("a", t)]) for t in ("items", "pairs")}
    for src in ("a", "b"):
        out[f"{src}.quotes"] = table_rows(conn, "quotes", "sym", f"WHERE src = '{src}'")
    conn.close()
    return out


@pytest.fixture
def workload(tmp_path, pipeline_for):
    """Runs ROUNDS through an in-process pipeline; returns (config path, pasts)."""
    make_db(tmp_path / "legacy" / "a.db", SCHEMA_A)
    make_db(tmp_path / "legacy" / "b.db", SCHEMA_B, wal=True)
    cfg_path = write_config(tmp_path, CONFIG)
    p = pipeline_for(cfg_path)
    conns = {
        s: sqlite3.connect(tmp_path / "legacy" / f"{s}.db", isolation_level=None) for s in "ab"
    }
    pasts = []
    for writes in ROUNDS:
        for src, sql in writes:
            conns[src].execute(sql)
        p.sync()
        assert p.diffs() == []
        pasts.append(Past(p.writer.end_offset, time.time(), _legacy_copy(tmp_path)))
        time.sleep(0.01)  # the next round's harvest times are strictly later
    for c in conns.values():
        c.close()
    assert len(list_segments(str(tmp_path / "state" / "log"))) > 2  # history spans segments
    return cfg_path, pasts


def test_rebuild_as_of_each_recorded_offset_equals_the_past(workload, tmp_path):
    cfg_path, pasts = workload
    for i, past in enumerate(pasts):
        out = tmp_path / "rebuilt" / f"at-{i}.db"
        r = cdc_cmd(
            "rebuild", "-c", str(cfg_path), "core", "--as-of", str(past.offset), "--out", str(out)
        )
        assert r.returncode == 0, r.stderr
        assert f"as of offset {past.offset}" in r.stdout
        assert sorted(os.listdir(out.parent))[-1] == out.name  # one self-contained file
        assert same_tables(_target_copy(out), past.tables), f"round {i}"
        conn = apsw.Connection(str(out), flags=apsw.SQLITE_OPEN_READONLY)
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_schema")]
        assert not [n for n in names if n.startswith("_cdc_")]
        conn.close()
    # Before the ADD COLUMN the rebuilt table has the shape the replicator had then.
    conn = apsw.Connection(str(tmp_path / "rebuilt" / "at-3.db"))
    assert "extra" not in [r[1] for r in conn.execute("SELECT * FROM pragma_table_info('items')")]
    conn.close()


def test_rebuild_as_of_a_time_and_at_the_end_equals_the_target(workload, tmp_path):
    cfg_path, pasts = workload
    cfg = load_config(cfg_path)
    plan = resolve_plan(cfg)
    for i in (1, 3):
        out = tmp_path / f"time-{i}.db"
        res = rebuild(cfg, plan, "core", AsOf(time=pasts[i].at), str(out))
        assert res.offset == pasts[i].offset
        assert same_tables(_target_copy(out), pasts[i].tables)
    iso = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(pasts[2].at)) + f"{pasts[2].at % 1:.6f}"[1:]
    )
    r = cdc_cmd(
        "rebuild",
        "-c",
        str(cfg_path),
        "core",
        "--as-of",
        iso + "Z",
        "--out",
        str(tmp_path / "iso.db"),
    )
    assert r.returncode == 0, r.stderr
    assert same_tables(_target_copy(tmp_path / "iso.db"), pasts[2].tables)
    assert parse_as_of(f"@{pasts[2].at}") == AsOf(time=pasts[2].at)
    # At the log end the copy is the target itself, schema included (minus bookkeeping).
    res = rebuild(cfg, plan, "core", AsOf(offset=pasts[-1].offset), str(tmp_path / "end.db"))
    target = tmp_path / "out" / "core.db"
    assert same_tables(_target_copy(tmp_path / "end.db"), _target_copy(target))

    def ddl(path: Path) -> list:
        c = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        got = c.execute(
            "SELECT type, name, sql FROM sqlite_schema "
            "WHERE tbl_name NOT LIKE '\\_cdc\\_%' ESCAPE '\\' ORDER BY name"
        ).fetchall()
        c.close()
        return got

    assert ddl(tmp_path / "end.db") == ddl(target)
    assert {t.name: t.rows for t in res.tables} == {"items": 4, "pairs": 2, "quotes": 2}
    assert "_cdc_checkpoint" in res.dropped and "_cdc_schemas" in res.dropped


def test_rebuild_refuses_bad_requests(workload, tmp_path):
    cfg_path, pasts = workload
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"mine")
    cases = [
        (["--as-of", "0", "--out", str(taken)], "exists"),
        (["--as-of", str(pasts[-1].offset + 1), "--out", str(tmp_path / "x.db")], "past the end"),
        (["--as-of", "yesterday", "--out", str(tmp_path / "x.db")], "--as-of"),
        (["--as-of", "@1", "--out", str(tmp_path / "x.db")], "no frame"),
    ]
    for args, says in cases:
        r = cdc_cmd("rebuild", "-c", str(cfg_path), "core", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert says in r.stderr and r.stderr.startswith("error: "), r.stderr
    assert taken.read_bytes() == b"mine"
    assert not (tmp_path / "x.db").exists()
    r = cdc_cmd(
        "rebuild", "-c", str(cfg_path), "nope", "--as-of", "0", "--out", str(tmp_path / "x.db")
    )
    assert r.returncode == 2 and "no target 'nope'" in r.stderr


def _expected(pasts: list[Past], table: str, match, rounds: list[int]) -> list:
    """The image of one row after each listed round (None: deleted), from the copies
    (whose rows interleave each value with its typeof)."""
    out = []
    for i in rounds:
        rows = [r for r in pasts[i].tables[table] if match(r)]
        out.append(tuple(rows[0][::2]) if rows else None)
    return out


def _images(hist) -> list:
    return [None if c.row is None else tuple(c.row) for c in hist.changes]


def test_history_lists_exactly_the_changes_of_a_key(workload):
    cfg_path, pasts = workload
    cfg = load_config(cfg_path)
    plan = resolve_plan(cfg)
    cases = [  # (target table, key as typed on the command line, source table, rounds)
        ("items", ["1"], "a.items", lambda r: r[0] == 1, [0, 1, 2, 4]),
        ("items", ["2"], "a.items", lambda r: r[0] == 2, [0, 2]),  # its key changed to 20
        ("items", ["20"], "a.items", lambda r: r[0] == 20, [2]),
        ("items", ["3"], "a.items", lambda r: r[0] == 3, [0, 2, 3]),
        ("pairs", ["x", "1"], "a.pairs", lambda r: r[0] == "x" and r[2] == 1, [0, 2]),
        ("pairs", ["y", "1"], "a.pairs", lambda r: r[0] == "y", [1, 4]),
        ("quotes", ["b", "AAA"], "b.quotes", lambda r: r[0] == "AAA", [0, 1, 3]),
    ]
    for table, texts, name, match, rounds in cases:
        key = parse_key(plan, "core", table, texts)
        h = row_history(cfg, plan, "core", table, key)
        assert h.complete and h.note is None and h.starts_at == 0
        want = _expected(pasts, name, match, rounds)
        assert encode(_images(h)) == encode(want), (table, texts, _images(h), want)
        assert [c.op for c in h.changes] == ["delete" if w is None else "upsert" for w in want]
        if rounds[0] == 0:
            assert h.changes[0].seq == 0  # the row as the initial copy found it
        ends = [pasts[i].offset for i in rounds]
        assert all(
            (pasts[i - 1].offset if i else 0) <= c.offset < end
            for c, i, end in zip(h.changes, rounds, ends, strict=True)
        ), (table, texts, [c.offset for c in h.changes], [p.offset for p in pasts])
    # A merged table searched without the tag: both members' AAA, in log order.
    h = row_history(cfg, plan, "core", "quotes", parse_key(plan, "core", "quotes", ["AAA"]))
    assert [c.source for c in h.changes] == ["a", "b", "b", "a", "b"]
    assert h.members == ["a.quotes", "b.quotes"]
    # "1" is 1 in an INTEGER key, '1' in a TEXT one.
    assert parse_key(plan, "core", "items", ["1"]) == [1]
    assert encode(parse_key(plan, "core", "pairs", ["1", "1"])) == encode(["1", 1])
    with pytest.raises(ConfigError, match="key has 2 value"):
        parse_key(plan, "core", "pairs", ["x"])


def test_history_and_tail_on_the_command_line(workload):
    cfg_path, pasts = workload
    r = cdc_cmd("history", "-c", str(cfg_path), "core.items", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "core.items [1] in a.items"
    assert (
        "upsert (snapshot)  id=1, name='one', qty=1, price=1.5, data=X'01', note=NULL" in lines[1]
    )
    assert "qty=1.0" in lines[2] and "qty='1'" in lines[3] and "price=2.0" in lines[3]
    assert "extra='e'" in lines[4] and lines[-1].startswith("4 changes in offsets 0..")
    r = cdc_cmd("history", "-c", str(cfg_path), "--json", "core.items", "--key-json", "[3]")
    got = json.loads(r.stdout)
    assert [c["op"] for c in got["changes"]] == ["upsert", "delete", "upsert"]
    assert got["changes"][2]["row"] == ["3", "'again'", "-0.0", "NULL", "X''", "'back'"]
    assert got["complete"] is True and got["note"] is None
    r = cdc_cmd("history", "-c", str(cfg_path), "core.nothing", "1")
    assert r.returncode == 2 and "no legacy table is mapped to core.nothing" in r.stderr

    r = cdc_cmd("log", "tail", "-c", str(cfg_path), "--from", "0", "--table", "items")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "a.items  schema  key(id)  id INTEGER, name TEXT, qty, price REAL" in out
    assert "a.items  upsert  [10]  id=10, name='ten', qty=10, price=10.0, data=X'00FF'" in out
    assert "a.items  delete  [2]" in out and "a.items  upsert  [20]" in out
    assert "pairs" not in out and " mark " not in out
    r = cdc_cmd("log", "tail", "-c", str(cfg_path), "--last", "3", "--json")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(events) == 3 and {"mark", "row"} <= {e["kind"] for e in events}
    assert events[-1]["next_offset"] == pasts[-1].offset
    r = cdc_cmd("log", "tail", "-c", str(cfg_path), "--source", "b", "--json", "--from", "0")
    rows = [e for e in map(json.loads, r.stdout.splitlines()) if e["kind"] == "row"]
    assert [(e["op"], e["key"], e["row"]) for e in rows] == [
        ("upsert", ["'AAA'"], ["'AAA'", "11.0"]),
        ("upsert", ["'AAA'"], ["'AAA'", "12.5"]),
        ("delete", ["'AAA'"], None),
    ]


def test_tail_api_from_an_offset_inside_a_frame(workload):
    cfg_path, pasts = workload
    cfg = load_config(cfg_path)
    everything = list(tail(cfg))
    assert everything[0].offset == 0  # the first segment's start
    inside = pasts[2].offset + 3  # a few bytes into a frame: start at the next one
    got = list(tail(cfg, from_offset=inside))
    assert got and got[0].offset > inside
    assert got == [e for e in everything if e.offset >= got[0].offset]
    with pytest.raises(ConfigError, match="past the end"):
        list(tail(cfg, from_offset=pasts[-1].offset + 100))


def test_archived_segments_are_read_moved_and_deduplicated(workload):
    """The archive and the live dir read as one log, a segment in both (mid-move) once,
    and a segment moved between our listing and our read is found in the archive."""
    cfg_path, _ = workload
    cfg = load_config(cfg_path)
    plan = resolve_plan(cfg)
    key = parse_key(plan, "core", "items", ["1"])
    before = row_history(cfg, plan, "core", "items", key)
    live, archive = cfg.log_dir, cfg.log_archive_dir
    os.makedirs(archive)
    bases = list_segments(live)
    shutil.copy(os.path.join(live, segment_name(bases[0])), archive)  # mid-move: in both
    log = RetainedLog.of(cfg)
    first = log.read(0)
    assert row_history(cfg, plan, "core", "items", key) == before
    for b in bases[:-1]:  # retention moves every applied segment after we listed them
        os.replace(os.path.join(live, segment_name(b)), os.path.join(archive, segment_name(b)))
    assert log.read(0) == first
    assert row_history(cfg, plan, "core", "items", key) == before
    os.unlink(os.path.join(archive, segment_name(bases[0])))  # now really gone
    with pytest.raises(HistoryIncomplete):
        log.read(0)
    h = row_history(cfg, plan, "core", "items", key)
    assert not h.complete and h.starts_at == bases[1]
    assert h.note == (
        f"history starts at offset {bases[1]} (segments before were deleted; "
        'set [log] retention = "archive" to keep them)'
    )
    assert h.changes == [c for c in before.changes if c.offset >= bases[1]]
