"""`cdc schema` for a PostgreSQL target: the DDL runs on a real server and makes the
tables the legacy files describe (types by affinity, NOT NULL, keys, an identity for a
rowid key, the rowid as key of a keyless table, UNIQUEs and indexes, a merged table keyed
and indexed by its tag first), then the foreign keys, for after cutover; what does not
translate is refused by name (`cdc check`), and a DEFAULT expression left out, or a
foreign key not carried, is named for review."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from cdc.config import load_config
from cdc.planning import pg_ddl, pg_foreign_keys
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
    assert cols[("fills", "sym")][:2] == ("text", "NO")  # NOT NULL carried
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


def _plan(tmp_path: Path, a: str, b: str, rules: str, targets: str = ""):
    make_db(tmp_path / "a.db", a)
    make_db(tmp_path / "b.db", b)
    path = write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "postgresql://cdc@db1/core"\n{targets}'
        f'[[sources]]\nname = "a"\npath = "{tmp_path}/a.db"\n'
        f'[[sources]]\nname = "b"\npath = "{tmp_path}/b.db"\n{rules}',
    )
    return resolve_plan(load_config(path, postgres=True), strict=False)


def _make(pg: str, tables: list[pg_ddl.PgTableDDL]) -> None:
    with psycopg.connect(pg) as c:
        for t in tables:
            for sql in t.statements:
                c.execute(sql)


def _columns(c: psycopg.Connection) -> dict[tuple[str, str], tuple[str, str]]:
    return {
        (r[0], r[1]): (r[2], r[3])
        for r in c.execute(
            "SELECT table_name, column_name, is_nullable, is_identity "
            "FROM information_schema.columns WHERE table_schema = 'public'"
        )
    }


def test_not_null_is_carried_and_a_merged_column_only_when_every_member_says_it(
    tmp_path: Path, pg
) -> None:
    """SQLite enforces NOT NULL: the rows hold none, and a bot's insert after cutover
    must be refused there as it was. A merged column is NOT NULL only when every member
    has it NOT NULL: the other members' rows hold NULL in a column they lack."""
    plan = _plan(
        tmp_path,
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT, "
        '"odd ""q""" TEXT NOT NULL DEFAULT \'x\', c TEXT CHECK (c IS NOT NULL), '
        "d TEXT CONSTRAINT dn NOT NULL ON CONFLICT REPLACE DEFAULT 'y');"
        "CREATE TABLE trades(id TEXT PRIMARY KEY, amount NUMERIC NOT NULL, side TEXT NOT NULL, "
        "only_a TEXT NOT NULL);",
        "CREATE TABLE trades(id TEXT PRIMARY KEY, amount NUMERIC NOT NULL, side TEXT, extra TEXT);",
        RULES,
    )
    _make(pg, pg_ddl.target_ddl(plan, "core"))
    with psycopg.connect(pg) as c:
        got = {k: v[0] for k, v in _columns(c).items()}
        with pytest.raises(psycopg.errors.NotNullViolation):
            c.execute("INSERT INTO acct (id, name) VALUES (1, NULL)")
    assert got[("acct", "name")] == "NO" and got[("acct", 'odd "q"')] == "NO"
    assert got[("acct", "d")] == "NO"
    assert got[("acct", "note")] == "YES" and got[("acct", "c")] == "YES"  # a CHECK, not NOT NULL
    assert got[("trades", "amount")] == "NO" and got[("trades", "id")] == "NO"  # the key
    assert got[("trades", "side")] == "YES"  # b's rows may hold NULL there
    assert got[("trades", "only_a")] == "YES" and got[("trades", "extra")] == "YES"


IDENT_A = """
CREATE TABLE ev(id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE raw(v TEXT);
CREATE TABLE auto(id integer PRIMARY KEY AUTOINCREMENT, v TEXT);
CREATE TABLE tbl(v TEXT, id INTEGER, PRIMARY KEY (id DESC));
CREATE TABLE d(id INTEGER PRIMARY KEY DESC, v TEXT);
CREATE TABLE i(id INT PRIMARY KEY, v TEXT);
CREATE TABLE w(id INTEGER PRIMARY KEY, v TEXT) WITHOUT ROWID;
CREATE TABLE m(id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE n(id INTEGER PRIMARY KEY, v TEXT);
"""
IDENT_B = """
CREATE TABLE m(id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE n(id INT PRIMARY KEY, v TEXT);
"""
MERGE_MN = """
[[rules]]
table = "*"
target = "core"
[[rules]]
table = "m"
target = "core"
merge = true
tag_column = "bot"
[[rules]]
table = "n"
target = "core"
merge = true
tag_column = "bot"
"""


def test_a_rowid_key_is_an_identity_that_takes_explicit_ids(tmp_path: Path, pg) -> None:
    """SQLite gives a row inserted without an id one (INTEGER PRIMARY KEY is the rowid):
    so does PostgreSQL, BY DEFAULT, so the replicator still writes the legacy ids (COPY
    too). Not a rowid alias, hence no identity: INT, INTEGER PRIMARY KEY DESC (SQLite's
    quirk), WITHOUT ROWID, a merged table one of whose members is not a rowid table."""
    plan = _plan(tmp_path, IDENT_A, IDENT_B, MERGE_MN)
    _make(pg, pg_ddl.target_ddl(plan, "core"))
    with psycopg.connect(pg) as c:
        ident = {k: v[1] for k, v in _columns(c).items()}
        c.execute("INSERT INTO ev (id, v) VALUES (7, 'explicit')")
        with c.cursor().copy("COPY ev (id, v) FROM STDIN") as cp:
            cp.write_row((9, "copied"))
        new = c.execute("INSERT INTO ev (v) VALUES ('bot') RETURNING id").fetchone()[0]
        assert c.execute("SELECT id FROM ev ORDER BY id").fetchall() == [(new,), (7,), (9,)]
        assert c.execute("INSERT INTO raw (v) VALUES ('x') RETURNING rowid").fetchone()[0]
        c.execute("INSERT INTO m (bot, id, v) VALUES ('a', 3, 'explicit')")
        assert c.execute("INSERT INTO m (bot, v) VALUES ('b', 'x') RETURNING id").fetchone()[0]
    assert [ident[(t, "id")] for t in ("ev", "auto", "tbl", "m")] == ["YES"] * 4, ident
    assert ident[("raw", "rowid")] == "YES"
    assert [ident[(t, "id")] for t in ("d", "i", "w", "n")] == ["NO"] * 4, ident


FK_A = """
CREATE TABLE acct(id INTEGER PRIMARY KEY, code TEXT UNIQUE, plain TEXT);
CREATE TABLE fills(id INTEGER PRIMARY KEY,
  acct_id INTEGER REFERENCES acct(ID) ON DELETE CASCADE, code TEXT,
  CONSTRAINT by_code FOREIGN KEY (code) REFERENCES acct(code)
    ON UPDATE SET NULL DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE notes(acct INTEGER REFERENCES acct);
CREATE TABLE lost(id INTEGER PRIMARY KEY, x INTEGER REFERENCES cached(id));
CREATE TABLE cached(id INTEGER PRIMARY KEY);
CREATE TABLE ghost(id INTEGER PRIMARY KEY, y INTEGER REFERENCES nowhere(id));
CREATE TABLE bad(id INTEGER PRIMARY KEY, t TEXT REFERENCES acct(id), p TEXT REFERENCES acct(plain));
CREATE TABLE trades(id TEXT PRIMARY KEY, acct INTEGER REFERENCES acct(id));
CREATE TABLE tick(id INTEGER PRIMARY KEY, trade TEXT REFERENCES trades(id));
INSERT INTO acct VALUES (1, 'A', NULL);
INSERT INTO fills VALUES (1, 1, 'A'), (2, 99, 'A'), (3, NULL, 'Z');
INSERT INTO notes VALUES (1), (98);
"""
FK_RULES = RULES + '[[rules]]\ntable = "cached"\ntarget = "cache"\n'


def test_foreign_keys_are_written_for_after_cutover_not_for_the_apply(tmp_path: Path, pg) -> None:
    """SQLite enforces no foreign key unless a connection asks, so legacy rows may be
    orphans, and the apply writes tables in log order: the tables carry none; the keys
    come after every table, each added NOT VALID (the rows already there are not checked)
    then validated, which names the orphans. One whose parent is not beside it in this
    target, or that a tag column would have to join, is a NOTE."""
    plan = _plan(tmp_path, FK_A, OTHER, FK_RULES, targets=f'cache = "{tmp_path}/cache.db"\n')
    tables = pg_ddl.target_ddl(plan, "core")
    fks = pg_foreign_keys.foreign_key_ddl(plan, "core")
    assert "after cutover" in fks.what, fks.what
    for t in tables:
        assert not any("FOREIGN KEY" in s for s in t.statements), t
    for m in plan.stage("core"):  # what the apply creates a table from
        assert not any("FOREIGN KEY" in s for s in pg_ddl.table_ddl(plan, m).statements)
    assert set(fks.statements) == {
        'ALTER TABLE "fills" ADD CONSTRAINT "fills__fk_acct_id" FOREIGN KEY ("acct_id") '
        'REFERENCES "acct" ("id") ON DELETE CASCADE NOT VALID',
        'ALTER TABLE "fills" VALIDATE CONSTRAINT "fills__fk_acct_id"',
        'ALTER TABLE "fills" ADD CONSTRAINT "fills__fk_code" FOREIGN KEY ("code") '
        'REFERENCES "acct" ("code") ON UPDATE SET NULL DEFERRABLE INITIALLY DEFERRED NOT VALID',
        'ALTER TABLE "fills" VALIDATE CONSTRAINT "fills__fk_code"',
        'ALTER TABLE "notes" ADD CONSTRAINT "notes__fk_acct" FOREIGN KEY ("acct") '
        'REFERENCES "acct" ("id") NOT VALID',
        'ALTER TABLE "notes" VALIDATE CONSTRAINT "notes__fk_acct"',
    }, fks.statements
    notes = "\n".join(fks.notes)
    for why in (
        "a.lost(x) -> cached: cached goes to target cache",
        "a.ghost(y) -> nowhere: nowhere is in no target",
        "a.bad(t) -> acct: a.bad.t is text, acct.id is bigint",
        "a.bad(p) -> acct: acct has no PRIMARY KEY or UNIQUE on (plain)",
        "a.trades(acct) -> acct: trades is merged",
        "a.tick(trade) -> trades: trades is merged",
    ):
        assert why in notes, notes
    with psycopg.connect(pg, autocommit=True) as c:
        for t in tables:
            for sql in t.statements:
                c.execute(sql)
        c.execute("INSERT INTO acct VALUES (1, 'A', NULL), (2, 'B', NULL)")
        c.execute("INSERT INTO fills VALUES (1, 1, 'A'), (2, 99, 'B'), (3, NULL, 'B')")
        for sql in fks.statements:
            if "ADD CONSTRAINT" in sql:
                c.execute(sql)  # NOT VALID: the orphan already there is not checked
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="fills__fk_acct_id"):
            c.execute('ALTER TABLE "fills" VALIDATE CONSTRAINT "fills__fk_acct_id"')
        c.execute("DELETE FROM fills WHERE id = 2")
        for sql in fks.statements:
            if "VALIDATE" in sql:
                c.execute(sql)
        c.execute("DELETE FROM acct WHERE id = 1")  # ON DELETE CASCADE, as declared
        assert c.execute("SELECT id FROM fills").fetchall() == [(3,)]
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            c.execute("INSERT INTO fills VALUES (4, 42, NULL)")  # enforced from now on
        with c.transaction():  # deferred, as declared: the parent may come second
            c.execute("INSERT INTO fills VALUES (5, NULL, 'C')")
            c.execute("INSERT INTO acct VALUES (3, 'C', NULL)")


def test_schema_writes_the_foreign_keys_after_every_table(tmp_path: Path) -> None:
    """`cdc schema`'s file: the keys in a part of their own, after every table. A key the
    plan refuses (a parent elsewhere) passes once the rule drops it: then a NOTE."""
    make_db(
        tmp_path / "a.db",
        "CREATE TABLE acct(id INTEGER PRIMARY KEY);"
        "CREATE TABLE fills(id INTEGER PRIMARY KEY, acct_id INTEGER REFERENCES acct(id));"
        "CREATE TABLE lost(id INTEGER PRIMARY KEY, x INTEGER REFERENCES cached(id));"
        "CREATE TABLE cached(id INTEGER PRIMARY KEY);",
    )
    cfg = write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "postgresql://cdc@db1/core"\n'
        f'cache = "{tmp_path}/cache.db"\n'
        f'[[sources]]\nname = "a"\npath = "{tmp_path}/a.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\n'
        '[[rules]]\ntable = "cached"\ntarget = "cache"\n'
        '[[rules]]\ntable = "lost"\ntarget = "core"\ndrop_foreign_keys = true\n',
    )
    r = cdc_cmd("schema", "-c", str(cfg), "--out", str(tmp_path / "plan"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "plan" / "core_schema.sql").read_text()
    last_table = text.rindex("CREATE TABLE")
    first_fk = text.index("ADD CONSTRAINT")
    assert last_table < first_fk and "FOREIGN KEY" not in text[:first_fk], text
    assert '"fills__fk_acct_id" FOREIGN KEY ("acct_id") REFERENCES "acct" ("id") NOT VALID;' in text
    assert "-- NOTE: a.lost(x) -> cached: dropped by its rule (drop_foreign_keys)" in text, text


PARTIAL = """
CREATE TABLE fills(id INTEGER PRIMARY KEY, sym TEXT, qty INTEGER, px REAL, note TEXT);
CREATE INDEX open_fills ON fills(sym) WHERE qty > 0 AND (note IS NOT NULL OR px <= -1.5);
CREATE INDEX by_sym ON fills(sym, px) WHERE sym IN ('SOL', 'it''s') AND NOT qty = 3;
CREATE UNIQUE INDEX one_open ON fills(sym) WHERE qty > 0;
CREATE INDEX liked ON fills(sym) WHERE sym LIKE 'S%';
CREATE INDEX texty ON fills(sym) WHERE qty = '5';
CREATE INDEX called ON fills(sym) WHERE abs(qty) > 1;
"""


def test_a_partial_index_translates_where_its_condition_means_the_same(tmp_path: Path, pg) -> None:
    """A partial index whose WHERE compares plain columns with literals of their type
    (=, <>, <, >, IS [NOT] NULL, IN, AND, OR, NOT) means the same in PostgreSQL: made.
    Refused by name: a partial UNIQUE (a REPLACE in SQLite deletes only rows the condition
    holds for, which the apply does not do), LIKE (SQLite's folds ASCII case), a string
    compared with an INTEGER column (SQLite converts it), a function call."""
    plan = _plan(
        tmp_path, PARTIAL, "CREATE TABLE other(x);", '[[rules]]\ntable = "*"\ntarget = "core"\n'
    )
    [fills] = [t for t in pg_ddl.target_ddl(plan, "core") if t.what.startswith("a.fills")]
    made = [s for s in fills.statements if s.startswith("CREATE INDEX")]
    assert set(made) == {
        'CREATE INDEX IF NOT EXISTS "open_fills" ON "fills" ("sym") '
        'WHERE ("qty" > 0 AND ("note" IS NOT NULL OR "px" <= -1.5))',
        'CREATE INDEX IF NOT EXISTS "by_sym" ON "fills" ("sym", "px") '
        "WHERE (\"sym\" IN ('SOL', 'it''s') AND NOT \"qty\" = 3)",
    }, made
    refused = "\n".join(fills.refused)
    for name in ("one_open", "liked", "texty", "called"):
        assert f"index {name}" in refused, refused
    with psycopg.connect(pg) as c:
        for sql in fills.statements:
            c.execute(sql)


def test_a_table_shadowing_every_rowid_name_is_refused_not_a_crash(tmp_path: Path) -> None:
    """P4 (docs/fuzzing.md): a keyless table whose columns take rowid, oid and _rowid_ has
    no name left for its rowid: the plan refuses it by name (as for a SQLite target), and
    the PostgreSQL DDL does not crash on it."""
    make_db(tmp_path / "a.db", "CREATE TABLE t0(rowid, oid, _rowid_); CREATE TABLE ok(x);")
    make_db(tmp_path / "b.db", "CREATE TABLE other(y);")
    cfg = write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "postgresql://cdc@db1/core"\n'
        f'[[sources]]\nname = "a"\npath = "{tmp_path}/a.db"\n'
        f'[[sources]]\nname = "b"\npath = "{tmp_path}/b.db"\n[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    plan = resolve_plan(load_config(cfg, postgres=True), strict=False)
    assert pg_ddl.target_ddl(plan, "core")  # no StopIteration
    r = cdc_cmd("check", "-c", str(cfg))
    assert r.returncode == 3 and "'t0'" in r.stderr and "Traceback" not in r.stderr, r.stderr
