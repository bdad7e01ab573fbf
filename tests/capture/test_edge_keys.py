"""Keys at the edges: equal but not identical, unique indexes with their own collation or
created later, NULL keys and VACUUM. Each case was a silent divergence: the target kept a
row or a spelling the source no longer had while nothing failed.

The oracle here is independent of the verifier: both sides are read as (typeof, hex)
per column, so 'Alpha' and 'ALPHA', 1 and 1.0, TEXT and BLOB are all told apart. The
verifier must agree with it (a wrong "equal" is the worst outcome).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cdc.errors import TargetError
from tests.conftest import cdc_cmd, cdc_step, make_db, write_config
from tests.support.images import bot, image

COPIED = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
snapshot_chunk = 3
[[sources]]
name = "bot"
path = "legacy/bot.db"
[[rules]]
table = "*"
target = "core"
"""

MERGED = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
snapshot_chunk = 3
[[sources]]
name = "a"
path = "legacy/a.db"
[[sources]]
name = "b"
path = "legacy/b.db"
[[rules]]
table = "t"
target = "core"
merge = true
"""


def copied(tmp_path: Path, schema: str, pipeline_for):
    db = make_db(tmp_path / "legacy" / "bot.db", schema)
    p = pipeline_for(write_config(tmp_path, COPIED))
    return db, p, tmp_path / "out" / "core.db"


def check_equal(p, db: Path, target: Path, table: str, where: str = "") -> None:
    p.sync()
    assert image(target, table, where) == image(db, table)
    assert p.diffs() == []


# -- 3. keys equal under the key's collation or numerically, but not identical ---------------


def test_nocase_key_update_changes_spelling(tmp_path, pipeline_for):
    db, p, target = copied(
        tmp_path, "CREATE TABLE t(k TEXT PRIMARY KEY COLLATE NOCASE, v);", pipeline_for
    )
    b = bot(db)
    b.execute("INSERT INTO t VALUES ('Alpha', 1), ('beta', 2)")
    check_equal(p, db, target, "t")
    b.execute("UPDATE t SET k = 'ALPHA' WHERE k = 'alpha'")
    b.execute("INSERT OR REPLACE INTO t VALUES ('BETA', 3)")
    check_equal(p, db, target, "t")


def test_untyped_key_integer_to_real(tmp_path, pipeline_for):
    db, p, target = copied(tmp_path, "CREATE TABLE t(k PRIMARY KEY, v);", pipeline_for)
    b = bot(db)
    b.execute("INSERT INTO t VALUES (1, 'one'), ('x', 'ex')")
    check_equal(p, db, target, "t")
    b.execute("UPDATE t SET k = 1.0 WHERE k = 1")
    b.execute("UPDATE t SET k = 'X' WHERE k = 'x'")
    check_equal(p, db, target, "t")


def test_key_spelling_split_across_harvests(tmp_path, pipeline_for):
    """The old key's delete and the new key's image may land in different harvests: the
    target's DELETE of 'Alpha' must not take 'ALPHA' with it under NOCASE."""
    db = make_db(
        tmp_path / "legacy" / "bot.db", "CREATE TABLE t(k TEXT PRIMARY KEY COLLATE NOCASE, v);"
    )
    config = COPIED.replace("snapshot_chunk = 3", "snapshot_chunk = 3\nharvest_batch = 1")
    p = pipeline_for(write_config(tmp_path, config))
    target = tmp_path / "out" / "core.db"
    b = bot(db)
    b.execute("INSERT INTO t VALUES ('Alpha', 1)")
    check_equal(p, db, target, "t")
    b.execute("UPDATE t SET k = 'ALPHA', v = 2 WHERE k = 'Alpha'")
    for h in p.harvesters:  # one capture row per harvest, each applied on its own
        while h.harvest().events or h.pending()[1]:
            p.apply()
    check_equal(p, db, target, "t")


def test_merged_nocase_key_update(tmp_path, pipeline_for):
    schema = "CREATE TABLE t(k TEXT PRIMARY KEY COLLATE NOCASE, v);"
    a = make_db(tmp_path / "legacy" / "a.db", schema)
    make_db(tmp_path / "legacy" / "b.db", schema)
    p = pipeline_for(write_config(tmp_path, MERGED))
    target = tmp_path / "out" / "core.db"
    b = bot(a)
    b.execute("INSERT INTO t VALUES ('Alpha', 1), (1, 'int')")
    check_equal(p, a, target, "t", "WHERE source = 'a'")
    b.execute("UPDATE t SET k = 'ALPHA' WHERE k = 'alpha'")
    b.execute("UPDATE t SET k = 1.0 WHERE k = 1")
    check_equal(p, a, target, "t", "WHERE source = 'a'")


def merged_beside_binary(tmp_path, coll: str, pipeline_for, keys: list[str]):  # noqa: ANN201
    """Member a of merged `t` keyed under `coll`, holding `keys`; member b keyed BINARY,
    holding spellings a's collation would call equal; replicated and proven equal."""
    a = make_db(
        tmp_path / "legacy" / "a.db", f"CREATE TABLE t(k TEXT PRIMARY KEY COLLATE {coll}, v);"
    )
    other = make_db(tmp_path / "legacy" / "b.db", "CREATE TABLE t(k TEXT PRIMARY KEY, v);")
    p = pipeline_for(write_config(tmp_path, MERGED))
    target = tmp_path / "out" / "core.db"
    bot(a).executemany("INSERT INTO t VALUES (?, ?)", [(k, i) for i, k in enumerate(keys)])
    bot(other).execute("INSERT INTO t VALUES ('a', 'b'), ('A', 'b'), ('a ', 'b')")
    check_equal(p, a, target, "t", "WHERE source = 'a'")
    return a, other, p, target


@pytest.mark.parametrize("coll", ["NOCASE", "RTRIM"])
def test_merged_replace_by_a_collation_equal_key(tmp_path, pipeline_for, coll):
    """F3 (docs/fuzzing.md): `REPLACE` by a key equal to a row's under the legacy key's
    collation deletes that row in the legacy table without a trigger; the merged target's
    key has no collation of its own (members may differ), so its upsert must remove the
    other spelling itself, and only within the member's tag."""
    a, other, p, target = merged_beside_binary(tmp_path, coll, pipeline_for, ["a", "b"])
    b = bot(a)
    new = "'A'" if coll == "NOCASE" else "'a  '"
    b.execute(f"INSERT OR REPLACE INTO t VALUES ({new}, 3)")
    check_equal(p, a, target, "t", "WHERE source = 'a'")
    assert image(target, "t", "WHERE source = 'b'") == image(other, "t")
    b.execute("REPLACE INTO t VALUES ('b', 4)")  # the same spelling: updated in place
    b.execute("UPDATE t SET k = 'B' WHERE k = 'b'")  # then respelt, in one harvest
    check_equal(p, a, target, "t", "WHERE source = 'a'")


@pytest.mark.parametrize(("old", "new"), [("2", "2.0"), ("0", "-0.0"), ("0", "0.0")])
def test_replace_by_a_numerically_equal_key_then_a_key_update(tmp_path, pipeline_for, old, new):
    """F6 (docs/fuzzing.md): an untyped key `2`, `REPLACE` by `2.0` (which deletes `2`
    without a trigger), then an `UPDATE` of the key, all in one harvest: the event of
    `2.0` is a delete, and the target's `2` must go with it, since the legacy table holds
    no key equal to it any more."""
    db, p, target = copied(tmp_path, "CREATE TABLE t(k PRIMARY KEY, v);", pipeline_for)
    b = bot(db)
    b.execute(f"INSERT INTO t VALUES ({old}, 'old'), (7, 'seven')")
    check_equal(p, db, target, "t")
    b.execute(f"INSERT OR REPLACE INTO t VALUES ({new}, 'new')")
    b.execute(f"UPDATE t SET k = 1 WHERE k = {new}")
    check_equal(p, db, target, "t")


def test_merged_replace_then_delete_of_the_new_spelling(tmp_path, pipeline_for):
    """F3's other half: the replaced key is deleted before its harvest, so its event is a
    delete; the old spelling must go too, the member's only."""
    a, other, p, target = merged_beside_binary(tmp_path, "RTRIM", pipeline_for, ["a ", "b"])
    b = bot(a)
    b.execute("INSERT OR REPLACE INTO t VALUES ('a', 3)")
    b.execute("DELETE FROM t WHERE k = 'a'")
    check_equal(p, a, target, "t", "WHERE source = 'a'")
    assert image(target, "t", "WHERE source = 'b'") == image(other, "t")


# -- 4. REPLACE through a unique index with its own collation --------------------------------


def test_replace_through_nocase_unique_index(tmp_path, pipeline_for):
    db, p, target = copied(
        tmp_path,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT, v);"
        "CREATE UNIQUE INDEX t_email ON t(email COLLATE NOCASE);",
        pipeline_for,
    )
    b = bot(db)
    b.execute("INSERT INTO t VALUES (1, 'a@x.org', 1)")
    check_equal(p, db, target, "t")
    b.execute("INSERT OR REPLACE INTO t VALUES (2, 'A@X.ORG', 2)")
    b.execute("DELETE FROM t WHERE id = 2")  # the collapsed event is a delete of key 2
    check_equal(p, db, target, "t")


# -- 5. a unique index created after install -------------------------------------------------


def test_unique_index_created_later_is_probed(tmp_path, pipeline_for):
    db, p, target = copied(
        tmp_path, "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT, v);", pipeline_for
    )
    b = bot(db)
    b.execute("INSERT INTO t VALUES (1, 'a@x.org', 1), (2, 'b@x.org', 2)")
    check_equal(p, db, target, "t")
    b.execute("CREATE UNIQUE INDEX t_email ON t(email)")
    check_equal(p, db, target, "t")
    b.execute("INSERT OR REPLACE INTO t VALUES (3, 'a@x.org', 3)")
    b.execute("DELETE FROM t WHERE id = 3")
    check_equal(p, db, target, "t")


def test_unique_index_created_and_used_before_we_look(tmp_path, pipeline_for):
    """The index appears and a REPLACE deletes through it before any harvest: no probe
    existed, so no capture row tells of the deleted row. The table is copied again."""
    db, p, target = copied(
        tmp_path, "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT, v);", pipeline_for
    )
    b = bot(db)
    b.execute("INSERT INTO t VALUES (1, 'a@x.org', 1), (2, 'b@x.org', 2)")
    check_equal(p, db, target, "t")
    b.execute("CREATE UNIQUE INDEX t_email ON t(email)")
    b.execute("INSERT OR REPLACE INTO t VALUES (3, 'a@x.org', 3)")
    b.execute("DELETE FROM t WHERE id = 3")
    check_equal(p, db, target, "t")


# -- 6. NULL keys ----------------------------------------------------------------------------


def test_null_in_text_primary_key(tmp_path, pipeline_for):
    db, p, target = copied(tmp_path, "CREATE TABLE t(k TEXT PRIMARY KEY, v);", pipeline_for)
    b = bot(db)
    b.execute("INSERT INTO t VALUES (NULL, 'before'), (NULL, 'twin'), ('a', 1)")
    check_equal(p, db, target, "t")
    b.execute("INSERT INTO t VALUES (NULL, 'after')")
    b.execute("UPDATE t SET v = 'changed' WHERE v = 'before'")
    check_equal(p, db, target, "t")
    b.execute("UPDATE t SET k = 'named' WHERE v = 'twin'")
    b.execute("UPDATE t SET k = NULL WHERE k = 'a'")
    check_equal(p, db, target, "t")
    b.execute("DELETE FROM t WHERE v = 'changed'")
    check_equal(p, db, target, "t")


def test_integer_primary_key_desc(tmp_path, pipeline_for):
    """`INTEGER PRIMARY KEY DESC` is not a rowid alias: an insert without the key stores
    NULL there, and every such row has a NULL key."""
    db, p, target = copied(
        tmp_path, "CREATE TABLE t(id INTEGER PRIMARY KEY DESC, v);", pipeline_for
    )
    b = bot(db)
    b.execute("INSERT INTO t(v) VALUES ('a'), ('b')")
    b.execute("INSERT INTO t VALUES (7, 'seven')")
    check_equal(p, db, target, "t")
    b.execute("INSERT INTO t(v) VALUES ('c')")
    b.execute("UPDATE t SET v = v || '!'")
    check_equal(p, db, target, "t")
    b.execute("DELETE FROM t WHERE v = 'b!'")
    check_equal(p, db, target, "t")


# -- 9. VACUUM renumbers a keyless table's rowids --------------------------------------------


@pytest.mark.parametrize("wal", [False, True])
def test_vacuum_renumbers_keyless_rows(tmp_path, pipeline_for, wal):
    db = make_db(tmp_path / "legacy" / "bot.db", "CREATE TABLE t(a, b);", wal=wal)
    p = pipeline_for(write_config(tmp_path, COPIED))
    target = tmp_path / "out" / "core.db"
    b = bot(db)
    b.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"r{i}") for i in range(20)])
    b.execute("DELETE FROM t WHERE a % 3 = 0")
    check_equal(p, db, target, "t")
    b.execute("VACUUM")
    assert b.execute("SELECT max(rowid) FROM t").fetchone()[0] == 13  # renumbered
    check_equal(p, db, target, "t")
    b.execute("UPDATE t SET b = 'changed' WHERE a = 20 - 1")
    b.execute("DELETE FROM t WHERE a = 1")
    check_equal(p, db, target, "t")
    tgt = sqlite3.connect(target)
    src = sqlite3.connect(db)
    assert sorted(tgt.execute("SELECT rowid, a FROM t")) == sorted(
        src.execute("SELECT rowid, a FROM t")
    )


@pytest.mark.parametrize("merged", [False, True])
def test_replace_through_expression_unique_index(tmp_path, pipeline_for, merged):
    """A unique index on an expression has no column list to probe: the probe evaluates
    the index's own terms on the table and on NEW."""
    schema = (
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT, v);"
        "CREATE UNIQUE INDEX t_email ON t(lower(trim(email)), v % 2) WHERE v IS NOT NULL;"
    )
    if merged:
        db = make_db(tmp_path / "legacy" / "a.db", schema)
        make_db(tmp_path / "legacy" / "b.db", schema)
        p = pipeline_for(write_config(tmp_path, MERGED))
        where = "WHERE source = 'a'"
    else:
        db, p, _ = copied(tmp_path, schema, pipeline_for)
        where = ""
    target = tmp_path / "out" / "core.db"
    b = bot(db)
    b.execute("INSERT INTO t VALUES (1, 'a@x.org', 1), (2, 'b@x.org', 2)")
    check_equal(p, db, target, "t", where)
    b.execute("INSERT OR REPLACE INTO t VALUES (3, ' A@X.org ', 3)")  # replaces id 1
    b.execute("DELETE FROM t WHERE id = 3")
    b.execute("UPDATE OR REPLACE t SET email = 'B@x.ORG', v = 4 WHERE id = 2")
    check_equal(p, db, target, "t", where)
    assert len(image(target, "t", where)) == 1


def test_changes_while_no_harvester_looked(tmp_path, pipeline_for):
    """A unique index used by a REPLACE, and a VACUUM, while the daemon was down: the
    restarted harvester compares each table with the shape its cursor recorded."""
    db = make_db(
        tmp_path / "legacy" / "bot.db",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT, v); CREATE TABLE k(a, b);",
    )
    cfg = write_config(tmp_path, COPIED)
    p = pipeline_for(cfg)
    target = tmp_path / "out" / "core.db"
    b = bot(db)
    b.execute("INSERT INTO t VALUES (1, 'a@x.org', 1), (2, 'b@x.org', 2)")
    b.executemany("INSERT INTO k VALUES (?, ?)", [(i, i) for i in range(10)])
    b.execute("DELETE FROM k WHERE a < 5")
    check_equal(p, db, target, "t")
    p.close()
    b.execute("CREATE UNIQUE INDEX t_email ON t(email)")
    b.execute("INSERT OR REPLACE INTO t VALUES (3, 'a@x.org', 3)")
    b.execute("DELETE FROM t WHERE id = 3")
    b.execute("VACUUM")
    p = pipeline_for(cfg)
    p.sync()
    check_equal(p, db, target, "t")
    check_equal(p, db, target, "k")
    src = sqlite3.connect(db)
    tgt = sqlite3.connect(target)
    assert sorted(tgt.execute("SELECT rowid, a FROM k")) == sorted(
        src.execute("SELECT rowid, a FROM k")
    )


def test_verifier_tells_spellings_and_storage_classes_apart(tmp_path, pipeline_for):
    """A target that kept 'Alpha' for the source's 'ALPHA', or 1 for 1.0, is not equal."""
    db, p, target = copied(
        tmp_path,
        "CREATE TABLE t(k TEXT PRIMARY KEY COLLATE NOCASE, v); CREATE TABLE u(k PRIMARY KEY, v);",
        pipeline_for,
    )
    b = bot(db)
    b.execute("INSERT INTO t VALUES ('ALPHA', 1)")
    b.execute("INSERT INTO u VALUES (1.0, 'one')")
    check_equal(p, db, target, "t")
    tgt = sqlite3.connect(target, isolation_level=None)
    tgt.execute("UPDATE t SET k = 'Alpha'")
    tgt.execute("UPDATE u SET k = 1")
    tgt.close()
    assert {d.table for d in p.diffs()} == {"t", "u"}


def test_null_key_rows_through_a_daemon_restart(tmp_path, pipeline_for):
    """NULL-key rows written while no harvester ran, a key set and cleared again, and
    a target row with a key sitting at a rowid a NULL-key row needs."""
    db, p, target = copied(tmp_path, "CREATE TABLE t(k TEXT PRIMARY KEY, v);", pipeline_for)
    b = bot(db)
    b.execute("INSERT INTO t(rowid, k, v) VALUES (5, 'five', 5)")
    check_equal(p, db, target, "t")
    p.close()
    b.execute("INSERT INTO t(rowid, k, v) VALUES (1, NULL, 'n1')")
    b.execute("INSERT INTO t(k, v) VALUES ('a', 'a')")
    p = pipeline_for(write_config(tmp_path, COPIED))
    check_equal(p, db, target, "t")
    b.execute("DELETE FROM t WHERE k = 'five'")
    b.execute("INSERT INTO t(rowid, k, v) VALUES (5, NULL, 'n5')")
    b.execute("UPDATE t SET k = NULL WHERE k = 'a'")
    b.execute("UPDATE t SET k = 'one' WHERE rowid = 1")
    check_equal(p, db, target, "t")
    assert sorted(sqlite3.connect(target).execute("SELECT rowid, v FROM t WHERE k IS NULL")) == (
        sorted(sqlite3.connect(db).execute("SELECT rowid, v FROM t WHERE k IS NULL"))
    )


def test_null_key_in_a_merged_table_is_refused_by_name(tmp_path, pipeline_for):
    schema = "CREATE TABLE t(k TEXT PRIMARY KEY, v);"
    a = make_db(tmp_path / "legacy" / "a.db", schema)
    make_db(tmp_path / "legacy" / "b.db", schema)
    p = pipeline_for(write_config(tmp_path, MERGED))
    bot(a).execute("INSERT INTO t VALUES (NULL, 'x')")
    with pytest.raises(TargetError, match=r"a\.t has a row whose key holds NULL"):
        p.sync()


def test_null_key_rows_cutover_and_back(tmp_path, daemons):
    """A real daemon copies NULL-key rows, the cutover proves them, bots write more in the
    target, and the way back puts each at its rowid in the legacy file."""
    db = make_db(
        tmp_path / "legacy" / "bot.db",
        "CREATE TABLE t(k TEXT PRIMARY KEY, v);"
        "INSERT INTO t VALUES (NULL, 'n1'), ('a', 'a'), (NULL, 'n2');",
        wal=True,
    )
    cfg = write_config(tmp_path, COPIED)
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg)
    b = bot(db)
    b.execute("INSERT INTO t VALUES (NULL, 'n3')")
    b.execute("UPDATE t SET v = 'n2!' WHERE v = 'n2'")
    d.wait_synced()
    r = cdc_step("cutover", cfg, "core")
    assert r.returncode == 0, r.stdout + r.stderr
    target = tmp_path / "out" / "core.db"
    c = sqlite3.connect(target, isolation_level=None, timeout=10)
    c.execute("INSERT INTO t VALUES (NULL, 'in target')")
    c.execute("UPDATE t SET v = 'n1!' WHERE v = 'n1'")
    c.execute("DELETE FROM t WHERE v = 'n3'")
    c.execute("UPDATE t SET k = NULL WHERE k = 'a'")
    c.close()
    r = cdc_step("rollback", cfg, "core")
    assert r.returncode == 0, r.stdout + r.stderr + d.output()
    assert d.proc.poll() is None, d.output()
    src = sqlite3.connect(db)
    rows = sorted(src.execute("SELECT rowid, k, v FROM t"))
    assert sorted(v for _, _, v in rows) == ["a", "in target", "n1!", "n2!"]
    assert rows == sorted(sqlite3.connect(target).execute("SELECT rowid, k, v FROM t"))


def test_null_key_rows_with_streamed_blobs(tmp_path, pipeline_for):
    """A BLOB too big to travel in its row is written into the row its rowid names."""
    db, p, target = copied(tmp_path, "CREATE TABLE t(k TEXT PRIMARY KEY, b BLOB);", pipeline_for)
    b = bot(db)
    b.execute("INSERT INTO t VALUES (NULL, randomblob(9 << 20)), (NULL, randomblob(9 << 20))")
    check_equal(p, db, target, "t")
    b.execute("UPDATE t SET b = randomblob(9 << 20) WHERE rowid = 2")
    check_equal(p, db, target, "t")


@pytest.mark.parametrize(
    ("decl", "searched"),
    [
        ("k INTEGER PRIMARY KEY", False),  # the rowid
        ("k TEXT PRIMARY KEY", False),
        ("k INT NOT NULL PRIMARY KEY", False),
        ("k TEXT PRIMARY KEY COLLATE NOCASE", True),
        ("k TEXT, PRIMARY KEY(k COLLATE RTRIM)", True),
        ("k PRIMARY KEY", True),  # untyped: 2 and 2.0
        ("k NUMERIC PRIMARY KEY", True),
        ("k REAL PRIMARY KEY", True),
        ("a INTEGER, b TEXT, PRIMARY KEY(a, b)", False),
        ("a INTEGER, b, PRIMARY KEY(a, b)", True),
    ],
)
def test_a_delete_searches_other_spellings_only_where_a_key_has_them(
    tmp_path, pipeline_for, decl, searched
):
    """A deleted key whose table may hold it under another spelling is searched for in the
    harvest (`RowEvent.every_spelling` when none is found); a key with one spelling only
    (the rowid, BINARY INTEGER or TEXT) is not: its delete is exact, at no extra cost."""
    from cdc.changelog.segments import LogReader
    from cdc.events import Op, RowBatch

    db, p, target = copied(tmp_path, f"CREATE TABLE t(v, {decl});", pipeline_for)
    cols = "k" if "PRIMARY KEY(a, b)" not in decl else "a, b"
    vals = "1" if cols == "k" else "1, 'x'"
    b = bot(db)
    b.execute(f"INSERT INTO t({cols}, v) VALUES ({vals}, 'one')")
    check_equal(p, db, target, "t")
    b.execute("DELETE FROM t")
    check_equal(p, db, target, "t")
    log = LogReader(str(tmp_path / "state" / "log")).read(0, None, max_frames=10_000)
    deletes = [
        ev
        for e in log
        if isinstance(e.frame, RowBatch)
        for ev in e.frame.events
        if ev.op is Op.DELETE
    ]
    assert len(deletes) == 1
    assert deletes[0].every_spelling is searched
