"""The chunked verifier on real files, driven step by step (no daemon): what it proves,
what it finds (exact keys, storage classes) and what it refuses to call a mismatch."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import apsw
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.config import VerifySettings, load_config
from cdc.planning.resolve import resolve_plan
from tests.conftest import cdc_cmd, make_db, write_config
from tests.support.pipeline import Pipeline
from verifier import compare_plan, select_tables, verify_tables

SCHEMA = """
CREATE TABLE trades(id INTEGER PRIMARY KEY AUTOINCREMENT, sym TEXT UNIQUE, qty REAL, px, raw BLOB);
CREATE TABLE kv("odd key" TEXT PRIMARY KEY, "v""al" ) ;
CREATE TABLE ticks(sym TEXT, ts INTEGER, px REAL, PRIMARY KEY(sym, ts)) WITHOUT ROWID;
CREATE TABLE lines(msg TEXT, lvl INTEGER);
CREATE TABLE names(n TEXT COLLATE NOCASE PRIMARY KEY, v);
"""


def _fill(db: Path, n: int = 2500) -> None:
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("BEGIN")
    for i in range(n):
        c.execute(
            "INSERT INTO trades(sym, qty, px, raw) VALUES (?,?,?,?)",
            (f"S{i}", i * 0.5, [1, 1.0, "1", -0.0, None, 1e-300][i % 6], bytes([i % 256, 0])),
        )
        c.execute("INSERT INTO kv VALUES (?, ?)", (f"k{i}", [i, float(i), str(i), None][i % 4]))
        c.execute("INSERT INTO ticks VALUES (?, ?, ?)", (f"T{i % 7}", i, i / 3))
        c.execute("INSERT INTO lines VALUES (?, ?)", (f"line {i}", i % 5))
        c.execute("INSERT INTO names VALUES (?, ?)", (["b", "A", "c", "D"][i % 4] + str(i), i))
    c.execute("COMMIT")
    c.close()


def _config(root: Path, sources: dict[str, Path], rest: str = "") -> Path:
    """A cdc.toml with one target, `core`, the given sources and `rest` (rules, settings);
    without rules, every table of every source is copied into core."""
    srcs = "".join(f'[[sources]]\nname = "{n}"\npath = "{p}"\n' for n, p in sources.items())
    rest = rest or '[[rules]]\ntable = "*"\ntarget = "core"\n'
    return write_config(
        root, f'state_dir = "state"\n[targets]\ncore = "{root}/core.db"\n{srcs}{rest}'
    )


@pytest.fixture
def setup(tmp_path: Path, pipeline_for):
    a = make_db(tmp_path / "a.db", SCHEMA)
    b = make_db(tmp_path / "b.db", SCHEMA, wal=True)
    _fill(a)
    _fill(b, 300)
    cfg_path = _config(
        tmp_path,
        {"a": a, "b": b},
        """
[[rules]]
table = "*"
source = "a"
target = "core"
[[rules]]
table = "*"
source = "b"
target = "core"
merge = true
as = "b_{table}"
[[rules]]
table = "lines"
source = "b"
exclude = true
[verify]
chunk_rows = 200
settle_timeout = 1.0
""",
    )
    p = pipeline_for(cfg_path)
    p.sync()
    return tmp_path, load_config(cfg_path), p


def _verify(cfg, patterns=None, **kw):
    plan = resolve_plan(cfg)
    settings = msgspec.structs.replace(cfg.verify, **kw) if kw else cfg.verify
    return verify_tables(cfg, plan, select_tables(plan, patterns), settings)


def _target(tmp_path: Path, sql: str, args=()) -> None:
    with contextlib.closing(apsw.Connection(str(tmp_path / "core.db"))) as c:
        c.execute(sql, args)


def test_equal_copies_verify_equal_with_matching_digests(setup) -> None:
    _, cfg, _ = setup
    rep = _verify(cfg).report
    assert rep.verdict == "equal", [(t.name, t.state, t.reason) for t in rep.tables]
    assert len(rep.tables) == 9
    for t in rep.tables:
        assert t.source_digest == t.target_digest and t.source_rows == t.target_rows
        assert t.compared_rows == t.source_rows
    trades = next(t for t in rep.tables if t.name == "a.trades")
    assert trades.source_rows == 2500 and trades.chunks == 13  # 200-row chunks


@pytest.mark.parametrize("chunk_rows", [1, 7, 5000])
def test_chunk_size_does_not_change_the_verdict(setup, chunk_rows: int) -> None:
    tmp_path, cfg, _ = setup
    _target(tmp_path, "UPDATE ticks SET px = px + 1 WHERE sym = ? AND ts = ?", ("T3", 10))
    rep = _verify(cfg, ["a.ticks", "a.names"], chunk_rows=chunk_rows).report
    ticks, names = rep.tables[1], rep.tables[0]
    assert (names.table, names.state) == ("names", "equal")
    assert ticks.state == "diverged" and [d.key for d in ticks.diverged] == [["'T3'", "10"]]


def test_each_kind_of_corruption_is_named_by_key(setup) -> None:
    tmp_path, cfg, _ = setup
    _target(tmp_path, "UPDATE trades SET qty = 99.5 WHERE id = 10")  # a value
    _target(
        tmp_path, "UPDATE trades SET px = CAST(px AS REAL) WHERE id = 7"
    )  # only the type: 1 -> 1.0
    _target(tmp_path, "UPDATE trades SET px = 0.0 WHERE id = 4")  # -0.0 -> 0.0
    _target(tmp_path, "DELETE FROM trades WHERE id = 2000")  # a missing row
    _target(tmp_path, "INSERT INTO trades(id, sym) VALUES (50000, 'ghost')")  # an extra row
    _target(
        tmp_path, 'UPDATE b_kv SET "v""al" = \'1\' WHERE "odd key" = \'k1\''
    )  # merged: 1.0 -> '1'
    res = _verify(cfg)
    rep = res.report
    assert rep.verdict == "diverged"
    trades = next(t for t in rep.tables if t.name == "a.trades")
    got = {(d.kind, d.key[0], tuple(d.columns)) for d in trades.diverged}
    assert got == {
        ("different", "10", ("qty",)),
        ("different", "7", ("px",)),
        ("different", "4", ("px",)),
        ("missing", "2000", ()),
        ("extra", "50000", ()),
    }
    d7 = next(d for d in trades.diverged if d.key == ["7"])
    assert d7.source[3] == "1" and d7.target[3] == "1.0"
    d4 = next(d for d in trades.diverged if d.key == ["4"])
    assert (d4.source[3], d4.target[3]) == ("-0.0", "0.0")
    kv = next(t for t in rep.tables if t.name == "b.kv")
    assert [(d.kind, d.key, d.source, d.target) for d in kv.diverged] == [
        ("different", ["'k1'"], ["'k1'", "1.0"], ["'k1'", "'1'"])
    ]
    assert res.keys[("a", "trades")] and sorted(res.keys[("a", "trades")]) == [
        [4],
        [7],
        [10],
        [2000],
        [50000],
    ]
    others = [t for t in rep.tables if t.name not in ("a.trades", "b.kv")]
    assert all(t.state == "equal" for t in others)


def test_rowid_tables_are_compared_by_rowid(setup) -> None:
    tmp_path, cfg, _ = setup
    _target(tmp_path, "UPDATE lines SET lvl = lvl WHERE rowid = 5")  # no change
    _target(tmp_path, "DELETE FROM lines WHERE rowid = 6")
    _target(tmp_path, "INSERT INTO lines(rowid, msg, lvl) VALUES (6000, 'line 5', 0)")
    t = _verify(cfg, ["a.lines"]).report.tables[0]
    assert {(d.kind, d.key[0]) for d in t.diverged} == {("missing", "6"), ("extra", "6000")}


def test_unapplied_changes_are_never_a_mismatch(setup) -> None:
    """Captured and logged, not applied: every such key is in flight, so not judged."""
    tmp_path, cfg, p = setup
    c = sqlite3.connect(Path(cfg.sources[0].path), isolation_level=None)
    c.execute("UPDATE trades SET qty = qty + 1 WHERE id <= 50")
    c.execute("DELETE FROM kv WHERE rowid % 10 = 0")
    c.execute("INSERT OR REPLACE INTO trades(sym, qty) VALUES ('S77', -1)")  # silent delete of 78
    c.close()
    p.harvest()  # logged (and, after trim, gone from the capture table)
    rep = _verify(cfg, ["a.*"]).report
    assert {t.state for t in rep.tables} <= {"equal", "unsettled"}
    assert not any(t.diverged for t in rep.tables)
    p.apply()
    rep = _verify(cfg, ["a.*"]).report
    assert rep.verdict == "equal", [(t.name, t.state, t.reason) for t in rep.tables]


def test_a_table_still_being_copied_is_skipped_not_failed(tmp_path: Path, pipeline_for) -> None:
    a = make_db(tmp_path / "a.db", SCHEMA)
    _fill(a, 100)
    cfg_path = _config(
        tmp_path,
        {"a": a},
        '[[rules]]\ntable = "*"\ntarget = "core"\n[daemon]\nsnapshot_chunk = 10\n',
    )
    p = pipeline_for(cfg_path)
    h = p.harvesters[0]
    h.snapshot_chunk()
    p.apply()
    cfg = load_config(cfg_path)
    rep = _verify(cfg).report
    states = {t.table: (t.state, t.reason) for t in rep.tables}
    assert states["kv"] == ("skipped", "initial copy still in progress")
    assert states["trades"][0] == "skipped"
    p.sync()
    assert _verify(cfg).report.verdict == "equal"


def test_settings_are_checked() -> None:
    from cdc.config import config_from_dict
    from cdc.errors import ConfigError

    with pytest.raises(ConfigError, match="verify.chunk_rows"):
        config_from_dict(
            {"targets": {"c": "c.db"}, "sources": [], "verify": {"chunk_rows": 0}}, "."
        )
    assert VerifySettings().rows_per_second > 0


def test_a_target_behind_a_trim_is_not_judged(setup) -> None:
    """Logged and trimmed from the capture table, not applied: the keys in flight are
    unknown, so nothing is judged (not even rows that look different) until it applies."""
    _, cfg, p = setup
    for h in p.harvesters:
        h.settings = msgspec.structs.replace(h.settings, trim_interval=0.0)
    c = sqlite3.connect(Path(cfg.sources[0].path), isolation_level=None)
    c.execute('UPDATE kv SET "v""al" = \'new\' WHERE "odd key" = \'k5\'')
    c.execute("INSERT INTO kv VALUES ('k-late', 1)")  # one more: the trim keeps the newest row
    c.close()
    p.harvest()
    p.harvest()  # trims everything logged but the newest capture row
    t = _verify(cfg, ["a.kv"]).report.tables[0]
    assert (t.state, t.diverged) == ("unsettled", [])
    assert "trimmed" in t.reason
    p.apply()
    assert _verify(cfg, ["a.kv"]).report.tables[0].state == "equal"


def test_a_column_added_by_a_bot_is_compared_once_applied(setup) -> None:
    tmp_path, cfg, p = setup
    c = sqlite3.connect(Path(cfg.sources[0].path), isolation_level=None)
    c.execute("ALTER TABLE trades ADD COLUMN venue TEXT DEFAULT 'x'")
    c.execute("UPDATE trades SET venue = 'binance' WHERE id % 100 = 0")
    c.close()
    t = _verify(cfg, ["a.trades"]).report.tables[0]
    assert t.state == "unsettled" and "columns changed" in t.reason  # not applied: not judged
    p.harvest()
    p.apply()
    t = _verify(cfg, ["a.trades"]).report.tables[0]
    assert t.state == "equal", t
    _target(tmp_path, "UPDATE trades SET venue = 'kraken' WHERE id = 200")
    t = _verify(cfg, ["a.trades"]).report.tables[0]
    assert [(d.key, d.columns) for d in t.diverged] == [(["200"], ["venue"])]


def test_cli_exit_codes_and_json(setup) -> None:
    tmp_path, cfg, _ = setup
    conf = cfg.config_path
    r = cdc_cmd("verify", "-c", conf)
    assert r.returncode == 0, r.stdout + r.stderr
    _target(tmp_path, "DELETE FROM ticks WHERE sym = 'T1' AND ts = 8")
    r = cdc_cmd("verify", "--json", "-c", conf, "core.ticks")
    assert r.returncode == 10, r.stderr
    rep = json.loads(r.stdout)
    assert [(t["source"], t["state"]) for t in rep["tables"]] == [("a", "diverged")]
    assert rep["tables"][0]["diverged"][0]["kind"] == "missing"
    assert rep["tables"][0]["diverged"][0]["key"] == ["'T1'", "8"]
    r = cdc_cmd("verify", "-c", conf, "nosuch.*")
    assert r.returncode == 2 and "no mapped table matches nosuch.*" in r.stderr
    r = cdc_cmd("repair", "-c", conf, "a.ticks")
    assert r.returncode == 7 and "no daemon is running" in r.stderr, r.stderr
    r = cdc_cmd("verify", "--report", str(tmp_path / "rep"), "-c", conf, "a.*")
    assert r.returncode == 10
    assert "diverged" in (tmp_path / "rep/validation-core.md").read_text()


_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=4),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.dictionaries(st.integers(0, 60), st.tuples(_values, _values), max_size=40),
    damage=st.lists(
        st.tuples(st.sampled_from(["set", "delete", "insert"]), st.integers(0, 80), _values),
        max_size=6,
    ),
    chunk=st.integers(1, 9),
)
def test_verifier_agrees_with_the_full_comparison(tmp_path_factory, rows, damage, chunk) -> None:
    """Whatever the data and the damage, the chunked verifier names exactly the keys the
    plain full comparison finds (an independent oracle)."""
    root = tmp_path_factory.mktemp("prop")
    db = make_db(root / "a.db", "CREATE TABLE t(k INTEGER PRIMARY KEY, a, b REAL);")
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as c:
        c.executemany("INSERT INTO t VALUES (?, ?, ?)", [(k, a, b) for k, (a, b) in rows.items()])
    conf = _config(root, {"a": db})
    cfg = load_config(conf)
    p = Pipeline(cfg, resolve_plan(cfg))
    try:
        p.sync()
    finally:
        p.close()
    with contextlib.closing(apsw.Connection(str(root / "core.db"))) as c:
        for what, k, v in damage:
            if what == "set":
                c.execute("UPDATE t SET a = ? WHERE k = ?", (v, k))
            elif what == "delete":
                c.execute("DELETE FROM t WHERE k = ?", (k,))
            else:
                c.execute("INSERT OR IGNORE INTO t VALUES (?, ?, NULL)", (k, v))
    plan = resolve_plan(cfg)
    oracle = compare_plan(plan)[0]
    expected = (
        {("missing", k[0][1]) for k in oracle.missing}
        | {("extra", k[0][1]) for k in oracle.extra}
        | {("different", k[0][1]) for k in oracle.different}
    )
    res = verify_tables(
        cfg, plan, select_tables(plan), msgspec.structs.replace(cfg.verify, chunk_rows=chunk)
    )
    t = res.report.tables[0]
    assert {(d.kind, int(d.key[0])) for d in t.diverged} == expected
    assert t.state == ("equal" if not expected else "diverged")
    assert t.source_rows == oracle.source_rows and t.target_rows == oracle.target_rows


def test_rows_with_a_null_key_are_verified_too(tmp_path: Path, pipeline_for) -> None:
    """SQLite lets a TEXT PRIMARY KEY hold NULL, repeatedly. Such rows sit outside every
    key range; the verifier compares them as a group per key and names a difference.
    (The replication carries them at their rowid: docs/architecture.md, section 1b.)"""
    db = make_db(tmp_path / "a.db", "CREATE TABLE kv(k TEXT PRIMARY KEY, v);")
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as c:
        c.executemany("INSERT INTO kv VALUES (?, ?)", [("a", 1), (None, 2), ("b", 3)])
    conf = _config(
        tmp_path,
        {"a": db},
        '[[rules]]\ntable = "*"\ntarget = "core"\n[verify]\nsettle_timeout = 1.0\n',
    )
    p = pipeline_for(conf)
    p.sync()
    cfg = load_config(conf)
    t = _verify(cfg).report.tables[0]
    assert (t.state, t.source_rows, t.target_rows, t.compared_rows) == ("equal", 3, 3, 3)
    _target(tmp_path, "DELETE FROM kv WHERE k IS NULL")
    t = _verify(cfg).report.tables[0]
    assert (t.source_rows, t.target_rows, t.compared_rows) == (3, 2, 2)
    assert [(d.kind, d.key, d.source, d.counts) for d in t.diverged] == [
        ("missing", ["NULL"], ["NULL", "2"], [1, 0])
    ]
    _target(tmp_path, "INSERT INTO kv VALUES (NULL, 2)")
    t = _verify(cfg).report.tables[0]
    assert (t.state, t.source_rows, t.target_rows, t.compared_rows) == ("equal", 3, 3, 3)
    _target(tmp_path, "UPDATE kv SET v = 20 WHERE k IS NULL")
    t = _verify(cfg).report.tables[0]
    assert [(d.kind, d.key, d.source, d.target, d.counts) for d in t.diverged] == [
        ("different", ["NULL"], ["NULL", "2"], ["NULL", "20"], [1, 1])
    ]
    _target(tmp_path, "INSERT INTO kv VALUES (NULL, 2)")
    t = _verify(cfg).report.tables[0]
    assert [(d.key, d.counts) for d in t.diverged] == [(["NULL"], [1, 2])]


def test_rows_under_a_tag_no_source_has_are_reported(setup) -> None:
    """A merged table's rows under an unknown tag (a source renamed in the config leaves
    its old rows behind): each source's own rows verify equal, the table does not."""
    tmp_path, cfg, _ = setup
    _target(tmp_path, "INSERT INTO b_kv VALUES ('old_b', 'k1', 1)")
    _target(tmp_path, "INSERT INTO b_kv VALUES ('old_b', 'k2', 2)")
    t = _verify(cfg, ["b.kv"]).report.tables[0]
    assert t.state == "diverged" and t.diverged_count == 2
    assert [(d.kind, d.key, d.columns, d.counts) for d in t.diverged] == [
        ("extra", ["'old_b'", "*"], ["source"], [0, 2])
    ]
    assert _verify(cfg, ["b.names"]).report.tables[0].state == "equal"
