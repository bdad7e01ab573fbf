"""`cdc inventory`: finding databases by header, reading them without writing, comparing
them, and the files it writes (markdown, JSON, mapping CSV, Graphviz). Real files only."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import apsw
import msgspec
import pytest

from cdc.errors import ConfigError
from cdc.planning.discover import discover
from cdc.planning.inventory_format import DatabaseReport, Inventory
from cdc.planning.inventory_report import (
    DOT,
    JSON,
    MAPPING,
    MARKDOWN,
    SVG,
    dot_string,
    render_dot,
    run_inventory,
)
from cdc.planning.mapping import MappingRow, read_mapping, write_mapping
from cdc.planning.survey import take_inventory
from tests.conftest import make_db

DOT_EXE = shutil.which("dot")


def db_named(inv: Inventory, rel: str) -> DatabaseReport:
    return next(d for d in inv.databases if d.relpath == rel)


def tables_of(inv: Inventory, rel: str) -> dict:
    return {t.name: t for t in db_named(inv, rel).tables}


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root with its mtime and content hash: proof nothing was written."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = (
                p.stat().st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return out


# -- discovery --------------------------------------------------------------------------------


def test_databases_are_found_by_header_not_by_name(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    make_db(root / "real.txt", "CREATE TABLE a(x);")
    make_db(root / "noext", "CREATE TABLE b(x);")
    make_db(root / "sub" / "deep" / "c.sqlite", "CREATE TABLE c(x);")
    make_db(root / "._apple.db", "CREATE TABLE d(x);")  # AppleDouble, even with a header
    (root / "notes.db").write_text("this is text, not SQLite\n")
    (root / "empty.db").write_bytes(b"")
    (root / "real.txt-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(28))
    (root / "x.db-journal").write_bytes(b"SQLite format 3\x00")
    (root / "x.db-shm").write_bytes(bytes(64))
    os.mkfifo(root / "pipe.db")  # opening it would block: must be skipped unread
    (root / "sub" / "loop").symlink_to("..", target_is_directory=True)
    (root / "again.db").symlink_to(root / "noext")
    (root / "dangling.db").symlink_to(root / "nowhere")

    found = discover([root])

    assert found.base == str(root)
    rel = [os.path.relpath(p, root) for p in found.databases]
    assert rel == ["noext", "real.txt", "sub/deep/c.sqlite"]
    kinds = {s.relpath: s.kind for s in found.skipped}
    assert kinds == {
        "._apple.db": "apple_double",
        "again.db": "duplicate",
        "dangling.db": "symlink",
        "empty.db": "empty",
        "notes.db": "not_sqlite",
        "pipe.db": "special",
        "real.txt-wal": "side_file",
        "sub/loop": "duplicate",
        "x.db-journal": "side_file",
        "x.db-shm": "side_file",
    }
    reasons = {s.relpath: s.reason for s in found.skipped}
    assert reasons["again.db"] == "same file as noext"
    assert reasons["notes.db"] == "no SQLite header"
    assert found.unreadable == []


def test_directory_symlinks_are_followed_once(tmp_path: Path) -> None:
    make_db(tmp_path / "real" / "a.db", "CREATE TABLE a(x);")
    make_db(tmp_path / "elsewhere" / "b.db", "CREATE TABLE b(x);")
    root = tmp_path / "root"
    root.mkdir()
    (root / "0link").symlink_to(tmp_path / "real", target_is_directory=True)
    (root / "real").symlink_to(tmp_path / "real", target_is_directory=True)
    (root / "z").mkdir()
    (root / "z" / "ext").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "back").symlink_to(root, target_is_directory=True)  # a loop

    found = discover([root])

    assert [os.path.relpath(p, root) for p in found.databases] == ["0link/a.db", "z/ext/b.db"]
    assert {s.relpath for s in found.skipped} == {"real", "z/ext/back"}


def test_several_dirs_share_their_common_parent_as_base(tmp_path: Path) -> None:
    make_db(tmp_path / "a" / "one.db", "CREATE TABLE t(x);")
    make_db(tmp_path / "b" / "c" / "two.db", "CREATE TABLE t(x);")
    inv = take_inventory([tmp_path / "a", tmp_path / "b" / "c"])
    assert inv.base == str(tmp_path)
    assert [d.relpath for d in inv.databases] == ["a/one.db", "b/c/two.db"]
    assert all(Path(d.path).is_absolute() for d in inv.databases)


def test_paths_that_are_not_utf8_are_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    bad = os.fsdecode(b"caf\xe9.db")
    make_db(root / bad, "CREATE TABLE t(x);")
    make_db(root / os.fsdecode(b"dir\xfe") / "inner.db", "CREATE TABLE t(x);")
    make_db(root / "good.db", "CREATE TABLE t(x);")
    run = run_inventory([root], tmp_path / "out")
    assert [d.relpath for d in run.inventory.databases] == ["good.db"]
    assert [(u.relpath, u.kind) for u in run.inventory.unreadable] == [
        ("caf\\xe9.db", "name"),
        ("dir\\xfe", "name"),
    ]
    assert msgspec.json.decode((tmp_path / "out" / JSON).read_bytes(), type=Inventory)


def test_a_missing_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        discover([tmp_path / "nope"])


# -- unreadable databases -----------------------------------------------------------------------


def test_corrupt_databases_are_reported_with_the_reason(tmp_path: Path) -> None:
    bad = make_db(tmp_path / "bad.db", "CREATE TABLE t(x); CREATE INDEX i ON t(x);")
    with sqlite3.connect(bad) as c:
        c.executemany("INSERT INTO t VALUES (?)", [(os.urandom(500),) for _ in range(200)])
    c.close()
    with open(bad, "r+b") as f:  # keep page 1 (header, schema); overwrite the rest
        f.seek(4096)
        f.write(b"\xa5" * (bad.stat().st_size - 4096))
    (tmp_path / "headeronly.db").write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    make_db(tmp_path / "fine.db", "CREATE TABLE ok(x);")

    inv = take_inventory([tmp_path])

    assert [d.relpath for d in inv.databases] == ["fine.db"]
    reasons = {u.relpath: (u.kind, u.reason) for u in inv.unreadable}
    assert reasons["bad.db"][0] == "corrupt"
    assert "quick_check" in reasons["bad.db"][1] or "malformed" in reasons["bad.db"][1]
    assert reasons["headeronly.db"][0] == "corrupt"


def inventory_as_nobody(root: Path) -> Inventory:
    """Root reads a chmod 000 file anyway: as root, survey from a child process that has
    dropped to `nobody` (a real permission check, no mock)."""
    if os.geteuid() != 0:
        return take_inventory([root])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            data = msgspec.json.encode(take_inventory([root]))
        except BaseException as e:  # reported to the parent
            data = b"!" + repr(e).encode()
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    assert not data.startswith(b"!"), data
    return msgspec.json.decode(data, type=Inventory)


def test_unreadable_files_and_folders_are_reported() -> None:
    with tempfile.TemporaryDirectory() as tmp:  # not under pytest's root-only tmp folder
        root = Path(tmp) / "legacy"
        make_db(root / "fine.db", "CREATE TABLE t(x);")
        locked = make_db(root / "locked.db", "CREATE TABLE t(x);")
        hidden = make_db(root / "secret" / "b.db", "CREATE TABLE t(x);").parent
        Path(tmp).chmod(0o755)  # explicit: an in-process `cdc` command set umask 077
        root.chmod(0o755)
        (root / "fine.db").chmod(0o644)
        locked.chmod(0)
        hidden.chmod(0)
        try:
            inv = inventory_as_nobody(root)
        finally:
            locked.chmod(0o644)
            hidden.chmod(0o755)
    assert [d.relpath for d in inv.databases] == ["fine.db"]
    assert [(u.relpath, u.kind) for u in inv.unreadable] == [
        ("locked.db", "permission"),
        ("secret", "permission"),
    ]
    assert "Permission denied" in inv.unreadable[0].reason


def test_a_hot_journal_is_reported_not_rolled_back(tmp_path: Path) -> None:
    src = tmp_path / "work" / "h.db"
    make_db(src, "CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    c = sqlite3.connect(src, isolation_level=None)
    c.execute("PRAGMA cache_size=2")  # spill uncommitted pages into the file
    c.execute("BEGIN")
    c.execute(
        "INSERT INTO t SELECT randomblob(4000) FROM (SELECT 1 FROM pragma_table_list) "
        "JOIN (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i<300) "
        "SELECT i FROM r)"
    )
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(src, crashed / "h.db")  # what a writer killed mid-transaction leaves
    shutil.copy(str(src) + "-journal", crashed / "h.db-journal")
    c.execute("ROLLBACK")
    c.close()
    before = snapshot(crashed)

    inv = take_inventory([crashed])

    assert [(u.relpath, u.kind) for u in inv.unreadable] == [("h.db", "hot_journal")]
    assert snapshot(crashed) == before


def test_reading_creates_no_side_files_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    make_db(root / "rollback.db", "CREATE TABLE t(x); INSERT INTO t VALUES (1),(2);")
    make_db(root / "wal_closed.db", "CREATE TABLE t(x); INSERT INTO t VALUES (1);", wal=True)
    before = snapshot(root)
    assert sorted(before) == ["rollback.db", "wal_closed.db"]

    inv = take_inventory([root])

    assert snapshot(root) == before  # no -wal, -shm or -journal appeared
    wal = db_named(inv, "wal_closed.db")
    assert (wal.journal_mode, wal.wal_file, wal.wal_size) == ("wal", False, None)
    assert db_named(inv, "rollback.db").journal_mode == "delete"
    assert tables_of(inv, "rollback.db")["t"].rows == 2


def test_rows_still_in_the_wal_are_counted(tmp_path: Path) -> None:
    path = make_db(tmp_path / "live.db", "CREATE TABLE t(x);", wal=True)
    bot = sqlite3.connect(path, isolation_level=None)  # keeps the -wal from being folded in
    try:
        bot.execute("PRAGMA wal_autocheckpoint=0")
        bot.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
        inv = take_inventory([tmp_path])
    finally:
        bot.close()
    db = db_named(inv, "live.db")
    assert db.wal_file and db.wal_size and db.wal_size > 0
    assert tables_of(inv, "live.db")["t"].rows == 50


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
    assert "style=dashed, label=content" in dot


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


def write_fk_dbs(root: Path) -> None:
    make_db(
        root / "shop.db",
        """
        CREATE TABLE customers(id INTEGER PRIMARY KEY);
        CREATE TABLE regions(id INTEGER PRIMARY KEY);
        CREATE TABLE orders(id INTEGER PRIMARY KEY,
            customer_id INTEGER REFERENCES customers(id), region_id INTEGER REFERENCES regions);
        CREATE TABLE lines(order_id INTEGER REFERENCES orders(id), n INTEGER);
        CREATE TABLE notes(order_id INTEGER REFERENCES ghosts(id));
    """,
    )


def test_mapping_keeps_operator_edits_and_reports_vanished_tables(tmp_path: Path) -> None:
    legacy, out = tmp_path / "legacy", tmp_path / "out"
    write_fk_dbs(legacy)
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


def test_foreign_keys_that_would_cross_targets(tmp_path: Path) -> None:
    legacy, out = tmp_path / "legacy", tmp_path / "out"
    write_fk_dbs(legacy)
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
