"""Cutover to a PostgreSQL target and the way back (issue 19), with a real `cdc run`:
the legacy tables fenced for stale bots, the target's identities moved past every legacy
id, switched bots writing into PostgreSQL, their writes carried back into the fenced
legacy files, `cdc rollback` handing the files back exactly (the target then fenced for
stale bots, ours passing), a second cutover, and `cdc finalize` removing our objects."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import cdc_cmd
from tests.support.pg_world import bot_writes as _write
from tests.support.pg_world import differences, load, make_world


def _legacy(root: Path, sql: str, args: tuple = ()) -> list:
    c = sqlite3.connect(root / "a.db", timeout=10)
    try:
        with c:
            return c.execute(sql, args).fetchall()
    finally:
        c.close()


def _eventually(fn, timeout: float = 30.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _switched_bot(dsn: str) -> int:
    """What a bot pointed at PostgreSQL writes: an insert taking an identity, an update
    of a merged row, a delete and an insert into a keyless table. Returns the new id."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        new_id = c.execute(
            "INSERT INTO fills(sym, px, qty) VALUES ('NEW1', -0.0, 7) RETURNING id"
        ).fetchone()[0]
        c.execute("UPDATE pos SET v = 42.5 WHERE bot = 'b' AND k = 'a'")
        c.execute("DELETE FROM log WHERE msg = 'start'")
        c.execute("INSERT INTO log(msg, level) VALUES ('after', 3)")  # the rowid: an identity
    return new_id


def _refused(dsn: str, sql: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c, pytest.raises(psycopg.Error) as e:
        c.execute(sql)
    return str(e.value)


def test_cutover_to_postgresql_and_the_way_back(tmp_path: Path, pg, daemons) -> None:
    cfg_path = make_world(tmp_path, pg)
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    d = daemons(cfg_path)
    _write(tmp_path, 0, 20)
    _legacy(tmp_path, "DELETE FROM fills WHERE sym = 'D19'")  # the highest id is gone
    (top,) = _legacy(tmp_path, "SELECT seq FROM sqlite_sequence WHERE name = 'fills'")[0]
    d.wait_synced()

    r = cdc_cmd("cutover", "core", "-c", str(cfg_path))
    assert r.returncode == 0, (r.stdout, r.stderr)
    with pytest.raises(sqlite3.IntegrityError, match="sqlite-cdc:.*moved to"):
        _legacy(tmp_path, "INSERT INTO fills(sym) VALUES ('stale')")
    new_id = _switched_bot(pg)
    assert new_id > top  # no id a legacy row had is handed out again
    got = _eventually(lambda: _legacy(tmp_path, "SELECT id, px FROM fills WHERE sym = 'NEW1'"))
    assert got == [(new_id, 0.0)]  # -0.0: what a SQLite REAL column keeps of it
    cfg, plan = load(cfg_path)
    assert _eventually(lambda: differences(cfg, plan, pg) == []), differences(cfg, plan, pg)

    def way_back() -> dict | None:  # in the daemon's status file once it wrote it again
        r = cdc_cmd("status", "--json", "-c", str(cfg_path))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["backflow"].get("core")

    back = _eventually(way_back)
    assert back and back["behind"] == 0 and back["last_error"] is None, back

    r = cdc_cmd("rollback", "core", "-c", str(cfg_path))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert differences(cfg, plan, pg) == []
    why = _refused(pg, "INSERT INTO fills(sym) VALUES ('stale-pg')")
    assert "sqlite-cdc:" in why and "fills" in why, why
    assert "sqlite-cdc:" in _refused(pg, "TRUNCATE log")
    _legacy(tmp_path, "INSERT INTO fills(sym, px) VALUES ('BACK', 2.5)")  # legacy is live
    (after,) = _legacy(tmp_path, "SELECT id FROM fills WHERE sym = 'BACK'")[0]
    assert after > new_id  # the target's ids were carried back
    _write(tmp_path, 100, 10)
    d.wait_synced()
    assert differences(cfg, plan, pg) == []  # replication follows the legacy files again

    r = cdc_cmd("cutover", "core", "-c", str(cfg_path))
    assert r.returncode == 0, (r.stdout, r.stderr)
    _switched_bot_again(pg)
    assert _eventually(lambda: differences(cfg, plan, pg) == []), differences(cfg, plan, pg)
    r = cdc_cmd("finalize", "core", "-c", str(cfg_path))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert d.stop() == 0, d.output()
    import psycopg

    with psycopg.connect(pg, autocommit=True) as c:
        assert c.execute("SELECT to_regclass('_cdc_changes')").fetchone()[0] is None
        ours = c.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE '\\_cdc\\_%'")
        assert ours.fetchone()[0] == 0
        c.execute("INSERT INTO fills(sym) VALUES ('free')")  # the bots' database now


def _switched_bot_again(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO fills(sym, qty) VALUES ('NEW2', 1)")
        c.execute("DELETE FROM pos WHERE bot = 'a' AND k = 'b'")


@pytest.mark.parametrize(
    "cut_at, back_at", [("fencing", "rolling_back"), ("fenced", "rollback_fenced")]
)
def test_a_killed_cutover_or_rollback_is_finished_by_running_it_again(
    tmp_path: Path, pg, daemons, cut_at: str, back_at: str
) -> None:
    """SIGKILL right after a step of each (the record says where it stands): the same
    command completes it, the bots' rows exact both ways, a switched bot's write kept."""
    from tests.conftest import cdc_step

    cfg_path = make_world(tmp_path, pg)
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    d = daemons(cfg_path)
    _write(tmp_path, 0, 10)
    d.wait_synced()
    r = cdc_step("cutover", cfg_path, "core", kill_at=cut_at)
    assert r.returncode == -9, (r.stdout, r.stderr)
    if cut_at == "fenced":  # the fences stay up while the record says so
        with pytest.raises(sqlite3.IntegrityError, match="sqlite-cdc:"):
            _legacy(tmp_path, "INSERT INTO fills(sym) VALUES ('stale')")
    r = cdc_step("cutover", cfg_path, "core")
    assert r.returncode == 0, (r.stdout, r.stderr)
    new_id = _switched_bot(pg)
    got = _eventually(lambda: _legacy(tmp_path, "SELECT id FROM fills WHERE sym = 'NEW1'"))
    assert got == [(new_id,)]
    r = cdc_step("rollback", cfg_path, "core", kill_at=back_at)
    assert r.returncode == -9, (r.stdout, r.stderr)
    r = cdc_step("rollback", cfg_path, "core")
    assert r.returncode == 0, (r.stdout, r.stderr)
    cfg, plan = load(cfg_path)
    assert differences(cfg, plan, pg) == []
    _legacy(tmp_path, "INSERT INTO fills(sym) VALUES ('live again')")
    assert d.stop() == 0, d.output()
