"""The verifier across engines (issue 19): a legacy table against its PostgreSQL copy, in
chunks by key, each chunk proven at one position (the legacy file's newest capture
sequence equal to the one the target applied through, read in the target's own
transaction), values compared exactly after `from_pg` (storage class and bytes). Equal
when equal; every kind of difference made behind the replicator's back is named; a table
whose rows keep moving ahead of the target is unsettled, never equal."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import apsw
import msgspec
import psycopg
import pytest

from cdc.changelog.segments import LogReader
from replicator.pg_apply import PgTarget
from tests.support.pg_world import Capture, load, make_world
from verifier.pg_table import verify_pg_table


def _apply_all(cfg, plan, target: PgTarget) -> None:  # noqa: ANN001
    reader = LogReader(cfg.log_dir)
    while entries := reader.read(target.load().offset, None, max_frames=50):
        target.apply(plan, entries, target.load())


@pytest.fixture
def synced(tmp_path: Path, pg):
    cfg, plan = load(make_world(tmp_path, pg))
    cap = Capture(cfg, plan)
    a = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    for i in range(25):
        a.execute("INSERT INTO fills(sym, px, qty) VALUES (?, ?, ?)", (f"V{i}", i / 3, i))
    a.close()
    cap.sync()
    target = PgTarget("core", pg)
    _apply_all(cfg, plan, target)
    yield tmp_path, cfg, plan, cap, target
    target.close()
    cap.close()


def _verify(cfg, plan, table: str, source: str = "a", chunk: int = 4):  # noqa: ANN001, ANN202
    settings = msgspec.structs.replace(cfg.verify, chunk_rows=chunk, settle_timeout=0.5)
    return verify_pg_table(cfg, plan, plan.mapping(source, table), settings)


def test_equal_tables_are_equal_in_chunks(synced) -> None:
    _, cfg, plan, _, _ = synced
    for source, table in (("a", "fills"), ("a", "log"), ("a", "pos"), ("b", "pos")):
        r = _verify(cfg, plan, table, source)
        assert (r.state, r.reason) == ("equal", None), r
        assert r.compared_rows == r.source_rows == r.target_rows > 0
        assert r.source_digest == r.target_digest != ""
    assert _verify(cfg, plan, "fills").chunks >= 7  # 28 rows by 4


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("UPDATE fills SET px = '-0'::float8 * 0 WHERE sym = 'V1'", "different"),  # 0.333 -> -0.0
        ("DELETE FROM fills WHERE sym = 'V2'", "missing"),
        ("INSERT INTO fills(id, sym) VALUES (9999, 'ghost')", "extra"),
        ("UPDATE pos SET v = v + 1e-12 WHERE bot = 'a' AND k = 'a'", "different"),
    ],
)
def test_a_difference_behind_the_replicators_back_is_named(synced, pg, sql, kind) -> None:
    _, cfg, plan, _, _ = synced
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute(sql)
    table = "pos" if "pos" in sql else "fills"
    r = _verify(cfg, plan, table)
    assert r.state == "diverged" and r.diverged_count == 1, r
    assert r.diverged[0].kind == kind, r.diverged


def test_a_column_of_another_type_is_a_shape_difference(synced, pg) -> None:
    _, cfg, plan, _, _ = synced
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute("ALTER TABLE fills ALTER COLUMN qty TYPE numeric")
    r = _verify(cfg, plan, "fills")
    assert r.state == "diverged" and any("qty" in s and "numeric" in s for s in r.shape), r


def test_rows_ahead_of_the_target_are_unsettled_never_equal(synced) -> None:
    root, cfg, plan, cap, _ = synced
    a = sqlite3.connect(root / "a.db", isolation_level=None)
    a.execute("UPDATE fills SET px = 42 WHERE sym = 'V3'")  # captured, not applied
    a.close()
    r = _verify(cfg, plan, "fills")
    assert r.state == "unsettled", r
    cap.sync()
    _apply_all(cfg, plan, synced[4])
    assert _verify(cfg, plan, "fills").state == "equal"


def test_a_table_whose_initial_copy_is_not_applied_is_not_judged(tmp_path: Path, pg) -> None:
    """Mid-copy the target lacks rows the snapshot has not brought yet: "skipped" (the
    initial copy is in progress), not a false "diverged" and never "equal"; and the
    cutover's lag check sees the copy missing."""
    from cdc.cutover.lag import lag

    cfg, plan = load(make_world(tmp_path, pg))
    cap = Capture(cfg, plan)
    h = next(h for h in cap.harvesters if h.plan.name == "a")
    h.snapshot_chunk()  # a first chunk only (2 rows of fills)
    target = PgTarget("core", pg)
    try:
        _apply_all(cfg, plan, target)
        r = _verify(cfg, plan, "fills")
        assert r.state == "skipped" and "initial copy" in r.reason, r
        [a] = [s for s in lag(cfg, plan, ["core"]) if s.source == "a"]
        assert "fills -> core" in a.copying, a
        cap.sync()
        _apply_all(cfg, plan, target)
        assert _verify(cfg, plan, "fills").state == "equal"
        [a] = [s for s in lag(cfg, plan, ["core"]) if s.source == "a"]
        assert a.copying == [] and a.behind == 0, a
    finally:
        target.close()
        cap.close()


def test_a_column_only_the_target_has_is_a_shape_difference(synced, pg) -> None:
    """A copied table's target column the legacy table lacks (a column the legacy side
    renamed or dropped, which the PostgreSQL apply does not follow by rebuilding yet) is
    named, not passed over; a merged table's other members' columns are expected."""
    _, cfg, plan, _, _ = synced
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute("ALTER TABLE fills ADD COLUMN old_name text")
    r = _verify(cfg, plan, "fills")
    assert r.state == "diverged" and 'column "old_name": target only' in r.shape, r
    assert _verify(cfg, plan, "pos").state == "equal"  # b's `extra` column is expected


def test_verify_before_the_first_apply_skips_rather_than_crashing(tmp_path: Path, pg) -> None:
    """`cdc install`, then `cdc verify` before any daemon ran: the target has none of our
    tables yet; every table is "skipped" (exit 11, not proven), as for a SQLite target,
    never a traceback."""
    from tests.conftest import cdc_cmd

    cfg_path = make_world(tmp_path, pg)
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    r = cdc_cmd("verify", "-c", str(cfg_path))
    assert r.returncode == 11, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr


def test_cdc_repair_mends_a_postgresql_table_through_the_log(tmp_path: Path, pg, daemons) -> None:
    """Rows changed, deleted and added behind the replicator's back in PostgreSQL: `cdc
    verify` names them (exit 10), `cdc repair` re-sends each key's legacy image through
    the log (never a direct write) and proves the tables equal again."""
    from tests.conftest import cdc_cmd
    from tests.support.pg_world import differences

    cfg_path = make_world(tmp_path, pg)
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    d = daemons(cfg_path)
    d.wait_synced()
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute("UPDATE fills SET px = 0.33 WHERE sym = 'SOL'")
        c.execute("DELETE FROM pos WHERE bot = 'b' AND k = 'a'")
        c.execute("INSERT INTO log(rowid, msg, level) VALUES (99, 'stray', 9)")
    r = cdc_cmd("verify", "-c", str(cfg_path))
    assert r.returncode == 10, (r.stdout, r.stderr)
    r = cdc_cmd("repair", "-c", str(cfg_path))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "repairing 3 rows in 3 tables" in r.stderr, r.stderr
    assert d.stop() == 0, d.output()
    assert differences(*load(cfg_path), pg) == []


def _quiet(cfg, plan, table: str, source: str = "a"):  # noqa: ANN001, ANN202
    from verifier.pg_digest import quiet_proof

    m = plan.mapping(source, table)
    src = apsw.Connection(str(plan.source(source).path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        with psycopg.connect(plan.targets["core"]) as tgt:
            return quiet_proof(src, tgt, m)
    finally:
        src.close()


def test_the_quiet_proof_says_equal_for_every_value_class(synced, pg) -> None:
    """Under a fence each side digests its own rows (verifier.pg_digest): int64's ends,
    subnormal and huge REALs, empty and binary BLOBs, exact decimals in numeric, NULLs,
    text keys of a merged table, a keyless table's rowid: equal, with the row counts the
    full verifier finds; -0.0 in PostgreSQL is SQLite's 0.0 (what a REAL column keeps)."""
    _, cfg, plan, _, _ = synced
    for source, table in (("a", "fills"), ("a", "log"), ("a", "pos"), ("b", "pos")):
        r = _quiet(cfg, plan, table, source)
        assert r is not None and r.state == "equal", (source, table)
        assert r.source_rows == _verify(cfg, plan, table, source).source_rows
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute("UPDATE fills SET px = '-0'::float8 WHERE sym = 'SOL'")  # legacy: 0.0
    assert _quiet(cfg, plan, "fills").state == "equal"


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE fills SET px = px * (1 + 2.2e-16) WHERE sym = 'BTC'",  # one ulp
        "UPDATE fills SET qty = qty - 1 WHERE sym = 'SOL'",
        "UPDATE fills SET raw = '\\x00fe' WHERE sym = 'BTC'",
        "UPDATE fills SET n = 0.1000001 WHERE sym = 'SOL'",
        "UPDATE fills SET sym = 'sol' WHERE sym = 'SOL'",
        "UPDATE fills SET raw = NULL WHERE sym = 'SOL'",
        "DELETE FROM fills WHERE sym = 'V2'",
        "INSERT INTO fills(id, sym) VALUES (9999, 'ghost')",
        "UPDATE log SET msg = msg || ' ' WHERE level = 2",
        "UPDATE pos SET v = v + 1e-12 WHERE bot = 'a' AND k = 'a'",
        "ALTER TABLE fills ADD COLUMN shadow text",
    ],
)
def test_the_quiet_proof_never_says_equal_for_a_difference(synced, pg, sql) -> None:
    _, cfg, plan, _, _ = synced
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute(sql)
    table = next(t for t in ("pos", "log", "fills") if re.search(rf"\b{t}\b", sql))
    assert _quiet(cfg, plan, table) is None  # not proven: the caller verifies in full


def test_the_quiet_proof_sees_a_legacy_change_the_target_lacks(synced) -> None:
    root, cfg, plan, _, _ = synced
    a = sqlite3.connect(root / "a.db", isolation_level=None)
    a.execute("UPDATE fills SET n = 12.5 WHERE sym = 'BTC'")
    a.close()
    assert _quiet(cfg, plan, "fills") is None


def test_a_generated_column_postgresql_lacks_is_never_equal(synced, pg) -> None:
    """P1 (docs/fuzzing.md): a generated column is not carried into PostgreSQL (its DDL
    refuses a table that has one); one a bot adds later must make the table differ by its
    shape, in the verifier and in the proof under a fence, never "equal"."""
    root, cfg, plan, cap, target = synced
    a = sqlite3.connect(root / "a.db", isolation_level=None)
    a.execute("ALTER TABLE fills ADD COLUMN twice AS (qty * 2) VIRTUAL")
    a.close()
    cap.sync()
    _apply_all(cfg, plan, target)
    r = _verify(cfg, plan, "fills")
    assert r.state == "diverged" and any("twice" in s for s in r.shape), r
    assert _quiet(cfg, plan, "fills") is None


def test_the_ddl_refuses_a_generated_column(tmp_path: Path) -> None:
    from cdc.config import load_config
    from cdc.planning import pg_ddl
    from cdc.planning.resolve import resolve_plan
    from tests.conftest import make_db, write_config

    make_db(tmp_path / "g.db", "CREATE TABLE t(k INTEGER PRIMARY KEY, a TEXT, g AS (length(a)));")
    cfg = write_config(
        tmp_path,
        f'state_dir = "state"\n[targets]\ncore = "postgresql://cdc@db1/core"\n'
        f'[[sources]]\nname = "g"\npath = "{tmp_path}/g.db"\n[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    plan = resolve_plan(load_config(cfg, postgres=True), strict=False)
    assert any("generated column g" in r for r in pg_ddl.refusals(plan, "core")), pg_ddl.refusals(
        plan, "core"
    )


def test_a_keyless_table_with_a_column_named_rowid(tmp_path: Path, pg) -> None:
    """P3 (docs/fuzzing.md): the user's `rowid` column is not the rowid; the verifier
    reads the rowid by a name the columns leave free (`_rowid_`), as the DDL names the
    PostgreSQL key: equal in chunks of one row, and the proof under a fence agrees."""
    cfg_path = make_world(tmp_path, pg)
    a = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    a.execute("CREATE TABLE odd(rowid BLOB, n INTEGER)")
    a.executemany("INSERT INTO odd VALUES (?, ?)", [(b"\x07", 1), (b"\x01", 2), (None, 3)])
    a.close()
    cfg, plan = load(cfg_path)
    cap = Capture(cfg, plan)
    target = PgTarget("core", pg)
    try:
        cap.sync()
        _apply_all(cfg, plan, target)
        settings = msgspec.structs.replace(cfg.verify, chunk_rows=1, settle_timeout=0.5)
        r = verify_pg_table(cfg, plan, plan.mapping("a", "odd"), settings)
        assert (r.state, r.source_rows) == ("equal", 3), r
        assert _quiet(cfg, plan, "odd") is not None
    finally:
        target.close()
        cap.close()
