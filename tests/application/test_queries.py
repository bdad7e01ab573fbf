"""`cdc queries`: legacy queries rewritten to consolidated names and run on both sides.

Real legacy files, a real consolidated target filled by the replicator (in process), and
real changes made behind its back to prove that every kind of wrong answer is caught:
a value, a storage class only (5 / '5', 0.0 / -0.0), an order. A plan regression is made
explicitly (the consolidated index dropped) and mended by `--apply-indexes`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import cdc.cli.queries  # noqa: F401 - registers `cdc queries` on the group
from cdc.application.names import legacy_names
from cdc.application.queries import QuerySpec, first_difference, run_queries
from cdc.application.rewrite import NotRewritable, rewrite
from cdc.cli.base import cli
from cdc.config import load_config
from tests.conftest import make_db, write_config

TRADING = """
CREATE TABLE positions(id INTEGER PRIMARY KEY, symbol TEXT, qty, status TEXT);
CREATE INDEX positions_status ON positions(status);
INSERT INTO positions VALUES (1, 'SOL', 5, 'open'), (2, 'BTC', 0.0, 'open'),
  (3, 'ETH', 2.5, 'closed'), (4, 'ADA', 7, 'open');
"""

BOT = """
CREATE TABLE fills(id INTEGER PRIMARY KEY, symbol TEXT, price, side TEXT);
CREATE INDEX fills_symbol ON fills(symbol);
"""

CONFIG = """state_dir = "{root}/state"
[pool]
record_queries = true
metrics_interval = 0.0
[targets]
core = "{root}/core.db"

[[sources]]
name = "trading"
path = "{root}/legacy/trading.db"
[[sources]]
name = "bot_a"
path = "{root}/legacy/bot_a.db"
[[sources]]
name = "bot_b"
path = "{root}/legacy/bot_b.db"

[[rules]]
source = "trading"
table = "positions"
target = "core"
as = "trading_positions"

[[rules]]
source = "bot_a"
table = "fills"
target = "core"
merge = true
tag_column = "bot"
tag = "a"

[[rules]]
source = "bot_b"
table = "fills"
target = "core"
merge = true
tag_column = "bot"
tag = "b"
"""

QUERIES = """
[[query]]
name = "open positions"
source = "trading"
sql = "SELECT id, symbol, qty FROM positions WHERE status = ? ORDER BY id"
params = ["open"]

[[query]]
name = "fills of a symbol"
source = "bot_a"
sql = "SELECT * FROM fills WHERE symbol = :symbol"
params = {symbol = "SOL"}

[[query]]
name = "fills counted"
source = "bot_b"
sql = "SELECT f.symbol, count(*) FROM fills AS f GROUP BY f.symbol ORDER BY 1"
"""


@pytest.fixture
def env(tmp_path: Path, pipeline_for):
    """(root, cdc.toml, queries.toml), the target caught up with the legacy files."""
    legacy = tmp_path / "legacy"
    make_db(legacy / "trading.db", TRADING)
    # Both members hold SOL fills with the same keys: without the tag filter a read of
    # bot_a's fills would return bot_b's rows too.
    make_db(legacy / "bot_a.db", BOT + _fills([(1, "SOL", 10.0, "buy"), (2, "BTC", 5, "sell")]))
    make_db(
        legacy / "bot_b.db",
        BOT + _fills([(1, "SOL", 99.5, "sell"), (2, "SOL", 98.0, "buy"), (3, "ETH", 7, "buy")]),
    )
    cfg = write_config(tmp_path, CONFIG.format(root=tmp_path))
    pipeline_for(cfg).sync()
    qfile = tmp_path / "queries.toml"
    qfile.write_text(QUERIES)
    return tmp_path, cfg, qfile


def _fills(rows) -> str:  # noqa: ANN001
    values = ", ".join(f"({i}, '{s}', {p!r}, '{side}')" for i, s, p, side in rows)
    return f"INSERT INTO fills VALUES {values};"


def _target(root: Path, sql: str) -> None:
    """A change behind the replicator's back: what a wrong answer looks like."""
    c = sqlite3.connect(root / "core.db", isolation_level=None)
    try:
        c.execute(sql)
    finally:
        c.close()


def _run(cfg: Path, qfile: Path, *args: str):  # noqa: ANN202
    return CliRunner().invoke(cli, ["queries", str(qfile), "-c", str(cfg), "--runs", "3", *args])


def _report(cfg: Path, *specs: QuerySpec, runs: int = 3):  # noqa: ANN202
    c = load_config(cfg)
    return run_queries(c, legacy_names(c), list(specs), runs=runs)


def test_rewrite_renames_and_filters_merged_tables(env):
    root, cfg, _ = env
    names = legacy_names(load_config(cfg))
    cols = lambda s, t: ["id", "symbol", "price", "side"]  # noqa: E731
    r = rewrite(names, "trading", "SELECT positions.qty FROM positions WHERE id = ?", cols)
    assert r.sql == 'SELECT positions.qty FROM "trading_positions" AS "positions" WHERE id = ?'
    r = rewrite(names, "bot_a", "SELECT * FROM fills f WHERE symbol = ?", cols)
    assert r.sql == (
        'SELECT "f"."id", "f"."symbol", "f"."price", "f"."side" FROM "fills" AS f '
        'WHERE symbol = ? AND "f"."bot" = \'a\''
    )
    r = rewrite(
        names, "bot_b", "SELECT p.x FROM fills p LEFT JOIN fills q ON q.id = p.id + 1", cols
    )
    assert 'ON q.id = p.id + 1 AND "q"."bot" = \'b\'' in r.sql
    assert 'WHERE "p"."bot" = \'b\'' in r.sql
    for bad, why in [
        ("DELETE FROM fills", "not a SELECT"),
        ("SELECT * FROM nope", "not in the plan"),
        ("SELECT FROM WHERE (", "cannot parse"),
        ("SELECT * FROM fills RIGHT JOIN fills g ON 1", "RIGHT"),
    ]:
        with pytest.raises(NotRewritable, match=why):
            rewrite(names, "bot_a", bad, cols)


def test_same_answers_on_renamed_and_merged_tables(env):
    root, cfg, qfile = env
    r = _run(cfg, qfile, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    by = {q["name"]: q for q in rep["queries"]}
    assert all(q["same_answer"] and q["status"] == "ok" for q in rep["queries"]), r.output
    assert by["open positions"]["ordered"] and by["open positions"]["rows_legacy"] == 3
    assert by["fills of a symbol"]["rows_consolidated"] == 1  # bot_b's two SOL fills kept out
    assert "\"bot\" = 'a'" in by["fills of a symbol"]["consolidated_sql"]
    assert by["fills counted"]["rows_legacy"] == 2  # ETH 1, SOL 2: b's rows only
    for q in rep["queries"]:
        assert q["legacy"]["runs"] == 3 and q["consolidated"]["p95_ms"] >= 0
        assert q["legacy_plan"] and q["consolidated_plan"]
    # The tag filter proven: the same read without it answers differently.
    c = sqlite3.connect(root / "core.db")
    assert c.execute("SELECT count(*) FROM fills WHERE symbol = 'SOL'").fetchone()[0] == 3


@pytest.mark.parametrize(
    "change, words",
    [
        ("UPDATE trading_positions SET symbol = 'XRP' WHERE id = 4", "'ADA' (text)"),
        ("UPDATE trading_positions SET qty = '5' WHERE id = 1", "'5' (text)"),
        ("UPDATE trading_positions SET qty = -0.0 WHERE id = 2", "bits 0000000000000080"),
        ("DELETE FROM trading_positions WHERE id = 4", "3 rows, consolidated 2"),
    ],
)
def test_a_wrong_answer_is_caught(env, change, words):
    root, cfg, qfile = env
    _target(root, change)
    r = _run(cfg, qfile, "--json")
    assert r.exit_code == 15, r.output
    q = next(q for q in json.loads(r.output)["queries"] if q["name"] == "open positions")
    assert q["status"] == "wrong answer" and not q["same_answer"]
    assert words in q["difference"], q["difference"]


def test_order_is_compared_where_the_query_orders(env):
    root, cfg, _ = env
    sql = "SELECT symbol FROM positions ORDER BY qty"
    _target(root, "UPDATE trading_positions SET qty = 1e9 WHERE id = 1")  # SOL sorts last
    _target(root, "UPDATE trading_positions SET symbol = symbol")  # values stay
    ordered = _report(cfg, QuerySpec("o", "trading", sql)).queries[0]
    assert not ordered.same_answer and "row" in ordered.difference
    unordered = _report(cfg, QuerySpec("u", "trading", "SELECT symbol FROM positions"))
    assert unordered.queries[0].same_answer  # same rows, another order: the same answer
    assert first_difference([(1,), (2,)], [(2,), (1,)], ordered=False) is None
    assert first_difference([(1,), (2,)], [(2,), (1,)], ordered=True) is not None


def test_not_rewritable_is_reported_not_skipped(env):
    root, cfg, _ = env
    rep = _report(cfg, QuerySpec("w", "trading", "UPDATE positions SET qty = 0"))
    assert rep.queries[0].status == "not rewritable" and "not a SELECT" in rep.queries[0].error
    assert rep.not_rewritable == 1
    qfile = root / "writes.toml"
    qfile.write_text('[[query]]\nname = "w"\nsource = "trading"\nsql = "DELETE FROM positions"\n')
    r = _run(cfg, qfile)
    assert r.exit_code == 11, r.output  # never compared: not an "ok"
    assert "not proven" in r.output


def test_a_plan_regression_is_flagged_and_the_index_restores_it(env):
    root, cfg, qfile = env
    for name in _indexes(root, "fills"):  # whatever the DDL made: make the regression
        _target(root, f'DROP INDEX "{name}"')
    md = root / "report.md"
    r = _run(cfg, qfile, "--json", "--markdown", str(md))
    assert r.exit_code == 0, r.output  # a regression is flagged, not a failure
    q = next(q for q in json.loads(r.output)["queries"] if q["name"] == "fills of a symbol")
    assert [g["kind"] for g in q["regressions"]] == ["scan"], q["consolidated_plan"]
    assert "SEARCH fills USING INDEX fills_symbol" in "\n".join(q["legacy_plan"])
    [s] = q["suggested_indexes"]
    assert s["name"] == "fills__fills_symbol" and s["columns"] == ['"bot"', '"symbol"']
    assert "regression (scan)" in md.read_text() and s["sql"] in md.read_text()

    r = _run(cfg, qfile, "--json", "--apply-indexes")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert [a["created"] for a in rep["applied_indexes"]] == [True]
    q = next(q for q in rep["queries"] if q["name"] == "fills of a symbol")
    assert not q["regressions"] and not q["suggested_indexes"]
    assert "USING INDEX fills__fills_symbol" in "\n".join(q["consolidated_plan"])


def _indexes(root: Path, table: str) -> list[str]:
    c = sqlite3.connect(root / "core.db")
    try:
        return [
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_schema WHERE type='index' AND tbl_name=? AND sql IS NOT NULL",
                (table,),
            )
        ]
    finally:
        c.close()


def test_the_budget_and_the_outputs(env):
    root, cfg, qfile = env
    r = _run(cfg, qfile, "--budget-ms", "0.000001")
    assert r.exit_code == 16, r.output
    assert "over budget" in r.output
    md = root / "r.md"
    r = _run(cfg, qfile, "--markdown", str(md))
    assert r.exit_code == 0 and "ok: 3 queries" in r.output
    text = md.read_text()
    assert text.startswith("# Queries") and "| open positions | ok |" in text


def test_bad_input_is_one_clear_line(env, tmp_path):
    root, cfg, _ = env
    r = CliRunner().invoke(cli, ["queries", "-c", str(cfg)])
    assert r.exit_code == 2 and "no queries" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[[query]\n")
    r = CliRunner().invoke(cli, ["queries", str(bad), "-c", str(cfg)])
    assert r.exit_code == 2 and "not valid TOML" in r.output
    bad.write_text('[[query]]\nname = "x"\nsource = "nope"\nsql = "SELECT 1"\n')
    r = CliRunner().invoke(cli, ["queries", str(bad), "-c", str(cfg)])
    assert r.exit_code == 2 and "unknown source 'nope'" in r.output


def test_legacy_files_are_never_written(env):
    root, cfg, qfile = env
    legacy = root / "legacy" / "trading.db"
    before = (legacy.stat().st_mtime_ns, legacy.read_bytes())
    assert _run(cfg, qfile).exit_code == 0
    assert (legacy.stat().st_mtime_ns, legacy.read_bytes()) == before


def test_recorded_queries_are_run_and_writes_only_listed(env):
    root, cfg, _ = env
    from cdc import pool

    pool.configure(cfg)
    try:
        with pool.connection("trading") as c:
            for status in ("open", "closed", "open"):
                c.execute("SELECT id, qty FROM positions WHERE status = ? ORDER BY id", (status,))
            c.execute("UPDATE positions SET qty = qty WHERE id = ?", (0,))
        with pool.connection("core") as c:  # a target's statements are not legacy queries
            c.execute("SELECT count(*) FROM trading_positions").fetchall()
    finally:
        pool.close_all()
        pool._state = None
    r = CliRunner().invoke(cli, ["queries", "--recorded", "-c", str(cfg), "--runs", "2", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    [q] = rep["queries"]
    assert q["source"] == "trading" and q["same_answer"] and q["rows_legacy"] == 3
    assert "(3x)" in q["name"]  # counted; run with the first parameters seen ('open')
    [w] = rep["recorded_not_run"]
    assert w["sql"].startswith("UPDATE positions") and w["count"] == 1


def test_a_merged_table_made_by_the_replicator_keeps_its_members_plans(env):
    """Issue 18, part 3, through `cdc queries`: the merged table carries its members'
    index (tag leading), so the member's indexed read searches there as it did in its
    legacy file: same answer, no regression, nothing to suggest."""
    root, cfg, qfile = env
    r = _run(cfg, qfile, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    for q in rep["queries"]:
        assert q["same_answer"] and not q["regressions"] and not q["suggested_indexes"], q
    q = next(q for q in rep["queries"] if q["name"] == "fills of a symbol")
    assert "USING INDEX fills__fills_symbol" in "\n".join(q["consolidated_plan"]), q


def test_a_query_failing_only_after_the_move_is_wrong_and_one_failing_anyway_is_unproven(env):
    """An overflow on both files is the query's own fault: nothing compared (exit 11). A
    failure on the consolidated file only is what the move broke (exit 15)."""
    root, cfg, _ = env
    both = root / "both.toml"
    both.write_text(
        '[[query]]\nname = "overflow"\nsource = "trading"\n'
        'sql = "SELECT sum(9223372036854775807) FROM positions"\n'
    )
    r = _run(cfg, both, "--json")
    assert r.exit_code == 11, r.output
    [q] = json.loads(r.output)["queries"]
    assert q["status"] == "fails on legacy" and q["error"].startswith("legacy: "), q
    _target(root, "ALTER TABLE trading_positions RENAME COLUMN qty TO quantity")
    only = root / "only.toml"
    only.write_text(
        '[[query]]\nname = "qty"\nsource = "trading"\nsql = "SELECT qty FROM positions"\n'
    )
    r = _run(cfg, only, "--json")
    assert r.exit_code == 15, r.output
    [q] = json.loads(r.output)["queries"]
    assert q["status"] == "error" and q["error"].startswith("consolidated: "), q
