"""A merged target table behaves like its members for the application (issue 18, part 3).

Before, a merged table was the union of its members' columns without declared types,
defaults or indexes: after cutover a bot's `'5'` into what was an INTEGER column stayed
TEXT, a column's DEFAULT was gone, and every indexed query became a scan. Now it carries
the members' declared types and agreed defaults, their indexes with the tag column
leading, and their UNIQUE constraints per member (a constraint only some members have
holds for their rows only). A switched bot's writes are compared here against what the
legacy table stores for the same statement.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import apsw
import pytest

from cdc.config import load_config
from cdc.errors import TargetError
from cdc.planning.resolve import resolve_plan
from tests.conftest import make_db, write_config
from verifier import select_tables, verify_tables

POS = (
    "CREATE TABLE pos(id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, qty INTEGER DEFAULT 0, "
    "px REAL, side TEXT DEFAULT {side}, opened NUMERIC{unique});"
    "CREATE INDEX pos_px ON pos(px DESC);"
)
RULES = """
[[rules]]
table = "pos"
target = "core"
merge = true
tag_column = "src"
"""


def _setup(tmp_path: Path, pipeline_for, a: str, b: str, rows: str = ""):  # noqa: ANN202
    make_db(tmp_path / "a.db", a + rows)
    make_db(tmp_path / "b.db", b + rows)
    cfg = write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "{tmp_path}/core.db"\n'
        f'[[sources]]\nname = "a"\npath = "{tmp_path}/a.db"\n'
        f'[[sources]]\nname = "b"\npath = "{tmp_path}/b.db"\n{RULES}',
    )
    p = pipeline_for(cfg)
    p.sync()
    return cfg, p


def _verify(cfg: Path) -> dict:
    c = load_config(cfg)
    plan = resolve_plan(c)
    return {t.name: t for t in verify_tables(c, plan, select_tables(plan)).report.tables}


def _same(a: str, b: str) -> str:
    return POS.format(side=a, unique=", UNIQUE(symbol)" if b else "")


def test_merged_table_declares_its_members_types_defaults_and_indexes(tmp_path, pipeline_for):
    member = _same("'buy'", "u")
    _setup(tmp_path, pipeline_for, member, member)
    core = sqlite3.connect(tmp_path / "core.db")
    cols = {r[1]: (r[2], r[4]) for r in core.execute("PRAGMA table_info(pos)")}
    assert cols == {
        "src": ("", None),
        "id": ("INTEGER", None),
        "symbol": ("TEXT", None),
        "qty": ("INTEGER", "0"),
        "px": ("REAL", None),
        "side": ("TEXT", "'buy'"),
        "opened": ("NUMERIC", None),
    }
    idx = {
        r[1]: (r[2], [c[2] for c in core.execute(f"PRAGMA index_info('{r[1]}')")])
        for r in core.execute("PRAGMA index_list(pos)")
        if r[3] != "pk"
    }
    assert sorted(idx.values()) == [(0, ["src", "px"]), (1, ["src", "symbol"])], idx
    plan = " ".join(
        r[3]
        for r in core.execute("EXPLAIN QUERY PLAN SELECT * FROM pos WHERE src = 'a' AND px > 1")
    )
    assert "USING INDEX" in plan, plan


def test_a_switched_bots_writes_are_stored_as_the_legacy_table_stores_them(tmp_path, pipeline_for):
    member = _same("'buy'", "u")
    _setup(tmp_path, pipeline_for, member, member)
    legacy = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    core = sqlite3.connect(tmp_path / "core.db", isolation_level=None)
    for i, (qty, px, opened) in enumerate(
        [("5", "1.5", "2"), ("x5", 3, "1e3"), (7.0, "-0.0", "2.50"), (None, " 4 ", b"\x01")]
    ):
        legacy.execute(
            "INSERT INTO pos(id, symbol, qty, px, opened) VALUES (?, ?, ?, ?, ?)",
            (100 + i, f"S{i}", qty, px, opened),
        )
        core.execute(
            "INSERT INTO pos(src, id, symbol, qty, px, opened) VALUES ('a', ?, ?, ?, ?, ?)",
            (100 + i, f"S{i}", qty, px, opened),
        )
    read = "SELECT id, {c}, typeof({c}), hex({c}) FROM pos WHERE id >= 100 {w} ORDER BY id"
    for c in ("qty", "px", "side", "opened"):
        want = legacy.execute(read.format(c=c, w="")).fetchall()
        assert core.execute(read.format(c=c, w="AND src = 'a'")).fetchall() == want, c
    with pytest.raises(sqlite3.IntegrityError):  # the member's UNIQUE holds for its rows
        core.execute("INSERT INTO pos(src, id, symbol) VALUES ('a', 200, 'S0')")
    core.execute("INSERT INTO pos(src, id, symbol) VALUES ('b', 200, 'S0')")  # not across


def test_a_unique_only_one_member_declares_binds_only_that_members_rows(tmp_path, pipeline_for):
    rows = "INSERT INTO pos(id, symbol) VALUES (1, 'X');"
    cfg, p = _setup(
        tmp_path,
        pipeline_for,
        _same("'buy'", "u"),
        _same("'sell'", "") + "INSERT INTO pos(id, symbol) VALUES (1, 'X'), (2, 'X');",
    )
    sqlite3.connect(tmp_path / "a.db", isolation_level=None).execute(rows)
    for n in ("a", "b"):  # more rows under load, the same symbols in b
        c = sqlite3.connect(tmp_path / f"{n}.db", isolation_level=None)
        for i in range(3, 40):
            sym = f"S{i}" if n == "a" else f"S{i % 4}"
            c.execute("INSERT INTO pos(id, symbol, qty) VALUES (?, ?, ?)", (i, sym, str(i)))
        c.execute("UPDATE pos SET symbol = 'Y' WHERE id = 1")
        c.close()
    p.sync()
    got = _verify(cfg)
    assert {k: (r.state, r.reason) for k, r in got.items()} == {
        "a.pos": ("equal", None),
        "b.pos": ("equal", None),
    }
    core = sqlite3.connect(tmp_path / "core.db", isolation_level=None)
    cols = {r[1]: r[4] for r in core.execute("PRAGMA table_info(pos)")}
    assert cols["side"] is None  # the members disagree on the DEFAULT: none is right for both
    with pytest.raises(sqlite3.IntegrityError):
        core.execute("INSERT INTO pos(src, id, symbol) VALUES ('a', 500, 'S3')")
    core.execute("INSERT INTO pos(src, id, symbol) VALUES ('b', 500, 'S3')")


def test_the_verifier_names_an_untyped_merged_column(tmp_path, pipeline_for):
    """A merged table made before it carried types (or by hand) stores a bot's '5' as
    TEXT where the legacy table stores 5: not the legacy table's shape."""
    member = _same("'buy'", "")
    make_db(
        tmp_path / "core.db",
        "CREATE TABLE pos(src NOT NULL, id, symbol, qty, px, side, opened, PRIMARY KEY (src, id));",
    )
    cfg, _ = _setup(
        tmp_path, pipeline_for, member, member, "INSERT INTO pos(id, symbol) VALUES (1, 'X');"
    )
    got = _verify(cfg)
    r = got["a.pos"]
    assert r.state == "diverged", r
    assert 'column "qty": declared INTEGER in legacy, (no type) in target' in r.shape, r.shape


def test_a_member_whose_column_changes_affinity_is_refused_by_name(tmp_path, pipeline_for):
    member = _same("'buy'", "")
    cfg, p = _setup(tmp_path, pipeline_for, member, member)
    c = apsw.Connection(str(tmp_path / "b.db"))
    c.execute(
        "BEGIN; ALTER TABLE pos RENAME TO old; "
        "CREATE TABLE pos(id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, qty TEXT, px REAL, "
        "side TEXT, opened NUMERIC); INSERT INTO pos SELECT * FROM old; DROP TABLE old; COMMIT;"
        "INSERT INTO pos(id, symbol, qty) VALUES (9, 'Z', '5');"
    )
    c.close()
    with pytest.raises(TargetError, match=r"qty.*TEXT.*INTEGER"):
        p.sync()
