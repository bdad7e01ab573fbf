"""The target DDL (`cdc.ddl`): what `cdc schema` writes is what the replicator creates, foreign
keys follow renames or are refused, index names stay unique, FTS tables are rebuilt."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from cdc.config import load_config
from cdc.errors import PlanError
from cdc.planning.resolve import resolve_plan
from cdc.planning.schema_out import write_schema
from tests.conftest import cdc_cmd, make_db, write_config
from tests.support.planning import schema_objects

HEAD = """
state_dir = "state"
[targets]
core = "out/core.db"
analytics = "out/analytics.db"
"""


def _cfg(root: Path, sources: dict[str, str], rules: str):
    text = HEAD + "".join(f'[[sources]]\nname = "{n}"\npath = "{p}"\n' for n, p in sources.items())
    return load_config(write_config(root, text + rules))


@pytest.fixture
def shop(tmp_path):
    """Parents and children, an index name used in both files, an FTS table with its
    application triggers, and a merged table."""
    make_db(
        tmp_path / "a.db",
        """
        CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE);
        CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id)
            ON DELETE CASCADE, note TEXT, amount REAL);
        CREATE INDEX idx_note ON orders(note);
        CREATE INDEX idx_only_a ON orders(amount);
        CREATE TABLE docs(id INTEGER PRIMARY KEY, title TEXT, body TEXT, tag TEXT UNIQUE);
        CREATE VIRTUAL TABLE docs_fts USING fts5(title, body, content='docs', content_rowid='id');
        CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN
          INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END;
        CREATE TRIGGER docs_ad AFTER DELETE ON docs BEGIN
          INSERT INTO docs_fts(docs_fts, rowid, title, body)
          VALUES ('delete', old.id, old.title, old.body); END;
        CREATE TRIGGER docs_au AFTER UPDATE ON docs BEGIN
          INSERT INTO docs_fts(docs_fts, rowid, title, body)
          VALUES ('delete', old.id, old.title, old.body);
          INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END;
        CREATE TABLE ticks(sym TEXT PRIMARY KEY, px REAL);
        INSERT INTO users(name) VALUES ('ann'), ('bob');
        INSERT INTO orders VALUES (1, 1, 'x', 1.5), (2, 2, 'y', 2.5);
        INSERT INTO docs VALUES (1, 'alpha', 'the quick fox', 't1'), (2, 'beta', 'lazy dog', 't2');
        INSERT INTO ticks VALUES ('SOL', 1.0);
        """,
    )
    make_db(
        tmp_path / "b.db",
        """
        CREATE TABLE users(id INTEGER PRIMARY KEY, handle TEXT);
        CREATE TABLE notes(id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), note TEXT);
        CREATE INDEX idx_note ON notes(note);
        CREATE TABLE ticks(sym TEXT PRIMARY KEY, px REAL, vol INTEGER);
        INSERT INTO users VALUES (7, '@x');
        INSERT INTO notes VALUES (1, 7, 'hello');
        INSERT INTO ticks VALUES ('SOL', 2.0, 10), ('BTC', 3.0, 5);
        """,
    )
    return tmp_path


RULES = """
[[rules]]
table = "*"
target = "core"
[[rules]]
source = "b"
table = "users"
target = "core"
as = "b_users"
[[rules]]
table = "ticks"
target = "analytics"
merge = true
"""


def test_foreign_keys_follow_renames_and_index_names_stay_unique(shop):
    plan = resolve_plan(_cfg(shop, {"a": "a.db", "b": "b.db"}, RULES))
    write_schema(plan, shop / "schema")
    core = (shop / "schema" / "core_schema.sql").read_text()
    assert 'REFERENCES "b_users"(id)' in core  # b.notes -> renamed parent
    assert 'REFERENCES "users"(id)' in core
    assert 'INDEX IF NOT EXISTS "orders__idx_note"' in core  # claimed by two tables
    assert 'INDEX IF NOT EXISTS "notes__idx_note"' in core
    assert 'INDEX IF NOT EXISTS "idx_only_a"' in core  # unique: kept for the bots
    assert 'CREATE VIRTUAL TABLE IF NOT EXISTS "docs_fts"' in core
    analytics = (shop / "schema" / "analytics_schema.sql").read_text()
    assert (
        '"source" NOT NULL, "sym" TEXT, "px" REAL, "vol" INTEGER, PRIMARY KEY ("source", "sym")'
        in analytics
    )
    cmp = (shop / "schema" / "schema_comparison.md").read_text()
    assert "### b.users -> b_users (renamed)" in cmp
    assert "foreign key (user_id) -> `users` rewritten to `b_users`" in cmp


def test_replicated_target_holds_exactly_the_schema_file(shop, pipeline_for):
    cfg = _cfg(shop, {"a": "a.db", "b": "b.db"}, RULES)
    p = pipeline_for(cfg)
    p.sync()
    assert p.diffs() == []
    write_schema(p.plan, shop / "schema")
    for target in ("core", "analytics"):
        expected = apsw.Connection(":memory:")
        expected.execute((shop / "schema" / f"{target}_schema.sql").read_text())
        got = apsw.Connection(str(shop / "out" / f"{target}.db"))
        assert schema_objects(got) == schema_objects(expected), target


def _fts_rows(path: Path, table: str, word: str) -> list[int]:
    # apsw, the library the in-process pipeline uses: two SQLite libraries in one process
    # release each other's POSIX locks when one closes the file.
    c = apsw.Connection(str(path))
    try:
        return [r[0] for r in c.execute(f"SELECT rowid FROM {table}(?) ORDER BY rowid", (word,))]
    finally:
        c.close()


def test_fts_is_rebuilt_in_the_target_and_kept_current_through_replace(shop, pipeline_for):
    p = pipeline_for(_cfg(shop, {"a": "a.db", "b": "b.db"}, RULES))
    p.sync()
    core = shop / "out" / "core.db"
    assert _fts_rows(core, "docs_fts", "fox") == [1]
    c = apsw.Connection(str(shop / "a.db"))
    c.execute("UPDATE docs SET body = 'slow fox' WHERE id = 2")
    c.execute("INSERT INTO docs VALUES (3, 'gamma', 'fox again', 't3')")
    # REPLACE through the UNIQUE tag: row 1 goes without a DELETE trigger in the legacy file
    c.execute("INSERT OR REPLACE INTO docs VALUES (4, 'delta', 'no animal', 't1')")
    c.execute("DELETE FROM docs WHERE id = 3")
    c.close()
    p.sync()
    # The legacy index is now stale for row 1 (the application's REPLACE bypassed its own
    # trigger); the target's replicator fires the DELETE trigger, so its index is exact.
    conn = apsw.Connection(str(core))
    conn.execute("INSERT INTO docs_fts(docs_fts, rank) VALUES ('integrity-check', 1)")
    conn.close()
    assert _fts_rows(core, "docs_fts", "fox") == [2]
    assert _fts_rows(core, "docs_fts", "animal") == [4]


def test_foreign_keys_that_cannot_hold_are_refused_or_dropped(shop):
    moved = RULES + '[[rules]]\nsource = "a"\ntable = "users"\ntarget = "analytics"\n'
    with pytest.raises(PlanError) as e:
        resolve_plan(_cfg(shop, {"a": "a.db", "b": "b.db"}, moved))
    assert (
        "foreign key a.orders(user_id) -> users: crosses targets ('orders' goes to 'core', "
        "'users' to 'analytics')" in str(e.value)
    )
    excluded = RULES + '[[rules]]\nsource = "b"\ntable = "users"\nexclude = true\n'
    excluded = excluded.replace('target = "core"\nas = "b_users"', "exclude = true")
    excluded = excluded.replace('[[rules]]\nsource = "b"\ntable = "users"\nexclude = true\n', "", 1)
    with pytest.raises(PlanError, match="b.notes\\(user_id\\) -> users: 'users' is not copied"):
        resolve_plan(_cfg(shop, {"a": "a.db", "b": "b.db"}, excluded))
    dropped = (
        moved
        + '[[rules]]\nsource = "a"\ntable = "orders"\ntarget = "core"\ndrop_foreign_keys = true\n'
    )
    plan = resolve_plan(_cfg(shop, {"a": "a.db", "b": "b.db"}, dropped))
    write_schema(plan, shop / "schema")
    core = (shop / "schema" / "core_schema.sql").read_text()
    orders = next(b for b in core.split("\n\n") if b.startswith("-- a.orders"))
    assert "REFERENCES" not in orders and "ON DELETE" not in orders
    assert "**dropped**" in (shop / "schema" / "schema_comparison.md").read_text()


def test_collisions_say_what_differs_and_merges_need_compatible_types(shop):
    with pytest.raises(PlanError) as e:
        resolve_plan(
            _cfg(shop, {"a": "a.db", "b": "b.db"}, '[[rules]]\ntable = "*"\ntarget = "core"\n')
        )
    msg = str(e.value)
    assert (
        "core.users receives a.users, b.users (only in a.users: name; only in b.users: handle)"
        in msg
    )
    assert "core.ticks receives a.ticks, b.ticks (only in b.ticks: vol)" in msg
    make_db(shop / "c.db", "CREATE TABLE ticks(sym TEXT PRIMARY KEY, px TEXT);")
    with pytest.raises(PlanError) as e:
        resolve_plan(_cfg(shop, {"a": "a.db", "b": "b.db", "c": "c.db"}, RULES))
    assert (
        "analytics.ticks: merged tables disagree on column types (px is REAL in a.ticks vs "
        in str(e.value)
    )


def test_an_index_name_that_clashes_even_renamed_is_refused(tmp_path):
    make_db(tmp_path / "a.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, x); CREATE INDEX i ON t(x);")
    make_db(tmp_path / "b.db", "CREATE TABLE i(id INTEGER PRIMARY KEY); CREATE TABLE t__i(y);")
    rules = '[[rules]]\ntable = "*"\ntarget = "core"\n'
    with pytest.raises(
        PlanError, match="core: the name 't__i' is taken by table t__i and by index i of a.t"
    ):
        resolve_plan(_cfg(tmp_path, {"a": "a.db", "b": "b.db"}, rules))


def test_cli_schema_writes_the_files(shop):
    cfg = write_config(
        shop,
        HEAD + '[[sources]]\nname = "a"\npath = "a.db"\n'
        '[[sources]]\nname = "b"\npath = "b.db"\n' + RULES,
    )
    r = cdc_cmd("schema", "-c", str(cfg), "--out", str(shop / "s"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (shop / "s").iterdir()) == [
        "analytics_schema.sql",
        "core_schema.sql",
        "schema_comparison.md",
    ]
