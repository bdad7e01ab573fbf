"""`cdc inventory`: finding databases by header, reading them without writing, comparing
them, and the files it writes (markdown, JSON, mapping CSV, Graphviz). Real files only."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import apsw
import msgspec
import pytest

from cdc.planning.dependency_graph import dot_string
from cdc.planning.inventory_format import Inventory
from cdc.planning.inventory_report import (
    DOT,
    JSON,
    MAPPING,
    MARKDOWN,
    SVG,
    render_dot,
    run_inventory,
)
from cdc.planning.mapping import MappingRow, read_mapping, write_mapping
from cdc.planning.survey import take_inventory
from tests.conftest import make_db
from tests.support.planning import DOT_EXE, db_named, tables_of

# -- what is reported per database ----------------------------------------------------------------

SHAPES = """
PRAGMA user_version = 7;
CREATE TABLE parent(id INTEGER PRIMARY KEY AUTOINCREMENT, code TEXT UNIQUE NOT NULL);
CREATE TABLE child(
  a INTEGER, b TEXT DEFAULT 'x', parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE,
  total REAL GENERATED ALWAYS AS (a * 2) STORED,
  PRIMARY KEY (b, a), UNIQUE (parent_id, b)
);
CREATE TABLE kv(k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID;
CREATE TABLE loose(x, y);
CREATE INDEX loose_xy ON loose(x, y) WHERE x IS NOT NULL;
CREATE INDEX loose_expr ON loose(lower(y));
CREATE VIEW parents_with_children AS
  SELECT p.code, count(*) FROM parent p JOIN "child" c ON c.parent_id = p.id GROUP BY p.code;
CREATE TRIGGER parent_log AFTER UPDATE OF code ON parent BEGIN
  INSERT OR IGNORE INTO loose(x, y) VALUES (old.code, new.code);
  UPDATE kv SET v = NULL WHERE k = new.code;
END;
CREATE TABLE _cdc_meta(k TEXT PRIMARY KEY, v);
CREATE TABLE _cdc_tables(tid INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, key_width);
CREATE TABLE _cdc_changes(seq INTEGER PRIMARY KEY, tid, op, k1);
INSERT INTO parent(code) VALUES ('p1'), ('p2');
INSERT INTO child(a, b, parent_id) VALUES (1, 'x', 1), (2, 'y', 1);
INSERT INTO loose VALUES (1, 'a'), (NULL, 'b'), (3, 'c');
"""


def test_tables_keys_constraints_and_objects(tmp_path: Path) -> None:
    make_db(tmp_path / "shapes.db", SHAPES)
    inv = take_inventory([tmp_path])
    db = db_named(inv, "shapes.db")
    t = tables_of(inv, "shapes.db")

    assert sorted(t) == ["child", "kv", "loose", "parent"]  # no sqlite_sequence, no _cdc_*
    assert db.sqlite_cdc_installed and db.user_version == 7 and db.encoding == "UTF-8"
    assert (
        db.page_size > 0
        and db.page_count > 0
        and db.size == (tmp_path / "shapes.db").stat().st_size
    )
    assert (t["parent"].key, t["parent"].autoincrement, t["parent"].rows) == (["id"], True, 2)
    assert t["parent"].unique == [["code"]]
    assert t["kv"].without_rowid and t["kv"].key == ["k"]
    assert t["loose"].key == [] and not t["loose"].without_rowid and t["loose"].rows == 3
    child = t["child"]
    assert child.key == ["b", "a"] and child.unique == [["parent_id", "b"]]
    cols = {c.name: c for c in child.columns}
    assert (cols["b"].pk, cols["a"].pk, cols["parent_id"].pk) == (1, 2, 0)
    assert cols["b"].default == "'x'" and cols["total"].generated == "stored"
    assert [
        (fk.columns, fk.ref_table, fk.ref_columns, fk.on_delete) for fk in child.foreign_keys
    ] == [(["parent_id"], "parent", ["id"], "CASCADE")]
    idx = {i.name: i for i in db.indexes}
    assert idx["loose_xy"].partial and idx["loose_xy"].columns == ["x", "y"]
    assert idx["loose_expr"].columns == ["(expression)"]
    assert {i.origin for i in db.indexes if i.sql is None} == {"u", "pk"}
    assert [(v.name, sorted(v.reads)) for v in db.views] == [
        ("parents_with_children", ["child", "parent"])
    ]
    assert [(tr.name, tr.table, tr.writes) for tr in db.triggers] == [
        ("parent_log", "parent", ["loose", "kv"])
    ]

    run = run_inventory([tmp_path], tmp_path / "out")
    md = (tmp_path / "out" / MARKDOWN).read_text()
    assert "AUTOINCREMENT" in md and "WITHOUT ROWID" in md and "none (rowid)" in md
    assert "sqlite-cdc capture installed" in md
    assert "sqlite_sequence" not in md and "_cdc_meta" not in md
    dot = (tmp_path / "out" / DOT).read_text()
    assert "style=dotted" in dot  # view and trigger edges
    assert run.written[:4] == [MARKDOWN, JSON, MAPPING, DOT]


class _EmptyModule:
    """A virtual-table module only the "bot" has: the inventory's SQLite lacks it."""

    def Create(self, *_args):  # noqa: N802 - apsw's protocol
        return "CREATE TABLE x(a, b)", self

    Connect = Create

    def Disconnect(self) -> None:  # noqa: N802
        pass

    Destroy = Disconnect


def test_what_only_the_bot_defines_does_not_hide_the_database(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "bot.db"))
    conn.create_module("botmod", _EmptyModule())
    conn.create_collation("botcoll", lambda a, b: (a > b) - (a < b))
    conn.execute(
        "CREATE VIRTUAL TABLE v USING botmod(); CREATE TABLE t(x TEXT COLLATE botcoll);"
        "CREATE INDEX t_x ON t(x); INSERT INTO t VALUES ('a'), ('b');"
    )
    conn.close()

    run = run_inventory([tmp_path], tmp_path / "out")

    assert run.inventory.unreadable == []
    t = tables_of(run.inventory, "bot.db")
    assert t["t"].rows == 2 and t["v"].module == "botmod" and t["v"].rows is None
    problems = db_named(run.inventory, "bot.db").problems
    assert any("quick_check not run" in p and "botcoll" in p for p in problems)
    assert any(p.startswith("v: ") and "botmod" in p for p in problems)
    assert [(r.table, r.kind) for r in read_mapping(tmp_path / "out" / MAPPING)] == [
        ("t", "table"),
        ("v", "virtual"),
    ]
    assert "Not checked: quick_check not run" in (tmp_path / "out" / MARKDOWN).read_text()


FTS = """
CREATE TABLE facts(id INTEGER PRIMARY KEY, body TEXT);
CREATE VIRTUAL TABLE facts_fts USING fts5(body, content='facts', content_rowid='id');
CREATE VIRTUAL TABLE standalone USING fts5(words);
CREATE TRIGGER facts_ai AFTER INSERT ON facts BEGIN
  INSERT INTO facts_fts(rowid, body) VALUES (new.id, new.body);
END;
INSERT INTO facts(body) VALUES ('one'), ('two'), ('three');
INSERT INTO standalone VALUES ('x');
"""


def test_fts5_with_external_content_and_its_shadow_tables(tmp_path: Path) -> None:
    make_db(tmp_path / "fts.db", FTS)
    run = run_inventory([tmp_path], tmp_path / "out")
    t = tables_of(run.inventory, "fts.db")

    fts = t["facts_fts"]
    assert (fts.kind, fts.module, fts.content_table, fts.rows) == ("virtual", "fts5", "facts", 3)
    assert fts.shadow_tables == [f"facts_fts_{s}" for s in ("config", "data", "docsize", "idx")]
    assert all(t[s].kind == "shadow" and t[s].shadow_of == "facts_fts" for s in fts.shadow_tables)
    assert t["standalone_data"].shadow_of == "standalone"
    assert t["standalone"].content_table is None and "standalone_content" in t

    rows = read_mapping(tmp_path / "out" / MAPPING)
    assert [(r.table, r.kind) for r in rows] == [
        ("facts", "table"),
        ("facts_fts", "fts5"),
        ("standalone", "fts5"),
    ]
    dot = (tmp_path / "out" / DOT).read_text()
    assert 'style=dashed, label="content"' in dot


# -- across databases -----------------------------------------------------------------------


def test_collisions_say_what_differs(tmp_path: Path) -> None:
    same = "CREATE TABLE calls(id INTEGER PRIMARY KEY, token TEXT, score REAL);"
    make_db(
        tmp_path / "a.db",
        same + "CREATE TABLE Users(id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE INDEX idx_name ON Users(name); CREATE TABLE pairs(a, b);",
    )
    make_db(
        tmp_path / "b.db",
        same + "CREATE TABLE users(uid TEXT PRIMARY KEY, name VARCHAR(20),"
        " email TEXT); CREATE INDEX IDX_NAME ON users(email); CREATE TABLE pairs(b, a);",
    )
    make_db(tmp_path / "c.db", "CREATE TABLE only_here(x);")

    inv = take_inventory([tmp_path])
    found = {c.table.lower(): c for c in inv.table_collisions}

    assert sorted(found) == ["calls", "pairs", "users"]
    assert found["calls"].agree and [p.database for p in found["calls"].places] == ["a.db", "b.db"]
    users = found["users"]
    assert not users.agree and users.key_differs
    assert users.missing_columns == {"a.db": ["uid", "email"], "b.db": ["id"]}
    assert [(d.column, d.types) for d in users.type_differences] == [
        ("name", {"a.db": "TEXT", "b.db": "VARCHAR(20)"})
    ]
    pairs = found["pairs"]
    assert not pairs.agree and pairs.order_differs and not pairs.missing_columns
    assert [(c.index, [(p.database, p.table) for p in c.places]) for c in inv.index_collisions] == [
        ("idx_name", [("a.db", "Users"), ("b.db", "users")])
    ]


def test_mapping_keeps_operator_edits_and_reports_vanished_tables(
    tmp_path: Path, fk_legacy: Path
) -> None:
    legacy, out = fk_legacy, tmp_path / "out"
    make_db(legacy / "old.db", "CREATE TABLE gone(x); CREATE TABLE kept(x);")
    first = run_inventory([legacy], out)
    assert first.inventory.mapping is None
    rows = read_mapping(out / MAPPING)
    assert {r.target for r in rows} == {""} and {r.source for r in rows} == {"shop", "old"}

    edited = []
    for r in rows:
        if r.table == "gone":
            r = msgspec.structs.replace(r, target="core", note="was important")
        if r.table == "kept":
            r = msgspec.structs.replace(
                r,
                target="core",
                as_="kept_old",
                merge=True,
                tag_column="src",
                tag="old",
                drop_foreign_keys=True,
                note="operator, with a comma",
                source="old_renamed",
            )
        edited.append(r)
    write_mapping(edited, out / MAPPING)
    with sqlite3.connect(legacy / "old.db") as c:
        c.execute("DROP TABLE gone")
        c.execute("CREATE TABLE fresh(y)")
        c.execute("INSERT INTO kept VALUES (1)")
    c.close()

    second = run_inventory([legacy], out, mapping=out / MAPPING)  # the same file: replaced whole

    after = {r.table: r for r in read_mapping(out / MAPPING)}
    assert "gone" not in after
    kept = after["kept"]
    assert (kept.target, kept.as_, kept.merge, kept.tag_column, kept.tag) == (
        "core",
        "kept_old",
        True,
        "src",
        "old",
    )
    assert (kept.drop_foreign_keys, kept.note, kept.source, kept.rows) == (
        True,
        "operator, with a comma",
        "old_renamed",
        1,
    )
    assert (after["fresh"].target, after["fresh"].source) == ("", "old_renamed")
    assert [(v.database, v.table, v.target) for v in second.inventory.mapping_vanished] == [
        ("old.db", "gone", "core")
    ]
    md = (out / MARKDOWN).read_text()
    assert "### In the mapping, no longer on disk" in md and "`gone`" in md
    assert not list(out.glob(".*.tmp"))


def test_foreign_keys_that_would_cross_targets(tmp_path: Path, fk_legacy: Path) -> None:
    legacy, out = fk_legacy, tmp_path / "out"
    plan = {
        "customers": "analytics",
        "regions": "exclude",
        "orders": "core",
        "lines": "core",
        "notes": "core",
    }
    rows = [
        MappingRow(
            database="shop.db",
            source="shop",
            table=t,
            target=plan[t],
            drop_foreign_keys=t == "notes",
        )
        for t in plan
    ]
    write_mapping(rows, tmp_path / "plan.csv")

    inv = run_inventory([legacy], out, mapping=tmp_path / "plan.csv").inventory

    got = sorted(
        (f.table, f.parent, f.target, f.parent_target, f.reason, f.dropped)
        for f in inv.cross_target_foreign_keys
    )
    assert got == [
        ("notes", "ghosts", "core", "", "the parent table does not exist in this file", True),
        ("orders", "customers", "core", "analytics", "the parent table goes to analytics", False),
        ("orders", "regions", "core", "exclude", "the parent table is excluded", False),
    ]  # lines -> orders stays inside core
    decoded = msgspec.json.decode((out / JSON).read_bytes(), type=Inventory)
    assert decoded.cross_target_foreign_keys == inv.cross_target_foreign_keys


ODD = [
    "my table",
    'say "hi"',
    "it's",
    "ünïcødé_表",
    "select",
    "pipe|back`tick\\slash",
]


def test_odd_identifiers_survive_every_output(tmp_path: Path) -> None:
    script = []
    for i, name in enumerate(ODD):
        q = '"' + name.replace('"', '""') + '"'
        col = '"' + f"col {name}".replace('"', '""') + '"'
        ix = '"' + f"ix {name}".replace('"', '""') + '"'
        script.append(f"CREATE TABLE {q}({col} PRIMARY KEY, ref REFERENCES {q}, n INT);")
        script.append(f"CREATE INDEX {ix} ON {q}(n);")
        script.append(f"INSERT INTO {q} VALUES ('k{i}', NULL, {i});")
    make_db(tmp_path / "legacy" / "odd names.db", "\n".join(script))
    out = tmp_path / "out"

    run = run_inventory([tmp_path / "legacy"], out)

    decoded = msgspec.json.decode((out / JSON).read_bytes(), type=Inventory)
    assert decoded == run.inventory
    db = decoded.databases[0]
    assert db.relpath == "odd names.db"
    assert sorted(t.name for t in db.tables) == sorted(ODD)
    for t in db.tables:
        assert t.key == [f"col {t.name}"] and t.rows == 1
        assert t.foreign_keys[0].ref_table == t.name
    assert sorted(i.name for i in db.indexes if i.sql) == sorted(f"ix {n}" for n in ODD)

    rows = read_mapping(out / MAPPING)
    assert sorted(r.table for r in rows) == sorted(ODD)
    write_mapping(rows, tmp_path / "again.csv")
    assert read_mapping(tmp_path / "again.csv") == rows

    dot = (out / DOT).read_text(encoding="utf-8")
    for name in ODD:
        assert dot_string(f"{name}\n1 rows") in dot
    assert dot_string('a"b\\') == '"a\\"b\\\\"'
    if DOT_EXE:
        svg = subprocess.run(
            [DOT_EXE, "-Tsvg"], input=dot.encode(), capture_output=True, check=True
        ).stdout.decode()
        assert "ünïcødé_表" in svg and "say &quot;hi&quot;" in svg
        assert "pipe|back`tick\\slash" in svg


def test_dot_quotes_database_names_and_missing_parents(tmp_path: Path) -> None:
    make_db(tmp_path / 'we"ird' / "x.db", "CREATE TABLE t(p REFERENCES nowhere(id));")
    inv = take_inventory([tmp_path])
    dot = render_dot(inv)
    assert 'label="we\\"ird/x.db";' in dot
    assert '[label="nowhere\\n(missing)", style=dashed]' in dot


def test_progress_is_reported_per_database(tmp_path: Path) -> None:
    for i in range(5):
        make_db(tmp_path / f"db{i}.db", "CREATE TABLE t(x);")
    (tmp_path / "bad.db").write_bytes(b"SQLite format 3\x00" + bytes(100))
    (tmp_path / "readme.txt").write_text("not a database")
    seen = []
    take_inventory([tmp_path], progress=lambda done, total, rel: seen.append((done, total, rel)))
    assert seen == [
        (i + 1, 6, rel)
        for i, rel in enumerate(["bad.db", "db0.db", "db1.db", "db2.db", "db3.db", "db4.db"])
    ]


@pytest.mark.skipif(DOT_EXE is None, reason="Graphviz `dot` not installed (Debian: graphviz)")
def test_svg_is_rendered_when_dot_is_installed(tmp_path: Path) -> None:
    make_db(tmp_path / "legacy" / "a.db", FTS)
    run = run_inventory([tmp_path / "legacy"], tmp_path / "out")
    assert SVG in run.written and run.notes == []
    assert (tmp_path / "out" / SVG).read_text().lstrip().startswith("<?xml")


# -- the command ----------------------------------------------------------------------------
