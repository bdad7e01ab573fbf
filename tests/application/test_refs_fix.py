"""`cdc refs --fix` on a copy of the fixture application: the diff rewrites exactly the
proven references, `--write` applies it keeping comments and formatting, and a second
run no longer finds them while everything else stays flagged."""

from __future__ import annotations

import ast
import os

import pytest
from click.testing import CliRunner

import cdc.cli.refs  # noqa: F401 - registers `refs` on the group
from cdc.application.names import legacy_names
from cdc.application.path_refs import Literal
from cdc.application.refs import find_refs
from cdc.application.refs_fix import path_edit, rewrite, sql_edit
from cdc.cli.base import cli
from cdc.config import load_config
from tests.application.app_setup import FIXTURE_APP, copy_app, make_legacy

CHANGED = {
    "bots/telegram_bot.py": [
        ('db_path="data/telegram.db"', 'db_path="data/core.db"'),
        ('"SELECT name FROM users WHERE id = ?"', '"SELECT name FROM tg_users WHERE id = ?"'),
    ],
    "bots/trading_bot.py": [
        ('DB_NAME = "trading.db"', 'DB_NAME = "core.db"'),
        ('"UPDATE orders SET', '"UPDATE trade_orders SET'),
        (
            'FROM "orders" AS o WHERE o.filled = 0\'  # keep the quotes',
            'FROM "trade_orders" AS o WHERE o.filled = 0\'  # keep the quotes',
        ),
    ],
    "services/user_sync.py": [
        ('sqlite3.connect("data/telegram.db")', 'sqlite3.connect("data/core.db")'),
        ('"INSERT OR REPLACE INTO users (id', '"INSERT OR REPLACE INTO tg_users (id'),
    ],
    "common/paths.py": [
        ('TRADING_DB = DATA_DIR / "trading.db"', 'TRADING_DB = DATA_DIR / "core.db"'),
        ('    "data/telegram.db",\n', '    "data/core.db",\n'),
    ],
}


@pytest.fixture
def app(tmp_path):
    config = make_legacy(tmp_path)
    return copy_app(tmp_path / "app"), config


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["refs", *args], catch_exceptions=False)


def test_fix_prints_the_diff_of_exactly_the_proven_references(app) -> None:
    root, config = app
    before = {p: p.read_text() for p in root.rglob("*.py")}
    out = _invoke(str(root), "-c", str(config), "--fix")
    assert out.exit_code == 14
    minus = sorted(
        line
        for line in out.output.splitlines()
        if line.startswith("-") and not line.startswith("---")
    )
    plus = sorted(
        line
        for line in out.output.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    )
    assert len(minus) == len(plus) == 9
    files = sorted(
        line.split("/app/", 1)[1] for line in out.output.splitlines() if line.startswith("+++")
    )
    assert files == sorted(CHANGED)
    for changes in CHANGED.values():
        for old, new in changes:
            assert any(old.strip() in m for m in minus), old
            assert any(new.strip() in p for p in plus), new
    assert {p: p.read_text() for p in root.rglob("*.py")} == before  # a diff, nothing written


def test_fix_write_applies_it_and_the_references_are_gone(app) -> None:
    root, config = app
    names = legacy_names(load_config(str(config)))
    first = find_refs([str(root)], names)
    fixable = {(r.file, r.line, r.table) for r in first.references if r.fixable}
    assert len(fixable) == 9
    originals = {rel: (root / rel).read_text() for rel in CHANGED}

    out = _invoke(str(root), "-c", str(config), "--fix", "--write")
    assert out.exit_code == 14  # merged tables, split files... are left flagged

    for rel, changes in CHANGED.items():
        text = (root / rel).read_text()
        ast.parse(text)
        expected = originals[rel]
        for old, new in changes:
            expected = expected.replace(old, new)
        assert text == expected  # only those literals changed: comments, layout kept
    assert (
        "# fills go to the trades table; the order is marked filled"
        in (root / "bots/trading_bot.py").read_text()
    )

    again = find_refs([str(root)], names)
    assert not any(r.fixable for r in again.references)
    left = {(r.file, r.line, r.table) for r in again.references}
    assert not (fixable & left)
    # what cannot be proven is still there
    actions = {r.action for r in again.references}
    assert "merged: reads need `WHERE origin = 'llm'`, inserts need the tag column" in actions
    assert "split across targets analytics, cache: open each for its tables" in actions
    assert any(a.startswith("ambiguous") for a in actions)
    assert any(
        r.table == "users" and r.action.startswith("CREATE TABLE IF NOT EXISTS")
        for r in again.references
    )
    # the connect that read the rewritten constant now opens the target: no longer legacy
    assert not any(
        r.file.endswith("trading_bot.py") and r.kind == "connect" for r in again.references
    )


def test_write_needs_fix(app) -> None:
    root, config = app
    out = _invoke(str(root), "-c", str(config), "--write")
    assert out.exit_code == 2 and "--write applies --fix's rewrite" in out.output


def test_a_postgresql_target_is_no_path_to_write_into_the_code() -> None:
    """A legacy file whose tables go to PostgreSQL: the code must open a connection to the
    server (`cdc.pool`), not a file; a path rewrite would name a file called
    `postgresql:/...`. Left for review, never offered."""
    lit = Literal(1, 0, '"trading.db"', "trading.db")
    for folder in ("/srv/app/data", os.getcwd()):  # a URL reads as a path under the cwd
        assert path_edit(lit, f"{folder}/trading.db", "postgresql://cdc@db1/core") is None


def test_path_edit_never_leaves_the_proven_folder() -> None:
    lit = Literal(1, 0, '"trading.db"', "trading.db")
    assert path_edit(lit, "/srv/app/data/trading.db", "/srv/app/data/core.db").spans == [
        (1, 11, "core.db")
    ]
    assert path_edit(lit, "/srv/app/data/trading.db", "/srv/consolidated/core.db") is None
    deeper = Literal(1, 0, "'./data/trading.db'", "./data/trading.db")
    assert path_edit(deeper, "/srv/app/data/trading.db", "/srv/app/db/core.db").spans == [
        (1, 18, "./db/core.db")
    ]
    assert (
        path_edit(Literal(1, 0, '"a\\\\trading.db"', "a\\trading.db"), "/x/trading.db", "/x/c.db")
        is None
    )
    assert (
        path_edit(Literal(1, 0, '"x" "trading.db"', "xtrading.db"), "/x/trading.db", "/x/c.db")
        is None
    )
    absolute = Literal(1, 0, '"/srv/app/data/trading.db"', "/srv/app/data/trading.db")
    assert (
        path_edit(absolute, "/srv/app/data/trading.db", "/srv/app/core.db").spans[0][2]
        == "/srv/app/core.db"
    )


def test_sql_edit_renames_tokens_not_words() -> None:
    sql = "SELECT orders.id, 'orders' FROM [orders] -- orders\nJOIN x ON x.o = orders.id"
    lit = Literal(1, 4, f'"""{sql}"""', sql)
    edit = sql_edit(lit, 0, len(sql), "orders", "trade_orders")
    new = rewrite(f"q = {lit.raw}\n", [edit])
    assert new == (
        'q = """SELECT trade_orders.id, \'orders\' FROM [trade_orders] -- orders\n'
        'JOIN x ON x.o = trade_orders.id"""\n'
    )
    column = "SELECT orders FROM orders"
    assert sql_edit(Literal(1, 0, f'"{column}"', column), 0, len(column), "orders", "t") is None


def test_fixture_tree_is_untouched() -> None:
    assert 'DB_NAME = "trading.db"' in (FIXTURE_APP / "bots/trading_bot.py").read_text()
