"""The change log applied into a real PostgreSQL server, exactly once (issue 19): every
value class carried bit for bit, updates, deletes, a REPLACE through a UNIQUE, a keyless
table, a merged table, a table reset; the applier killed with SIGKILL at any instant and
the server restarted under it converge to exactly the legacy rows, each event applied
once (the checkpoint's count against the log's)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from cdc.changelog.segments import LogReader
from cdc.errors import TargetBusyError, TargetError
from replicator.pg_apply import PgTarget
from tests.support.logcount import count_log
from tests.support.pg_world import Capture, differences, load, log_end, make_world

REPO = Path(__file__).resolve().parents[2]


def _bots(root: Path, rounds: int = 1, first: int = 0) -> None:
    a = sqlite3.connect(root / "a.db", isolation_level=None)
    b = sqlite3.connect(root / "b.db", isolation_level=None)
    for i in range(first, first + rounds):
        a.execute(
            "INSERT INTO fills(sym, px, qty, raw, n) VALUES (?, ?, ?, ?, ?)",
            (f"S{i}", i / 7, i, bytes([i % 256]) * i, i + 0.5),
        )
        a.execute("UPDATE fills SET px = px * 2 WHERE sym = 'BTC'")
        a.execute("INSERT OR REPLACE INTO fills(sym, px) VALUES ('ETH', ?)", (-i - 0.25,))
        a.execute("INSERT INTO log VALUES (?, ?)", (f"tick {i}", i))
        a.execute("DELETE FROM log WHERE level = 1")
        b.execute("INSERT OR REPLACE INTO pos VALUES (?, ?, ?)", (f"k{i}", i * 1.5, "é"))
        b.execute("DELETE FROM pos WHERE k = 'c'")
    a.close()
    b.close()


def _apply_all(cfg, plan, target: PgTarget, frames: int = 3) -> None:  # noqa: ANN001
    reader = LogReader(cfg.log_dir)
    while True:
        cp = target.load()
        entries = reader.read(cp.offset, None, max_frames=frames)
        if not entries:
            return
        target.apply(plan, entries, cp)


@pytest.fixture
def world(tmp_path: Path, pg):
    cfg, plan = load(make_world(tmp_path, pg))
    cap = Capture(cfg, plan)
    yield tmp_path, cfg, plan, cap
    cap.close()


def test_the_log_lands_exactly_in_postgresql(world, pg) -> None:
    root, cfg, plan, cap = world
    cap.sync()
    target = PgTarget("core", pg)
    try:
        _apply_all(cfg, plan, target)
        assert differences(cfg, plan, pg) == []
        _bots(root, 20)
        c = sqlite3.connect(root / "a.db", isolation_level=None)  # a table dropped and made again
        c.executescript(
            "DROP TABLE log; CREATE TABLE log(msg TEXT, level INTEGER);"
            "INSERT INTO log VALUES ('fresh', 7);"
        )
        c.close()
        cap.sync()
        _apply_all(cfg, plan, target)
        assert differences(cfg, plan, pg) == []
        cp = target.load()
        assert cp.offset == log_end(cfg)
        assert cp.events == count_log(cfg, plan).events  # each event applied once
    finally:
        target.close()


def test_a_value_postgresql_cannot_carry_stops_the_apply_by_name(world, pg) -> None:
    root, cfg, plan, cap = world
    cap.sync()
    target = PgTarget("core", pg)
    try:
        _apply_all(cfg, plan, target)
        before = target.load()
        c = sqlite3.connect(root / "a.db", isolation_level=None)
        c.execute("INSERT INTO fills(sym, qty) VALUES ('BAD', 'not a number')")
        c.close()
        cap.sync()
        with pytest.raises(TargetError, match=r"a\.fills\.qty .*TEXT in a bigint column"):
            _apply_all(cfg, plan, target)
        assert target.load() == before  # nothing of that batch written
    finally:
        target.close()


def test_kill_9_and_a_server_restart_converge_exactly_once(world, pg, pg_cluster) -> None:
    root, cfg, plan, cap = world
    cap.sync()
    for i in range(80):  # many harvests: many frames, so the kills land mid-log
        _bots(root, 1, first=i)
        cap.sync()
    rng = random.Random(7)
    kills = 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.support.pg_apply_run", str(root / "cdc.toml"), "2"]
    while kills < 6:
        p = subprocess.Popen(cmd, env=env)
        time.sleep(0.3 + rng.random() * 0.5)
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
    _bots(root, 3, first=100)  # more to apply, whatever the killed runs reached
    cap.sync()
    target = PgTarget("core", pg)
    try:
        reader = LogReader(cfg.log_dir)
        cp = target.load()
        entries = reader.read(cp.offset, None, max_frames=2)
        assert entries
        pg_cluster.stop("fast")  # the server goes away between two batches
        try:
            with pytest.raises(TargetBusyError, match="connection lost|cannot connect"):
                target.apply(plan, entries, cp)
        finally:
            pg_cluster.start()
        _apply_all(cfg, plan, target)  # reconnects, reads its checkpoint, goes on
        assert differences(cfg, plan, pg) == []
        cp = target.load()
        assert cp.offset == log_end(cfg)
        assert cp.events == count_log(cfg, plan).events, (kills, cp)
    finally:
        target.close()
    assert kills >= 3, kills


def test_a_second_applier_with_a_stale_checkpoint_writes_nothing(world, pg) -> None:
    """Two appliers read the same checkpoint (a daemon left running beside a new one):
    the second's commit finds the checkpoint moved and rolls back, rather than applying
    the batch twice."""
    root, cfg, plan, cap = world
    cap.sync()
    one, two = PgTarget("core", pg), PgTarget("core", pg)
    try:
        cp = one.load()
        entries = LogReader(cfg.log_dir).read(cp.offset, None, max_frames=4)
        moved = one.apply(plan, entries, cp)
        with pytest.raises(TargetError, match="checkpoint moved"):
            two.apply(plan, entries, cp)
        assert one.load() == moved
    finally:
        one.close()
        two.close()


def test_a_large_batch_lands_exactly_the_copy_way(world, pg) -> None:
    """Batches above `COPY_ABOVE` rows go through COPY and one INSERT ... SELECT: the same
    rows, a UNIQUE swap inside one batch included (the REPLACE-like delete is set-based
    there), and every value class."""
    from replicator import pg_apply

    root, cfg, plan, cap = world
    a = sqlite3.connect(root / "a.db", isolation_level=None)
    a.execute("BEGIN")
    for i in range(pg_apply.COPY_ABOVE * 3):
        a.execute(
            "INSERT INTO fills(sym, px, qty, raw, n) VALUES (?, ?, ?, ?, ?)",
            (f"L{i}", -i / 7 if i % 5 else -0.0, 2**62 + i, bytes([i % 256]) * (i % 9), i + 0.5),
        )
    a.execute("COMMIT")
    cap.sync()
    target = PgTarget("core", pg)
    try:
        _apply_all(cfg, plan, target, frames=1000)
        a.execute("BEGIN")  # two rows swap their UNIQUE values, among many upserts
        a.execute("UPDATE fills SET sym = 'tmp' WHERE sym = 'L1'")
        a.execute("UPDATE fills SET sym = 'L1' WHERE sym = 'L2'")
        a.execute("UPDATE fills SET sym = 'L2' WHERE sym = 'tmp'")
        a.execute("UPDATE fills SET px = px + 1 WHERE id % 2 = 0")
        a.execute("COMMIT")
        a.close()
        cap.sync()
        _apply_all(cfg, plan, target, frames=1000)
        assert differences(cfg, plan, pg) == []
        assert target.load().events == count_log(cfg, plan).events
    finally:
        target.close()


def test_a_column_the_legacy_table_renames_or_drops_is_followed(world, pg) -> None:
    """The harvester resets a table before a narrowing schema; the PostgreSQL table then
    holds none of its rows and follows: the old columns go, the new ones come, and the
    rows copied again land exactly (the verifier would name a column left behind)."""
    root, cfg, plan, cap = world
    cap.sync()
    target = PgTarget("core", pg)
    try:
        _apply_all(cfg, plan, target)
        a = sqlite3.connect(root / "a.db", isolation_level=None)
        a.execute("ALTER TABLE fills RENAME COLUMN qty TO amount")
        a.execute("ALTER TABLE fills DROP COLUMN raw")
        a.execute("INSERT INTO fills(sym, px, amount) VALUES ('NEW', 1.25, 7)")
        a.close()
        cap.sync()
        _apply_all(cfg, plan, target)
        with psycopg.connect(pg) as c:
            cols = [
                r[0]
                for r in c.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'fills' ORDER BY ordinal_position"
                )
            ]
        assert "qty" not in cols and "raw" not in cols and "amount" in cols, cols
        cfg2, plan2 = load(root / "cdc.toml")  # the plan as the legacy files are now
        assert differences(cfg2, plan2, pg) == []
    finally:
        target.close()


def test_a_not_null_the_legacy_table_drops_is_dropped_too(tmp_path: Path, pg) -> None:
    """A bot rebuilds a table without a NOT NULL it had (SQLite's way to drop one), then
    writes a NULL there: the PostgreSQL table made with that NOT NULL follows, instead of
    stopping the apply on the NULL."""
    cfg_path = make_world(tmp_path, pg)
    a = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    a.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL, n INTEGER)")
    a.execute("INSERT INTO notes VALUES (1, 'x', 1)")
    cfg, plan = load(cfg_path)
    cap = Capture(cfg, plan)
    target = PgTarget("core", pg)
    try:
        cap.sync()
        _apply_all(cfg, plan, target)
        a.executescript(
            "BEGIN; CREATE TABLE notes2(id INTEGER PRIMARY KEY, body TEXT, n INTEGER);"
            "INSERT INTO notes2 SELECT * FROM notes; DROP TABLE notes;"
            "ALTER TABLE notes2 RENAME TO notes; COMMIT;"
        )
        a.execute("INSERT INTO notes VALUES (2, NULL, 2)")
        cap.sync()
        _apply_all(cfg, plan, target)
        assert differences(*load(cfg_path), pg) == []
    finally:
        a.close()
        target.close()
        cap.close()


def test_an_initial_copy_bound_for_postgresql_goes_through_the_log(tmp_path: Path, pg) -> None:
    """A copy by reference is SQLite's (the apply attaches the legacy file): a table bound
    for PostgreSQL is copied as rows whatever `snapshot_copy` says (under "auto", every
    table over 100k rows would otherwise stop the apply)."""
    cfg_path = make_world(tmp_path, pg)
    text = cfg_path.read_text().replace('snapshot_copy = "log"', 'snapshot_copy = "reference"')
    cfg_path.write_text(text)
    cfg, plan = load(cfg_path)
    cap = Capture(cfg, plan)
    target = PgTarget("core", pg)
    try:
        cap.sync()
        _apply_all(cfg, plan, target)
        assert differences(cfg, plan, pg) == []
    finally:
        target.close()
        cap.close()


def test_a_column_added_with_a_default_holds_it_in_the_rows_already_there(world, pg) -> None:
    """`ALTER TABLE ... ADD COLUMN c INTEGER DEFAULT 0`: SQLite's rows already there read 0
    without any write (no capture row); the PostgreSQL column gets the same DEFAULT, so
    they hold 0 there too, not NULL."""
    root, cfg, plan, cap = world
    cap.sync()
    target = PgTarget("core", pg)
    try:
        _apply_all(cfg, plan, target)
        a = sqlite3.connect(root / "a.db", isolation_level=None)
        a.execute("ALTER TABLE fills ADD COLUMN hits INTEGER DEFAULT 0")
        a.execute("ALTER TABLE fills ADD COLUMN tag TEXT DEFAULT 'it''s'")
        a.close()
        cap.sync()
        _apply_all(cfg, plan, target)
        assert differences(*load(root / "cdc.toml"), pg) == []
    finally:
        target.close()


def test_a_target_table_with_a_schema_replicates_into_that_schema(tmp_path: Path, pg) -> None:
    """`[targets.core]` with `kind = "postgres"`, `dsn` and `schema`: every table of ours
    and of the plan lives in that schema (made if missing), the rows exact."""
    cfg_path = make_world(tmp_path, pg)
    text = (
        cfg_path.read_text().replace(f'[targets]\ncore = "{pg}"\n', "")
        + f'\n[targets.core]\nkind = "postgres"\ndsn = "{pg}"\nschema = "Bots Core"\n'
    )
    cfg_path.write_text(text)
    cfg, plan = load(cfg_path)
    assert "search_path" in plan.targets["core"]
    cap = Capture(cfg, plan)
    target = PgTarget("core", plan.targets["core"])
    try:
        cap.sync()
        _apply_all(cfg, plan, target)
        assert differences(cfg, plan, plan.targets["core"]) == []
        with psycopg.connect(pg) as c:
            where = dict(
                c.execute(
                    "SELECT tablename, schemaname FROM pg_tables WHERE tablename IN "
                    "('fills', 'pos', '_cdc_checkpoint')"
                ).fetchall()
            )
        assert where == {t: "Bots Core" for t in ("fills", "pos", "_cdc_checkpoint")}, where
    finally:
        target.close()
        cap.close()


def test_a_merged_members_default_stays_its_own(world, pg) -> None:
    """P6/P7 (docs/fuzzing.md), F2 for PostgreSQL: member `a` adds `n1 DEFAULT 'x'`; a row
    member `b` writes afterwards (b has no n1) holds NULL there, not a's DEFAULT; then `b`
    adds n1 with its own DEFAULT: b's older rows read it in b's file, and hold it here."""
    root, cfg, plan, cap = world
    cap.sync()
    target = PgTarget("core", pg)
    a = sqlite3.connect(root / "a.db", isolation_level=None)
    b = sqlite3.connect(root / "b.db", isolation_level=None)
    try:
        _apply_all(cfg, plan, target)
        a.execute("ALTER TABLE pos ADD COLUMN n1 TEXT DEFAULT 'x'")
        cap.sync()
        _apply_all(cfg, plan, target)
        b.execute("INSERT INTO pos(k, v) VALUES ('new', 1.0)")
        cap.sync()
        _apply_all(cfg, plan, target)
        with psycopg.connect(pg) as c:
            got = c.execute("SELECT bot, k, n1 FROM pos ORDER BY bot, k").fetchall()
        assert [r for r in got if r[0] == "b"] == [("b", "a", None), ("b", "c", None),
                                                  ("b", "new", None)], got  # fmt: skip
        assert {r[2] for r in got if r[0] == "a"} == {"x"}, got  # a's older rows read it
        b.execute("ALTER TABLE pos ADD COLUMN n1 TEXT DEFAULT 'y'")
        cap.sync()
        _apply_all(cfg, plan, target)
        assert differences(*load(root / "cdc.toml"), pg) == []
    finally:
        a.close()
        b.close()
        target.close()


def test_unique_sets_follow_the_legacy_schema_not_the_install_time_plan(tmp_path: Path, pg) -> None:
    """P2 and P5 (docs/fuzzing.md): a UNIQUE column renamed after install (the apply read
    its unique sets from the plan made at install, and stopped with a ValueError), and a
    unique index dropped after install (it stayed in PostgreSQL: the next duplicate
    stopped the apply). The REPLACE through the renamed UNIQUE still deletes what SQLite
    deleted."""
    cfg_path = make_world(tmp_path, pg)
    a = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    a.execute("CREATE TABLE t1(k INTEGER PRIMARY KEY, a INT)")
    a.execute("CREATE UNIQUE INDEX ix ON t1(a)")
    a.execute("INSERT INTO t1 VALUES (1, 1)")
    cfg, plan = load(cfg_path)
    cap = Capture(cfg, plan)
    target = PgTarget("core", pg)
    try:
        cap.sync()
        _apply_all(cfg, plan, target)
        a.execute("ALTER TABLE fills RENAME COLUMN sym TO symbol")
        a.execute("INSERT INTO fills(symbol, px) VALUES ('NEW', 1.25)")
        a.execute("DROP INDEX ix")
        a.execute("INSERT INTO t1 VALUES (2, 1)")  # a duplicate, allowed now
        cap.sync()
        _apply_all(cfg, plan, target)
        a.execute("INSERT OR REPLACE INTO fills(symbol, px) VALUES ('ETH', 9.5)")
        cap.sync()
        _apply_all(cfg, plan, target)
        assert differences(*load(cfg_path), pg) == []
    finally:
        a.close()
        target.close()
        cap.close()
