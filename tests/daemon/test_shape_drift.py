"""A legacy table's shape moving under the replication: renamed and dropped columns, indexes
added and dropped, a table re-copied after a reset. The target must follow exactly, and the
verifier must never call two differently shaped tables equal.

The harvester re-copies a table after a non-additive shape change: a `TableReset`, then
the new `TableSchema`, then the rows of a fresh copy. `_recopy` writes that sequence
through the harvester's own reset path, so the target side is tested on exactly those
frames, step by step (tests/support/pipeline.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import apsw
import msgspec
import pytest

from cdc.config import load_config
from cdc.errors import TargetError
from cdc.inventory import table_info
from cdc.planning.resolve import resolve_plan
from replicator.target import SCHEMAS, AppliedShape
from tests.conftest import cdc_cmd, make_db, write_config
from verifier import compare_plan, select_tables, verify_tables

SCHEMA = """
CREATE TABLE kv(k TEXT PRIMARY KEY, v, note TEXT);
CREATE INDEX kv_note ON kv(note);
CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
"""
MEMBER = """
CREATE TABLE kv(k TEXT PRIMARY KEY, v, note TEXT);
"""


def _config(root: Path, extra_sources: str = "", rules: str = "", chunk: int = 2000) -> Path:
    rules = rules or '[[rules]]\ntable = "*"\ntarget = "core"\n'
    return write_config(
        root,
        f'state_dir = "state"\n[targets]\ncore = "{root}/core.db"\n'
        f"[daemon]\nsnapshot_chunk = {chunk}\n"
        f"[verify]\nchunk_rows = 50\nsettle_timeout = 0.5\n"
        f'[[sources]]\nname = "bot"\npath = "{root}/bot.db"\n{extra_sources}{rules}',
    )


def _fill(path: Path, rows: int = 60) -> None:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("BEGIN")
    for i in range(rows):
        c.execute(
            "INSERT INTO kv VALUES (?, ?, ?)", (f"k{i}", [i, i * 0.5, str(i)][i % 3], f"n{i}")
        )
        if "items" in {r[0] for r in c.execute("SELECT name FROM sqlite_schema")}:
            c.execute("INSERT INTO items(name, qty) VALUES (?, ?)", (f"item{i}", i))
    c.execute("COMMIT")
    c.close()


@pytest.fixture
def copied(tmp_path: Path, pipeline_for):
    make_db(tmp_path / "bot.db", SCHEMA)
    _fill(tmp_path / "bot.db")
    cfg = _config(tmp_path)
    p = pipeline_for(cfg)
    p.sync()
    return tmp_path, cfg, p


MERGED_RULES = """
[[rules]]
table = "*"
source = "bot"
target = "core"
merge = true
as = "all_{table}"
[[rules]]
table = "*"
source = "other"
target = "core"
merge = true
as = "all_{table}"
"""


@pytest.fixture
def merged(tmp_path: Path, pipeline_for):
    make_db(tmp_path / "bot.db", MEMBER)
    make_db(tmp_path / "other.db", MEMBER)
    _fill(tmp_path / "bot.db")
    _fill(tmp_path / "other.db", 30)
    other = f'[[sources]]\nname = "other"\npath = "{tmp_path}/other.db"\n'
    cfg = _config(tmp_path, other, MERGED_RULES)
    p = pipeline_for(cfg)
    p.sync()
    return tmp_path, cfg, p


def _bot(tmp_path: Path, sql: str, name: str = "bot.db") -> None:
    c = sqlite3.connect(tmp_path / name, isolation_level=None)
    c.executescript(sql)
    c.close()


def _target(tmp_path: Path) -> apsw.Connection:
    return apsw.Connection(str(tmp_path / "core.db"))


def _columns(tmp_path: Path, table: str) -> list[str]:
    with contextlib.closing(_target(tmp_path)) as c:
        return [r[1] for r in c.execute("SELECT * FROM pragma_table_info(?)", (table,))]


def _indexes(tmp_path: Path, table: str) -> set[str]:
    with contextlib.closing(_target(tmp_path)) as c:
        return {
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_schema WHERE type='index' AND tbl_name=? "
                "AND sql IS NOT NULL",
                (table,),
            )
        }


def _recopy(p, source: str, table: str) -> None:
    """The harvester's re-copy of `table`: a `TableReset` and a fresh snapshot cursor,
    durable, before anything else; the next snapshot chunk re-reads the shape and writes
    the new `TableSchema` before its rows."""
    h = next(h for h in p.harvesters if h.plan.name == source)
    h._restart_snapshots([table], {c.table: c for c in h.position.snapshots})


def _schema_without_reset(p, source: str, table: str) -> None:
    """A log written before non-additive changes were re-copied: the table's new schema
    alone, no reset before it."""
    h = next(h for h in p.harvesters if h.plan.name == source)
    h._log([table_info(h.conn, table).to_schema(source)], h.position)


def _verify(cfg_path: Path, patterns=None):
    cfg = load_config(cfg_path)
    plan = resolve_plan(cfg)
    return verify_tables(cfg, plan, select_tables(plan, patterns)).report


def _state(rep, name: str):
    return next(t for t in rep.tables if t.name == name)


def _set_shape(tmp_path: Path, source: str, table: str, **changes) -> None:
    """Rewrite the shape the replicator recorded, as an older replicator left it."""
    with contextlib.closing(_target(tmp_path)) as c:
        (blob,) = c.execute(
            f"SELECT shape FROM {SCHEMAS} WHERE source=? AND tbl=?", (source, table)
        ).fetchone()
        shape = msgspec.structs.replace(msgspec.msgpack.decode(blob, type=AppliedShape), **changes)
        c.execute(
            f"UPDATE {SCHEMAS} SET shape=? WHERE source=? AND tbl=?",
            (msgspec.msgpack.encode(shape), source, table),
        )


# -- the verifier compares shapes ------------------------------------------------------------
def test_a_stale_column_beside_a_renamed_one_is_a_shape_difference(copied) -> None:
    """What an older replicator left after `RENAME COLUMN v TO w`: `w` added and filled,
    `v` kept with its old values. Every value of the legacy columns matches; the table is
    still not the legacy table."""
    tmp_path, cfg, p = copied
    _bot(tmp_path, "ALTER TABLE kv RENAME COLUMN v TO w;")
    with contextlib.closing(_target(tmp_path)) as c:
        c.execute("ALTER TABLE kv ADD COLUMN w")
        c.execute("UPDATE kv SET w = v")
    _set_shape(tmp_path, "bot", "kv", columns=["k", "w", "note"])
    rep = _verify(cfg, ["bot.kv"])
    kv = _state(rep, "bot.kv")
    assert kv.state == "diverged", (kv.state, kv.reason)
    assert any('"v"' in s and "target only" in s for s in kv.shape), kv.shape
    assert "shape" in (kv.reason or "")
    assert [d for d in compare_plan(resolve_plan(load_config(cfg))) if not d.equal]
    p.close()
    r = cdc_cmd("verify", "-c", str(cfg), "bot.kv", "--report", str(tmp_path / "reports"))
    assert r.returncode == 10, (r.returncode, r.stdout, r.stderr)
    assert 'shape differs: column "v": target only' in r.stdout
    md = (tmp_path / "reports" / "validation-core.md").read_text()
    assert "Shape differences" in md and '- column "v": target only' in md


@pytest.mark.parametrize(
    ("target_sql", "expect"),
    [
        ("ALTER TABLE kv ADD COLUMN extra", '"extra"'),
        (  # same names, another declared type (so another affinity)
            "CREATE TABLE kv2(k TEXT PRIMARY KEY, v INTEGER, note TEXT);"
            "INSERT INTO kv2 SELECT k, v, note FROM kv; DROP TABLE kv;"
            "ALTER TABLE kv2 RENAME TO kv",
            "declared",
        ),
        (  # same columns, another order
            "CREATE TABLE kv2(k TEXT PRIMARY KEY, note TEXT, v);"
            "INSERT INTO kv2 SELECT k, note, v FROM kv; DROP TABLE kv;"
            "ALTER TABLE kv2 RENAME TO kv",
            "order",
        ),
        # a unique constraint the legacy table lacks refuses rows the legacy file holds
        ("CREATE UNIQUE INDEX kv_note_u ON kv(note)", "UNIQUE (note): target only"),
        ("CREATE UNIQUE INDEX kv_v ON kv(v COLLATE NOCASE)", "UNIQUE (v COLLATE NOCASE)"),
    ],
)
def test_a_copied_table_of_another_shape_is_never_equal(copied, target_sql, expect) -> None:
    tmp_path, cfg, _ = copied
    with contextlib.closing(_target(tmp_path)) as c:
        c.execute(target_sql)
    kv = _state(_verify(cfg, ["bot.kv"]), "bot.kv")
    assert kv.state == "diverged", (kv.state, kv.reason)
    assert any(expect in s for s in kv.shape), kv.shape
    (diff,) = [d for d in compare_plan(resolve_plan(load_config(cfg))) if d.table == "kv"]
    assert not diff.equal and diff.shape


def test_a_merged_table_must_hold_every_legacy_column(merged) -> None:
    tmp_path, cfg, _ = merged
    with contextlib.closing(_target(tmp_path)) as c:
        c.execute("ALTER TABLE all_kv DROP COLUMN note")
    rep = _verify(cfg)
    for name in ("bot.kv", "other.kv"):
        t = _state(rep, name)
        assert t.state == "diverged", (t.state, t.reason)
        assert any('"note"' in s for s in t.shape), t.shape


def test_a_merged_union_may_hold_columns_other_members_have(merged) -> None:
    tmp_path, cfg, p = merged
    _bot(tmp_path, "ALTER TABLE kv ADD COLUMN more TEXT; UPDATE kv SET more = k;", "other.db")
    p.sync()
    assert "more" in _columns(tmp_path, "all_kv")
    assert _verify(cfg).verdict == "equal"


# -- the target follows renames and drops after a reset --------------------------------------
def test_a_renamed_column_is_recopied_without_its_old_name(copied) -> None:
    tmp_path, cfg, p = copied
    _bot(tmp_path, "ALTER TABLE kv RENAME COLUMN v TO w;")
    _recopy(p, "bot", "kv")
    p.sync()
    assert _columns(tmp_path, "kv") == ["k", "w", "note"]
    assert _indexes(tmp_path, "kv") == {"kv_note"}
    assert p.diffs() == []
    assert _verify(cfg).verdict == "equal"
    _bot(tmp_path, "UPDATE kv SET w = 'after' WHERE k = 'k1'; INSERT INTO kv VALUES ('x', 1, 'y');")
    p.sync()
    assert _verify(cfg).verdict == "equal"
    with contextlib.closing(_target(tmp_path)) as c:
        (shape,) = c.execute(f"SELECT shape FROM {SCHEMAS} WHERE tbl='kv'").fetchone()
        assert msgspec.msgpack.decode(shape, type=AppliedShape).columns == ["k", "w", "note"]


def test_a_dropped_indexed_column_goes_with_its_index(copied) -> None:
    tmp_path, cfg, p = copied
    _bot(tmp_path, "DROP INDEX kv_note; ALTER TABLE kv DROP COLUMN note;")
    _recopy(p, "bot", "kv")
    p.sync()
    assert _columns(tmp_path, "kv") == ["k", "v"]
    assert _indexes(tmp_path, "kv") == set()
    assert p.diffs() == [] and _verify(cfg).verdict == "equal"


def test_a_narrower_schema_without_a_reset_is_refused_by_name(copied) -> None:
    """A log written before renames were re-copied: the schema arrives while the target
    still holds the rows of the old shape. Applying it would leave stale values."""
    tmp_path, _, p = copied
    _bot(tmp_path, "ALTER TABLE kv RENAME COLUMN v TO w;")
    _schema_without_reset(p, "bot", "kv")
    with pytest.raises(TargetError) as e:
        p.apply()
    msg = str(e.value)
    assert "core.db" in msg and "bot.kv" in msg and "'v'" in msg, msg
    assert _columns(tmp_path, "kv") == ["k", "v", "note"]  # nothing of it applied


def test_a_merged_member_drops_a_column_the_union_keeps(merged) -> None:
    tmp_path, cfg, p = merged
    _bot(tmp_path, "ALTER TABLE kv DROP COLUMN note;")
    _recopy(p, "bot", "kv")
    p.sync()
    assert _columns(tmp_path, "all_kv") == ["source", "k", "v", "note"]
    with contextlib.closing(_target(tmp_path)) as c:
        counts = dict(
            c.execute("SELECT source, count(note) FROM all_kv GROUP BY source").fetchall()
        )
    assert counts == {"bot": 0, "other": 30}  # re-copied: no stale value of `bot` stays
    assert _verify(cfg).verdict == "equal"


def test_a_merged_member_narrower_without_a_reset_is_refused(merged) -> None:
    tmp_path, _, p = merged
    _bot(tmp_path, "ALTER TABLE kv DROP COLUMN note;")
    _schema_without_reset(p, "bot", "kv")
    with pytest.raises(TargetError, match=r"bot\.kv.*'note'"):
        p.apply()


# -- indexes a bot adds or drops later -------------------------------------------------------
def test_indexes_added_and_dropped_later_follow_in_the_target(copied) -> None:
    tmp_path, cfg, p = copied
    _bot(
        tmp_path,
        "CREATE INDEX items_qty ON items(qty); CREATE UNIQUE INDEX items_name ON items(name);",
    )
    p.sync()
    assert _indexes(tmp_path, "items") == {"items_qty", "items_name"}
    # the new UNIQUE is honoured like a declared one: a REPLACE deletes the same row
    _bot(tmp_path, "INSERT OR REPLACE INTO items(id, name, qty) VALUES (1000, 'item3', 7);")
    p.sync()
    assert p.diffs() == []
    _bot(tmp_path, "DROP INDEX items_qty;")
    p.sync()
    assert _indexes(tmp_path, "items") == {"items_name"}
    _bot(tmp_path, "DROP INDEX kv_note; CREATE INDEX kv_note ON kv(v, note);")
    p.sync()
    with contextlib.closing(_target(tmp_path)) as c:
        (sql,) = c.execute("SELECT sql FROM sqlite_schema WHERE name='kv_note'").fetchone()
    assert "(v, note)" in sql
    assert _verify(cfg).verdict == "equal"


def test_a_unique_index_the_target_cannot_hold_is_named(copied) -> None:
    tmp_path, _, p = copied
    with contextlib.closing(_target(tmp_path)) as c:  # something else wrote the target
        c.execute("UPDATE items SET name = 'item1' WHERE id = 3")
    _bot(tmp_path, "CREATE UNIQUE INDEX items_name ON items(name);")
    _schema_without_reset(p, "bot", "items")
    with pytest.raises(TargetError, match="items_name"):
        p.apply()


# -- a reset forgets that the initial copy was done ------------------------------------------
def test_a_table_recopied_after_a_reset_is_copying_not_diverged(tmp_path, pipeline_for) -> None:
    make_db(tmp_path / "bot.db", SCHEMA)
    _fill(tmp_path / "bot.db", 30)
    cfg = _config(tmp_path, chunk=10)
    p = pipeline_for(cfg)
    p.sync()
    assert _verify(cfg).verdict == "equal"
    _bot(
        tmp_path,
        "BEGIN; DROP TABLE kv; CREATE TABLE kv(k TEXT PRIMARY KEY, v, note TEXT);"
        + "".join(f"INSERT INTO kv VALUES ('n{i}', {i}, 'x');" for i in range(45))
        + "COMMIT;",
    )
    p.harvest()  # finds the table without triggers: reset, fresh cursor
    h = p.harvesters[0]
    assert h.snapshot_chunk() == 10  # one chunk of the new copy, of five
    p.apply()
    kv = _state(_verify(cfg, ["bot.kv"]), "bot.kv")
    assert (kv.state, kv.reason) == ("skipped", "initial copy still in progress")
    p.sync()
    assert _verify(cfg).verdict == "equal"


# -- the way the real harvester gets there ---------------------------------------------------
@pytest.mark.parametrize(
    ("bot_sql", "columns"),
    [
        ("ALTER TABLE kv RENAME COLUMN v TO w;", ["k", "w", "note"]),
        ("DROP INDEX kv_note; ALTER TABLE kv DROP COLUMN note;", ["k", "v"]),
    ],
)
def test_renames_and_drops_through_the_harvester_end_equal(copied, bot_sql, columns) -> None:
    tmp_path, cfg, p = copied
    _bot(tmp_path, bot_sql)
    p.sync()
    assert _columns(tmp_path, "kv") == columns
    assert p.diffs() == [] and _verify(cfg).verdict == "equal"


def test_an_indexed_column_renamed_keeps_its_index_name(copied) -> None:
    tmp_path, cfg, p = copied
    _bot(tmp_path, "ALTER TABLE kv RENAME COLUMN note TO memo;")
    p.sync()
    assert _columns(tmp_path, "kv") == ["k", "v", "memo"]
    with contextlib.closing(_target(tmp_path)) as c:
        (sql,) = c.execute("SELECT sql FROM sqlite_schema WHERE name='kv_note'").fetchone()
    assert "memo" in sql
    assert _verify(cfg).verdict == "equal"


# -- what else the target holds for a rebuilt table ------------------------------------------
DOCS = """
CREATE TABLE docs(id INTEGER PRIMARY KEY, title TEXT, body TEXT, junk);
CREATE VIRTUAL TABLE docs_fts USING fts5(title, body, content='docs', content_rowid='id');
CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN
  INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END;
CREATE TRIGGER docs_ad AFTER DELETE ON docs BEGIN
  INSERT INTO docs_fts(docs_fts, rowid, title, body) VALUES ('delete', old.id, old.title, old.body);
END;
"""


def test_an_fts_index_over_a_rebuilt_table_stays_exact(tmp_path, pipeline_for) -> None:
    make_db(
        tmp_path / "bot.db",
        DOCS
        + "".join(
            f"INSERT INTO docs VALUES ({i}, 'doc {i}', 'alpha {i}', {i});" for i in range(20)
        ),
    )
    cfg = _config(tmp_path)
    p = pipeline_for(cfg)
    p.sync()
    _bot(tmp_path, "ALTER TABLE docs DROP COLUMN junk; INSERT INTO docs VALUES (99, 't', 'bravo');")
    p.sync()
    _bot(tmp_path, "INSERT INTO docs VALUES (100, 'late', 'bravo late');")
    p.sync()
    assert _columns(tmp_path, "docs") == ["id", "title", "body"]
    with contextlib.closing(_target(tmp_path)) as c:
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_schema WHERE tbl_name='docs'")}
        assert {"docs_ai", "docs_ad"} <= names
        c.execute("INSERT INTO docs_fts(docs_fts, rank) VALUES ('integrity-check', 1)")
        found = [r[0] for r in c.execute("SELECT rowid FROM docs_fts('bravo') ORDER BY rowid")]
        assert found == [99, 100]
        assert c.execute("SELECT count(*) FROM docs_fts('alpha')").fetchone() == (20,)
    assert _verify(cfg).verdict == "equal"


def test_the_way_backs_capture_follows_a_rebuilt_table(copied) -> None:
    """A cut-over stage's target tables are captured for the way back (cdc.backflow); a
    rebuilt table gets its capture triggers again, made for its new shape."""
    from cdc.capture import triggers as capture
    from cdc.cutover import target_capture

    tmp_path, cfg, p = copied
    target = str(tmp_path / "core.db")
    target_capture.capture_target(load_config(cfg), target, ["kv", "items"])
    _bot(tmp_path, "ALTER TABLE kv RENAME COLUMN v TO w;")
    p.sync()
    assert _columns(tmp_path, "kv") == ["k", "w", "note"]
    with contextlib.closing(_target(tmp_path)) as c:
        assert capture.is_capturing(c, ["kv", "items"])
        assert c.execute(f"SELECT count(*) FROM {capture.CHANGES}").fetchone() == (0,)  # ours
        c.execute("UPDATE kv SET w = 'bot' WHERE k = 'k1'")  # a bot, after the cutover
        tid = capture.installed_tables(c)["kv"]
        assert c.execute(f"SELECT tid, k1 FROM {capture.CHANGES}").fetchall() == [(tid, "k1")]


def test_drop_and_create_with_other_columns_is_recopied(copied) -> None:
    tmp_path, cfg, p = copied
    _bot(
        tmp_path,
        "BEGIN; DROP TABLE kv; CREATE TABLE kv(k TEXT PRIMARY KEY, w);"
        "INSERT INTO kv VALUES ('a', 1); COMMIT;",
    )
    p.sync()
    assert _columns(tmp_path, "kv") == ["k", "w"]
    assert _verify(cfg).verdict == "equal"


def test_a_merged_member_with_another_key_is_refused(merged) -> None:
    tmp_path, _, p = merged
    _bot(
        tmp_path,
        "BEGIN; CREATE TABLE kv2(k TEXT, v, note TEXT, PRIMARY KEY(k, v));"
        "INSERT INTO kv2 SELECT * FROM kv; DROP TABLE kv; ALTER TABLE kv2 RENAME TO kv; COMMIT;",
        "other.db",
    )
    with pytest.raises(TargetError, match=r"key of other\.kv is now \(k, v\)"):
        p.sync()
