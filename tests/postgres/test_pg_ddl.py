"""`cdc schema` for a PostgreSQL target: the DDL runs on a real server and makes the
tables the legacy files describe (types by affinity, keys, identity for AUTOINCREMENT,
the rowid as key of a keyless table, UNIQUEs and indexes, a merged table keyed and
indexed by its tag first); what does not translate is refused by name (`cdc check`),
and a DEFAULT expression left out is named for review."""

from __future__ import annotations

from pathlib import Path

import psycopg

from cdc.config import load_config
from cdc.planning import pg_ddl
from cdc.planning.resolve import resolve_plan
from tests.conftest import cdc_cmd, make_db, write_config

BOT = """
CREATE TABLE fills(id INTEGER PRIMARY KEY AUTOINCREMENT, sym TEXT NOT NULL UNIQUE,
  px REAL DEFAULT 0, qty INTEGER DEFAULT '5', at TEXT DEFAULT CURRENT_TIMESTAMP,
  note TEXT DEFAULT (lower('X')), raw BLOB);
CREATE INDEX fills_px ON fills(px DESC);
CREATE TABLE log(msg TEXT, level INTEGER);
CREATE INDEX log_lower ON log(lower(msg));
CREATE TABLE users(name TEXT PRIMARY KEY, email TEXT UNIQUE COLLATE NOCASE);
CREATE TABLE trades(id TEXT PRIMARY KEY, amount NUMERIC);
CREATE VIRTUAL TABLE notes_fts USING fts5(msg, content='log');
CREATE INDEX trades_amount ON trades(amount);
INSERT INTO fills(sym) VALUES ('SOL');
INSERT INTO users VALUES (NULL, 'a@x'), ('ann', 'b@x');
"""
OTHER = "CREATE TABLE trades(id TEXT PRIMARY KEY, amount NUMERIC, extra TEXT);"
RULES = """
[[rules]]
table = "*"
target = "core"
[[rules]]
table = "trades"
target = "core"
merge = true
tag_column = "bot"
"""


def _cfg(tmp_path: Path, target: str) -> Path:
    make_db(tmp_path / "a.db", BOT)
    make_db(tmp_path / "b.db", OTHER)
    return write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "{target}"\n'
        f'[[sources]]\nname = "a"\npath = "{tmp_path}/a.db"\n'
        f'[[sources]]\nname = "b"\npath = "{tmp_path}/b.db"\n{RULES}',
    )


def test_the_ddl_makes_the_tables_on_a_real_server(tmp_path: Path, pg) -> None:
    cfg = load_config(_cfg(tmp_path, "postgresql://cdc@db1/core"), postgres=True)
    tables = pg_ddl.target_ddl(resolve_plan(cfg, strict=False), "core")
    with psycopg.connect(pg) as c:
        for t in tables:
            for sql in t.statements:
                c.execute(sql)
        cols = {
            (r[0], r[1]): (r[2], r[3], r[4])
            for r in c.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            )
        }
        keys = dict(
            c.execute(
                "SELECT t.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "JOIN pg_class t ON t.oid = i.indrelid WHERE i.indisprimary"
            ).fetchall()
        )
        idx = {
            r[0]
            for r in c.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' "
                "AND indexname NOT LIKE '%_pkey'"
            )
        }
        ident = c.execute(
            "SELECT is_identity FROM information_schema.columns "
            "WHERE table_name = 'fills' AND column_name = 'id'"
        ).fetchone()[0]
    assert cols[("fills", "id")][0] == "bigint" and ident == "YES"
    assert cols[("fills", "sym")][:2] == ("text", "YES")
    assert cols[("fills", "px")] == ("double precision", "YES", "0")
    assert cols[("fills", "qty")] == ("bigint", "YES", None)  # '5' converts there: review
    assert "now()" in cols[("fills", "at")][2]
    assert cols[("fills", "raw")][0] == "bytea" and cols[("trades", "amount")][0] == "numeric"
    assert cols[("log", "rowid")][:2] == ("bigint", "NO")  # a keyless table's identity
    assert cols[("trades", "bot")][:2] == ("text", "NO")
    assert keys["trades"].endswith("(bot, id)") and keys["log"].endswith("(rowid)")
    assert "CREATE INDEX fills_px ON public.fills USING btree (px)" in idx  # DESC: Limits
    assert "CREATE UNIQUE INDEX fills__unique_sym ON public.fills USING btree (sym)" in idx
    assert any("trades__trades_amount" in i and "(bot, amount)" in i for i in idx), idx
    refused = [r for t in tables for r in t.refused]
    assert refused == [
        "a.log: index log_lower (on an expression, a collation, or partial)",
        "a.users: UNIQUE (email) compares under NOCASE",
        "a.notes_fts: an FTS table has no PostgreSQL counterpart here (exclude it; "
        "full-text search there is tsvector)",
    ], refused
    notes = [n for t in tables for n in t.notes]
    assert any("a.fills.note: DEFAULT lower('X') is not translated" in n for n in notes), notes


def test_schema_writes_it_and_check_refuses_what_does_not_translate(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "postgresql://cdc@db1/core")
    r = cdc_cmd("schema", "-c", str(cfg), "--out", str(tmp_path / "plan"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "plan" / "core_schema.sql").read_text()
    assert "-- core: PostgreSQL postgresql://cdc@db1/core" in text
    assert "-- REFUSED: a.log: index log_lower" in text
    assert '"id" bigint GENERATED BY DEFAULT AS IDENTITY' in text
    r = cdc_cmd("check", "-c", str(cfg))
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "core: a.users: UNIQUE (email) compares under NOCASE: does not translate" in r.stderr
    # SQLite let this TEXT PRIMARY KEY hold NULL; a PostgreSQL key cannot: counted, named
    assert (
        "core: a.users.name (PRIMARY KEY -> key): 1 x NULL in the key (no PostgreSQL key holds "
        "one), e.g. rowid=1 -> NULL" in r.stderr
    ), r.stderr
    r = cdc_cmd("run", "-c", str(cfg))  # the daemon refuses them too, before anything
    assert r.returncode == 3 and "a.log: index log_lower" in r.stderr, r.stderr
