"""A PostgreSQL target: `cdc check` counts what each legacy column holds and refuses, by
column with counts and examples, every kind of value its PostgreSQL type cannot carry
exactly (issue 19, "Types, stated and proven"); every other command refuses such a
target until it is replicated, and a URL with a password is refused everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.config import load_config
from cdc.errors import ConfigError
from cdc.planning import pg_fit
from cdc.planning.pg_fit import pg_misfits
from cdc.planning.resolve import resolve_plan
from tests.conftest import cdc_cmd, make_db, write_config

SCHEMA = """
CREATE TABLE fills(id INTEGER PRIMARY KEY, qty INTEGER, px REAL, note TEXT, raw BLOB,
                   amount NUMERIC, anything);
INSERT INTO fills VALUES (1, 5, 1.5, 'ok', x'00ff', 7, x'01');
INSERT INTO fills VALUES (2, 'five', 2.5, 'a' || char(0) || 'b', x'', 0.25, NULL);
INSERT INTO fills VALUES (3, 3.25, -0.0, CAST(x'41ff' AS TEXT), 'text', 1e300, 4);
INSERT INTO fills VALUES (4, NULL, 'cheap', 9, NULL, 'n/a', 'x');  -- 9 is stored '9'

"""


def _setup(tmp_path: Path, target: str) -> Path:
    make_db(tmp_path / "bot.db", SCHEMA)
    return write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "{target}"\n'
        f'[[sources]]\nname = "bot"\npath = "{tmp_path}/bot.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\n',
    )


def test_every_misfit_is_counted_by_column_with_examples(tmp_path: Path) -> None:
    cfg = load_config(_setup(tmp_path, "postgresql://cdc@db1/core"), postgres=True)
    got = {(m.column, m.reason): (m.count, m.examples) for m in pg_misfits(cfg, resolve_plan(cfg))}
    assert got == {
        ("qty", "TEXT in a bigint column"): (1, ["id=2 -> 'five'"]),
        ("qty", "REAL in a bigint column"): (1, ["id=3 -> 3.25"]),
        ("px", "TEXT in a double precision column"): (1, ["id=4 -> 'cheap'"]),
        ("note", "TEXT holding NUL"): (1, ["id=2 -> 'a\\0b'"]),
        ("note", "TEXT that is not valid UTF-8"): (1, ["id=3 -> CAST(x'41ff' AS TEXT)"]),
        ("raw", "TEXT in a bytea column"): (1, ["id=3 -> 'text'"]),
        ("amount", "TEXT in a numeric column"): (1, ["id=4 -> 'n/a'"]),
        (
            "amount",
            "a whole-number REAL in a numeric column (it would come back INTEGER)",
        ): (1, ["id=3 -> 1e+300"]),
        ("anything", "INTEGER in a bytea column"): (1, ["id=3 -> 4"]),
        ("anything", "TEXT in a bytea column"): (1, ["id=4 -> 'x'"]),
    }, got


def test_check_refuses_them_and_other_commands_refuse_the_target(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, "postgresql://cdc@db1/core")
    r = cdc_cmd("check", "-c", str(cfg))
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "10 thing(s) PostgreSQL cannot hold" in r.stderr, r.stderr
    assert (
        "core: bot.fills.qty (INTEGER -> bigint): 1 x TEXT in a bigint column, e.g. id=2 -> 'five'"
        in r.stderr
    )
    r = cdc_cmd("uninstall", "-c", str(cfg))
    assert r.returncode == 2 and "a PostgreSQL target is taken only by" in r.stderr, r.stderr
    assert not list(tmp_path.glob("postgresql*"))  # never taken for a file name


def test_a_table_whose_values_fit_passes(tmp_path: Path) -> None:
    make_db(
        tmp_path / "ok.db",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, px REAL, b BLOB, n NUMERIC, s TEXT);"
        "INSERT INTO t VALUES (9223372036854775807, -0.0, x'', 0.1, 'é');"
        "INSERT INTO t VALUES (-9223372036854775808, 1e308, NULL, 12, NULL);",
    )
    cfg = write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "postgresql://cdc@db1/core"\n'
        f'[[sources]]\nname = "ok"\npath = "{tmp_path}/ok.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    r = cdc_cmd("check", "-c", str(cfg))
    assert r.returncode == 0 and "ok: 1 sources, 1 tables mapped" in r.stdout, r.stderr


@pytest.mark.parametrize(
    "url",
    ["postgresql://cdc:secret@db1/core", "postgresql://cdc@db1/core?password=secret"],
)
def test_a_password_in_the_url_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="carries a password") as e:
        load_config(_setup(tmp_path, url), postgres=True)
    assert "secret" not in str(e.value)


def test_a_rule_keeps_a_column_as_text(tmp_path: Path) -> None:
    """The corpus's common case: a DATETIME column (NUMERIC affinity) holding its times as
    TEXT. `postgres_types` gives it `text`: those values fit, and a number written there
    is then the misfit (nothing is converted)."""
    make_db(
        tmp_path / "m.db",
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, at DATETIME, n NUMERIC);"
        "INSERT INTO notes VALUES (1, '2025-09-01 05:36:12', 1), (2, 1700000000, 2);",
    )
    text = (
        f'state_dir = "state"\n[targets]\ncore = "postgresql://cdc@db1/core"\n'
        f'[[sources]]\nname = "m"\npath = "{tmp_path}/m.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\npostgres_types = {{ {cols} }}\n'
    )
    cfg = load_config(write_config(tmp_path, text.format(cols='at = "text"')), postgres=True)
    got = [(m.column, m.pg_type, m.reason) for m in pg_misfits(cfg, resolve_plan(cfg))]
    assert got == [("at", "text", "INTEGER in a text column")], got
    with pytest.raises(ConfigError, match=r"postgres_types.at 'date'.*bigint"):
        load_config(write_config(tmp_path, text.format(cols='at = "date"')), postgres=True)
    cfg = load_config(write_config(tmp_path, text.format(cols='nope = "text"')), postgres=True)
    plan = resolve_plan(cfg, strict=False)
    assert any("`postgres_types` names no column 'nope'" in p for p in plan.problems), plan.problems


def test_a_key_under_nocase_is_refused(tmp_path: Path) -> None:
    """SQLite's REPLACE of 'a' by 'A' under a NOCASE key deletes 'a' without a trigger;
    a PostgreSQL key compares bytes and would keep both. Refused by name, with no row
    needed to show it."""
    make_db(tmp_path / "k.db", "CREATE TABLE t(name TEXT COLLATE NOCASE PRIMARY KEY, v);")
    cfg = load_config(
        write_config(
            tmp_path,
            f'state_dir = "state"\n[targets]\ncore = "postgresql://cdc@db1/core"\n'
            f'[[sources]]\nname = "k"\npath = "{tmp_path}/k.db"\n'
            '[[rules]]\ntable = "*"\ntarget = "core"\n',
        ),
        postgres=True,
    )
    got = [m.line() for m in pg_misfits(cfg, resolve_plan(cfg))]
    assert got == [
        "core: k.t.name (PRIMARY KEY -> key): 0 x a key that compares under NOCASE "
        "(PostgreSQL keys compare bytes: a REPLACE by another spelling would leave both)"
    ], got


def test_orphans_of_a_carried_foreign_key_are_counted_not_refused(tmp_path: Path) -> None:
    """SQLite enforces no foreign key unless a connection asks: legacy rows may reference
    no parent. The key is added NOT VALID after cutover (docs/postgres.md), so they are
    counted by key with examples, a warning; a NULL reference is no orphan (MATCH SIMPLE,
    in both engines), and the parent is matched byte for byte, as PostgreSQL will."""
    make_db(
        tmp_path / "o.db",
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, code TEXT UNIQUE);"
        "CREATE TABLE fills(id INTEGER PRIMARY KEY, acct_id INTEGER REFERENCES acct(id));"
        "CREATE TABLE notes(code TEXT COLLATE NOCASE, FOREIGN KEY (code) REFERENCES acct(code));"
        "CREATE TABLE pairs(a INTEGER, b INTEGER, PRIMARY KEY (a, b));"
        "CREATE TABLE legs(id TEXT PRIMARY KEY, a INTEGER, b INTEGER,"
        " FOREIGN KEY (a, b) REFERENCES pairs(a, b));"
        "INSERT INTO acct VALUES (1, 'A'), (2, 'B');"
        "INSERT INTO fills VALUES (1, 1), (2, 99), (3, NULL), (4, 98), (5, 2), (6, 97), (7, 96);"
        "INSERT INTO notes VALUES ('A'), ('a'), (NULL);"  # 'a' is no 'A' in PostgreSQL
        "INSERT INTO pairs VALUES (1, 1);"
        "INSERT INTO legs VALUES ('x', 1, 1), ('y', 1, 2), ('z', NULL, 2);",
    )
    cfg = write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "postgresql://cdc@db1/core"\n'
        f'[[sources]]\nname = "o"\npath = "{tmp_path}/o.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    loaded = load_config(cfg, postgres=True)
    got = [m.line() for m in pg_fit.pg_orphans(loaded, resolve_plan(loaded))]
    assert got == [
        "core: o.fills.acct_id (REFERENCES acct(id) -> foreign key fills__fk_acct_id): "
        "4 x a reference no parent row holds (the key is added NOT VALID; VALIDATE fails "
        "until they are fixed), e.g. id=2 -> 99; id=4 -> 98; id=6 -> 97",
        "core: o.legs.a,b (REFERENCES pairs(a, b) -> foreign key legs__fk_a_b): "
        "1 x a reference no parent row holds (the key is added NOT VALID; VALIDATE fails "
        "until they are fixed), e.g. id='y' -> (1, 2)",
        "core: o.notes.code (REFERENCES acct(code) -> foreign key notes__fk_code): "
        "1 x a reference no parent row holds (the key is added NOT VALID; VALIDATE fails "
        "until they are fixed), e.g. rowid=2 -> 'a'",
    ], got
    r = cdc_cmd("check", "-c", str(cfg))  # a warning, never a refusal
    assert r.returncode == 0, r.stderr
    assert f"warning: {got[0]}" in r.stderr, r.stderr
