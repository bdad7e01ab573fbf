"""Fences hold for every writer: a pool connection with hook capture (triggers off for
itself) is refused by a fenced table like any bot, by name, before anything commits; a
write it cannot capture (an attached captured file) is refused too; and the refusal is
one a bot can tell from a UNIQUE conflict."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import apsw
import pytest

from cdc.capture import fence
from cdc.capture import triggers as capture
from cdc.capture.hooks import HookCapture
from cdc.config import load_config
from cdc.errors import CdcError, FencedWrite
from cdc.inventory import list_tables
from cdc.pool.pooled import PooledConnection
from tests.conftest import REPO, cdc_cmd, cdc_step, make_db, wait_until, write_config

SCHEMA = "CREATE TABLE kv(k TEXT PRIMARY KEY, v); CREATE TABLE free(k TEXT PRIMARY KEY, v);"
WHERE = "/t/core.db (table kv)"


def _fenced_file(path: Path) -> str:
    """A captured legacy file whose `kv` is fenced; returns the fence's message."""
    make_db(path, SCHEMA + "INSERT INTO kv VALUES ('a', 'legacy');")
    conn = apsw.Connection(str(path))
    capture.install(conn, list_tables(conn), str(path))
    fence.fence(conn, "bot", str(path), {"kv": WHERE}, stage="core")
    conn.close()
    try:
        sqlite3.connect(path, isolation_level=None).execute("DELETE FROM kv")
    except sqlite3.IntegrityError as e:
        assert e.sqlite_errorname == "SQLITE_CONSTRAINT_TRIGGER"  # not _UNIQUE
        return str(e)
    raise AssertionError("the fence let a plain bot through")


def _attempts(conn) -> dict[str, BaseException | None]:
    """Every way a bot writes, each in its own unit of work."""

    def txn(c) -> None:
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO free VALUES ('in txn', 1)")
        c.execute("INSERT INTO kv VALUES ('stale', 1)")
        c.execute("COMMIT")

    def savepoint(c) -> None:
        with c:
            c.execute("INSERT INTO free VALUES ('in savepoint', 1)")
            c.execute("DELETE FROM kv WHERE k = 'a'")

    ways = {
        "autocommit": lambda c: c.execute("UPDATE kv SET v = 'stale' WHERE k = 'a'"),
        "executemany": lambda c: c.executemany("INSERT INTO kv VALUES (?, ?)", [("s1", 1)] * 1),
        "transaction": txn,
        "savepoint": savepoint,
        "script": lambda c: c.execute("INSERT INTO free VALUES ('s', 1); DELETE FROM kv;"),
    }
    out: dict[str, BaseException | None] = {}
    for name, way in ways.items():
        try:
            way(conn)
            out[name] = None
        except apsw.ConstraintError as e:  # what an existing bot catches
            out[name] = e
        assert not conn.in_transaction, name  # nothing holds the file's write lock
    return out


@pytest.mark.parametrize("hooks", [True, False])
def test_a_pool_connection_is_refused_by_a_fence_like_any_bot(tmp_path: Path, hooks: bool):
    db = tmp_path / "bot.db"
    message = _fenced_file(db)
    assert message.startswith("sqlite-cdc: table kv of ") and "stage core" in message
    raw = apsw.Connection(str(db))
    conn = PooledConnection(raw, HookCapture(raw, "bot") if hooks else None)
    seq = raw.execute("SELECT max(seq) FROM _cdc_changes").fetchone()
    attempts = _attempts(conn)
    for name, e in attempts.items():
        assert isinstance(e, FencedWrite), (name, e)
        assert isinstance(e, CdcError) and str(e) == message, name
    assert conn.fenced == len(attempts)  # each refusal counted once, for the pool's metric
    assert raw.execute("SELECT * FROM kv").fetchall() == [("a", "legacy")]
    # whole transactions refused; a plain connection's script committed its first statement
    free = raw.execute("SELECT k FROM free").fetchall()
    assert free == ([] if hooks else [("s",)])
    if hooks:  # (a plain connection's triggers captured its committed statement)
        assert raw.execute("SELECT max(seq) FROM _cdc_changes").fetchone() == seq
    conn.execute("INSERT INTO free VALUES ('after', 1)")  # the connection still works
    raw.close()


def test_a_hook_connection_sees_a_fence_made_after_it_opened(tmp_path: Path):
    db = tmp_path / "bot.db"
    make_db(db, SCHEMA)
    ours = apsw.Connection(str(db))
    capture.install(ours, list_tables(ours), str(db))
    raw = apsw.Connection(str(db))
    conn = PooledConnection(raw, HookCapture(raw, "bot"))
    conn.execute("INSERT INTO kv VALUES ('before', 1)")
    fence.fence(ours, "bot", str(db), {"kv": WHERE})
    with pytest.raises(FencedWrite, match="moved to /t/core.db"):
        conn.execute("INSERT INTO kv VALUES ('after', 1)")
    assert raw.execute("SELECT k FROM kv").fetchall() == [("before",)]


def test_a_fence_stood_ahead_refuses_from_the_row_that_arms_it(tmp_path: Path):
    """A cutover creates its fences ahead, unarmed, and fences by inserting rows: no
    schema change at the fence instant. Before the row, every writer passes; from it,
    a plain bot and a hook connection that opened before (its fences cached by schema
    version, which arming does not change) are refused alike; and a stale process can
    neither delete nor change the row while the fence stands."""
    db = tmp_path / "bot.db"
    make_db(db, SCHEMA)
    ours = apsw.Connection(str(db))
    capture.install(ours, list_tables(ours), str(db))
    raw = apsw.Connection(str(db))
    pooled = PooledConnection(raw, HookCapture(raw, "bot"))
    bot = sqlite3.connect(db, isolation_level=None)
    fence.stand(ours, str(db), {"kv": WHERE}, stage="core")
    cookie = ours.execute("PRAGMA schema_version").fetchone()[0]
    bot.execute("INSERT INTO kv VALUES ('stood', 1)")
    pooled.execute("INSERT INTO kv VALUES ('stood hooks', 1)")
    mark = fence.fence(ours, "bot", str(db), {"kv": WHERE}, stage="core")
    assert mark.schema_before == mark.schema_after == cookie  # armed by a row only
    with pytest.raises(sqlite3.IntegrityError, match="moved to /t/core.db"):
        bot.execute("INSERT INTO kv VALUES ('armed', 1)")
    with pytest.raises(FencedWrite, match="moved to /t/core.db"):
        pooled.execute("INSERT INTO kv VALUES ('armed hooks', 1)")
    for stale in ("DELETE FROM _cdc_fenced", "UPDATE _cdc_fenced SET tid = tid + 100"):
        with pytest.raises(sqlite3.IntegrityError, match="lifted by `cdc cutover --abort`"):
            bot.execute(stale)
    assert [r[0] for r in raw.execute("SELECT k FROM kv ORDER BY k")] == ["stood", "stood hooks"]
    assert fence.unfence(ours, str(db)) == ["kv"]
    assert fence.armed_tids(ours) == set()
    bot.execute("INSERT INTO kv VALUES ('lifted', 1)")
    pooled.execute("INSERT INTO kv VALUES ('lifted hooks', 1)")
    # A fence stood and never armed (a cutover stopped before its fence) is lifted too.
    fence.stand(ours, str(db), {"kv": WHERE}, stage="core")
    assert fence.unfence(ours, str(db), ["kv"]) == []
    names = {r[0] for r in ours.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert not [n for n in names if n.startswith("_cdc_fence") and n[10:11].isdigit()], names
    bot.close()
    raw.close()


def _two_sources(root: Path) -> Path:
    make_db(root / "bot.db", SCHEMA)
    make_db(root / "other.db", SCHEMA + "INSERT INTO kv VALUES ('o', 0);")
    make_db(root / "scratch.db", "CREATE TABLE notes(n);")
    return write_config(
        root,
        """
state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "bot"
path = "bot.db"
capture = "hooks"
[[sources]]
name = "other"
path = "other.db"
[[rules]]
table = "*"
target = "core"
as = "{source}_{table}"
""",
    )


def test_a_write_to_an_attached_captured_file_is_refused_by_name(tmp_path, pipeline_for):
    """The hook connection's triggers are off for every schema: a write to an attached
    captured file would fire none of its triggers (capture, fences, its own)."""
    cfg_path = _two_sources(tmp_path)
    p = pipeline_for(load_config(cfg_path))
    p.sync()
    raw = apsw.Connection(str(tmp_path / "bot.db"))
    conn = PooledConnection(raw, HookCapture(raw, "bot"))
    conn.execute("ATTACH ? AS other", (str(tmp_path / "other.db"),))
    conn.execute("ATTACH ? AS scratch", (str(tmp_path / "scratch.db"),))
    with pytest.raises(CdcError, match=r"other\.db.*table kv.*triggers"):
        conn.execute("INSERT INTO other.kv VALUES ('x', 1)")
    with pytest.raises(CdcError, match="table kv"):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO kv VALUES ('mine', 1)")
        conn.execute("UPDATE other.kv SET v = 2")
    assert not raw.in_transaction  # refused whole, like a fence
    conn.execute("INSERT INTO scratch.notes VALUES ('no triggers: nothing skipped')")
    conn.execute("CREATE TEMP TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("INSERT INTO kv VALUES ('main', 1)")
    assert raw.execute("SELECT * FROM other.kv").fetchall() == [("o", 0)]
    assert raw.execute("SELECT k FROM kv").fetchall() == [("main",)]
    ours = apsw.Connection(str(tmp_path / "other.db"))
    fence.fence(ours, "other", str(tmp_path / "other.db"), {"kv": WHERE})
    with pytest.raises(FencedWrite, match=r"sqlite-cdc: table kv of .*other\.db moved to"):
        conn.execute("INSERT INTO other.kv VALUES ('x', 1)")
    p.sync()
    assert p.diffs() == []


STALE_BOT = textwrap.dedent(
    """
    import json, sys, apsw
    from cdc import pool
    from cdc.errors import FencedWrite
    pool.configure(sys.argv[1])
    out = {}
    def attempt(name, work):
        try:
            with pool.connection("bot") as conn:
                work(conn)
            out[name] = "accepted"
        except FencedWrite as e:
            out[name] = "FencedWrite: " + str(e)
        except apsw.ConstraintError as e:
            out[name] = "ConstraintError: " + str(e)
    def txn(conn):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO kv VALUES ('stale', 1)")
        conn.execute("COMMIT")
    attempt("update", lambda c: c.execute("UPDATE kv SET v = 'stale' WHERE k = 'a'"))
    attempt("transaction", txn)
    attempt("executemany", lambda c: c.executemany("INSERT INTO kv VALUES (?, 1)", [("s1",)]))
    print(json.dumps(out))
    """
)


def test_a_stale_hooks_bot_cannot_write_a_cut_over_table(tmp_path: Path, daemons):
    """Real processes: stage cut over, a switched bot writes the target, a stale bot
    through `cdc.pool` with hook capture writes the fenced legacy table: refused by name,
    nothing of it reaches the target, which keeps the switched bot's row."""
    make_db(tmp_path / "bot.db", SCHEMA + "INSERT INTO kv VALUES ('a', 'legacy');")
    cfg = write_config(
        tmp_path,
        """
state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "bot"
path = "bot.db"
capture = "hooks"
[[rules]]
table = "*"
target = "core"
[daemon]
poll_interval = 0.05
[verify]
continuous = false
""",
    )
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg)
    d.wait_synced()
    r = cdc_step("cutover", cfg, "core")
    assert r.returncode == 0, r.stdout + r.stderr
    core, legacy = str(tmp_path / "out/core.db"), str(tmp_path / "bot.db")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    switched = "from cdc import pool; import sys; pool.configure(sys.argv[1])\n"
    switched += "with pool.connection('core') as c: c.execute(\"UPDATE kv SET v='switched'\")"
    subprocess.run([sys.executable, "-c", switched, str(cfg)], env=env, check=True)

    def legacy_v():
        with sqlite3.connect(legacy, timeout=10) as c:
            return c.execute("SELECT v FROM kv WHERE k = 'a'").fetchone()[0]

    wait_until(lambda: legacy_v() == "switched", 30, what="the way back to write it back")
    r = subprocess.run(
        [sys.executable, "-c", STALE_BOT, str(cfg)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    want = f"FencedWrite: sqlite-cdc: table kv of {legacy} moved to {core} (table kv)"
    for name, got in seen.items():
        assert got.startswith(want) and "stage core" in got, (name, got)
    with sqlite3.connect(f"file:{legacy}?mode=ro", uri=True) as c:
        hook_rows = c.execute("SELECT count(*) FROM _cdc_changes WHERE op >= 10").fetchone()
    assert hook_rows == (0,)
    d.wait_synced()
    with sqlite3.connect(core, timeout=10) as c:
        assert c.execute("SELECT * FROM kv").fetchall() == [("a", "switched")]
    assert legacy_v() == "switched"
    assert d.stop() == 0, d.output()
