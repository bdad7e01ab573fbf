"""A column one member of a merged table adds with a DEFAULT (fuzzer findings F1, F2).

A merged target table is the union of its members' columns, so a column exists there for
members that do not have it. What each row holds must be what its own legacy row reads:
- a member without the column reads nothing there: NULL in the target, not another
  member's DEFAULT;
- a member that added it with a DEFAULT reads that DEFAULT in its older rows, converted
  by its own column's affinity (`INTEGER DEFAULT '5'` reads integer 5), whichever member
  added the column to the target first;
- a member that later drops or renames the column is copied again without it: NULL.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from cdc.config import load_config
from cdc.planning.resolve import resolve_plan
from tests.conftest import make_db, write_config
from verifier import select_tables, verify_tables

MEMBER = "CREATE TABLE t(k INTEGER PRIMARY KEY, v);"
RULES = """
[[rules]]
table = "t"
target = "core"
merge = true
tag_column = "src"
"""


def _pipeline(tmp_path: Path, pipeline_for, schema: str):  # noqa: ANN202
    """Members `a` and `b` of one merged table `t`, copied once."""
    for n in ("a", "b"):
        make_db(tmp_path / f"{n}.db", schema)
    cfg = write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "{tmp_path}/core.db"\n'
        f'[[sources]]\nname = "a"\npath = "{tmp_path}/a.db"\n'
        f'[[sources]]\nname = "b"\npath = "{tmp_path}/b.db"\n{RULES}',
    )
    p = pipeline_for(cfg)
    p.sync()
    return cfg, p


@pytest.fixture
def merged(tmp_path: Path, pipeline_for):
    cfg, p = _pipeline(
        tmp_path, pipeline_for, MEMBER + "INSERT INTO t VALUES (1, 'one'), (2, 'two');"
    )
    return tmp_path, cfg, p


def _alter(tmp_path: Path, p, name: str, sql: str) -> None:  # noqa: ANN001
    _bot(tmp_path, name, sql)
    p.sync()


def _bot(tmp_path: Path, name: str, sql: str) -> None:
    c = sqlite3.connect(tmp_path / f"{name}.db", isolation_level=None)
    c.executescript(sql)
    c.close()


def _target(tmp_path: Path, column: str) -> dict[tuple[str, int], tuple]:
    with contextlib.closing(sqlite3.connect(tmp_path / "core.db")) as c:
        rows = c.execute(f'SELECT src, k, "{column}", typeof("{column}") FROM t').fetchall()
    return {(s, k): (v, ty) for s, k, v, ty in rows}


def _equal(cfg: Path) -> None:
    plan = resolve_plan(load_config(cfg))
    rep = verify_tables(load_config(cfg), plan, select_tables(plan)).report
    assert rep.verdict == "equal", [(t.name, t.state, t.reason) for t in rep.tables]


def test_a_member_without_the_column_holds_null_there(merged) -> None:
    tmp_path, cfg, p = merged
    _alter(tmp_path, p, "a", "ALTER TABLE t ADD COLUMN c DEFAULT 7;")
    _alter(tmp_path, p, "b", "INSERT INTO t VALUES (3, 'three');")
    got = _target(tmp_path, "c")
    assert {k: v for k, v in got.items() if k[0] == "b"} == {
        ("b", 1): (None, "null"),
        ("b", 2): (None, "null"),
        ("b", 3): (None, "null"),
    }
    assert got[("a", 1)] == (7, "integer") and got[("a", 2)] == (7, "integer")
    _equal(cfg)


def test_older_rows_read_the_default_by_the_members_own_affinity(merged) -> None:
    tmp_path, cfg, p = merged
    _alter(tmp_path, p, "a", "ALTER TABLE t ADD COLUMN n INTEGER DEFAULT '5';")
    got = _target(tmp_path, "n")
    assert got[("a", 1)] == (5, "integer") and got[("a", 2)] == (5, "integer")
    assert got[("b", 1)] == (None, "null")
    _equal(cfg)


def test_a_default_counts_for_the_member_that_declared_it(merged) -> None:
    """Another member added the column first, without a DEFAULT."""
    tmp_path, cfg, p = merged
    _alter(tmp_path, p, "b", "ALTER TABLE t ADD COLUMN c;")
    _alter(tmp_path, p, "a", "ALTER TABLE t ADD COLUMN c DEFAULT 7;")
    got = _target(tmp_path, "c")
    assert got[("a", 1)] == (7, "integer") and got[("b", 1)] == (None, "null")
    _equal(cfg)


def test_a_column_dropped_by_its_member_leaves_null(merged) -> None:
    tmp_path, cfg, p = merged
    _alter(tmp_path, p, "a", "ALTER TABLE t ADD COLUMN c DEFAULT 7;")
    _bot(tmp_path, "a", "ALTER TABLE t DROP COLUMN c;")
    h = next(h for h in p.harvesters if h.plan.name == "a")
    h._restart_snapshots(["t"], {c.table: c for c in h.position.snapshots})  # the re-copy
    p.sync()
    got = _target(tmp_path, "c")
    assert got[("a", 1)] == (None, "null") and got[("b", 1)] == (None, "null")
    _equal(cfg)


def test_a_strict_member_keeps_its_default_as_written(tmp_path: Path, pipeline_for) -> None:
    """In a STRICT table `ANY` converts nothing: DEFAULT 0.0 stays a REAL."""
    schema = "CREATE TABLE t(k INTEGER PRIMARY KEY, v ANY) STRICT; INSERT INTO t(k) VALUES (0);"
    cfg, p = _pipeline(tmp_path, pipeline_for, schema)
    _alter(tmp_path, p, "a", 'ALTER TABLE t ADD COLUMN "added col" ANY DEFAULT 0.0;')
    assert _target(tmp_path, "added col")[("a", 0)] == (0.0, "real")
    _equal(cfg)
