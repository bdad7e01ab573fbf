"""Every kind of stale writer against every state of a cutover, with the switched bots
writing at the same time.

A stale writer is a process still pointed at the copy that is no longer the live one: the
legacy file once its tables are fenced, cut over or finalized, or the target once a
rollback gave the tables back. The system this serves left 13 modules on legacy paths
after its own migration, so this is the expected case. Each state is set up once, every
kind of writer tries its write, and then:

- every row write was refused with a `sqlite-cdc:` message (or, on a finalized file, by
  the guard, which names where the table went);
- every DDL that SQLite cannot refuse was flagged by name (`cdc status` `kept_out`, or
  `cdc verify` exiting non-zero on that table) and kept out of the live copy;
- the live copy holds what was copied before the fence plus what the switched bots
  wrote, nothing else;
- after finalize, history and rebuild still answer for the moved tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cdc_cmd, cdc_step, make_db, wait_until, write_config

pytestmark = pytest.mark.skipif(
    shutil.which("sqlite3") is None,
    reason="the sqlite3 shell is one of the stale writers (Debian: sqlite3)",
)

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "bot"
path = "legacy/bot.db"
capture = "hooks"
[[rules]]
table = "*"
target = "core"
[daemon]
poll_interval = 0.1
snapshot_copy = "log"  # a row's history, complete from its initial copy on
[verify]
continuous = false
[log]
retention = "archive"
"""

DDL_TABLES = ("d_drop", "d_recreate", "d_rename", "d_alter", "d_index")
SCHEMA = (
    "PRAGMA journal_mode=WAL;"
    "CREATE TABLE kv(k TEXT PRIMARY KEY, v);"
    + "".join(f"CREATE TABLE {t}(id INTEGER PRIMARY KEY, v TEXT);" for t in DDL_TABLES)
    + "CREATE TABLE nk(v TEXT);"
    + "INSERT INTO kv VALUES ('a', 1), ('b', 2.5), ('c', 'three');"
    + "".join(f"INSERT INTO {t}(v) VALUES ('x'), ('y'), ('z');" for t in DDL_TABLES)
    + "INSERT INTO nk VALUES ('n1'), ('n2'), ('n3'), ('n4');"
)

DDL = {
    "d_drop": ["DROP TABLE d_drop"],
    "d_recreate": [
        "DROP TABLE d_recreate",
        "CREATE TABLE d_recreate(id INTEGER PRIMARY KEY, v TEXT)",
        "INSERT INTO d_recreate VALUES (1, 'stale')",
    ],
    "d_rename": ["ALTER TABLE d_rename RENAME TO d_rename_old"],
    "d_alter": ["ALTER TABLE d_alter ADD COLUMN extra TEXT DEFAULT 'stale'"],
    "d_index": ["CREATE UNIQUE INDEX d_index_v ON d_index(v)"],
    "nk": ["DELETE FROM nk WHERE rowid % 2 = 0", "VACUUM"],
}

# One process per kind of writer: it runs its statements and prints, per statement,
# "ok" or the error's class and message.
WRITER = r"""
import json, sqlite3, sys
kind, path, other = sys.argv[1], sys.argv[2], sys.argv[3]
out = []
def run(execute, sqls):
    for sql in sqls:
        try:
            execute(sql)
            out.append("ok")
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}")
if kind == "sqlite3":
    c = sqlite3.connect(path, isolation_level=None, timeout=10)
    run(lambda s: c.execute(s).fetchall(), sys.argv[4:])
elif kind == "apsw":
    import apsw
    c = apsw.Connection(path)
    c.set_busy_timeout(10000)
    run(lambda s: c.execute(s).fetchall(), sys.argv[4:])
elif kind == "attached":
    c = sqlite3.connect(other, isolation_level=None, timeout=10)
    c.execute("ATTACH ? AS l", (path,))
    run(lambda s: c.execute(s).fetchall(), sys.argv[4:])
elif kind == "pool":
    from cdc import pool
    pool.configure(other)
    def one(sql):
        with pool.connection(path) as c:
            c.execute(sql)
    run(one, sys.argv[4:])
    pool.close_all()
elif kind == "holder":  # opened before the state began; writes when told to
    c = sqlite3.connect(path, isolation_level=None, timeout=10)
    c.execute("SELECT count(*) FROM sqlite_master").fetchall()
    print("ready", flush=True)
    run(lambda s: c.execute(s).fetchall(), [sys.stdin.readline().strip()])
print(json.dumps(out))
"""


def _writer(kind: str, path: str, other: str, *sqls: str) -> list[str]:
    r = subprocess.run(
        [sys.executable, "-c", WRITER, kind, path, other, *sqls],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


class Holder:
    """A process that opened its connection before the state under test began."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, "holder", str(path), ""],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def write(self, sql: str) -> list[str]:
        out, _ = self.proc.communicate(sql + "\n", timeout=60)
        return json.loads(out.splitlines()[-1])


def _shell(path: str, sql: str) -> list[str]:
    r = subprocess.run(  # with a busy timeout, as a careful person sets it
        ["sqlite3", "-cmd", ".timeout 10000", path, sql], capture_output=True, text=True, timeout=60
    )
    return ["ok"] if r.returncode == 0 else [f"exit {r.returncode}: {r.stderr.strip()}"]


def _rows(db: Path, table: str) -> list:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
        return sorted(c.execute(f"SELECT *, typeof(v) FROM {table}").fetchall(), key=repr)


def _tables(db: Path) -> dict[str, list]:
    return {t: _rows(db, t) for t in ("kv", *DDL_TABLES, "nk")}


def _status(cfg: Path) -> dict:
    r = cdc_cmd("status", "--json", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class SwitchedBot(threading.Thread):
    """A bot on the live copy, writing its own keys while the stale writers try theirs."""

    def __init__(self, db: Path, prefix: str) -> None:
        super().__init__(daemon=True)
        self.db, self.prefix, self.stop, self.wrote = db, prefix, threading.Event(), []

    def run(self) -> None:
        c = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        try:
            i = 0
            while not self.stop.is_set() or i < 5:
                k = f"{self.prefix}{i}"
                c.execute("INSERT INTO kv VALUES (?, ?)", (k, i * 0.5))
                self.wrote.append((k, i * 0.5, "real"))
                i += 1
                self.stop.wait(0.02)
        finally:
            c.close()

    def finish(self) -> list:
        self.stop.set()
        self.join(60)
        return self.wrote


def _row_writers(path: Path, scratch: Path, cfg: Path, source: str, holder: Holder) -> dict:
    """Every kind of row writer, each trying one write on `kv` of `path`."""
    p = str(path)
    return {
        "sqlite3": _writer("sqlite3", p, "", "INSERT INTO kv VALUES ('stale', 1)"),
        "shell": _shell(p, "UPDATE kv SET v = 'stale-shell'"),
        "apsw": _writer("apsw", p, "", "DELETE FROM kv"),
        "attached": _writer("attached", p, str(scratch), "UPDATE l.kv SET v = 'stale'"),
        "pool": _writer("pool", source, str(cfg), "UPDATE kv SET v = 'stale-pool'"),
        "holder": holder.write("INSERT INTO kv VALUES ('stale-holder', 1)"),
    }


def _refused(results: dict, *needles: str) -> None:
    for kind, got in results.items():
        assert len(got) == 1 and got[0] != "ok", (kind, got)
        assert all(n in got[0] for n in needles), (kind, got)


def _ddl(path: Path) -> dict:
    return {t: _writer("sqlite3", str(path), "", *sqls) for t, sqls in DDL.items()}


def _kept_out(cfg: Path, tables, side: str) -> dict:
    want = set(tables)

    def named():
        st = _status(cfg)
        got = {k["table"]: k for k in st.get("kept_out", []) if k.get("side", side) == side}
        return got if want <= set(got) else None

    return wait_until(named, 60, 0.3, f"status to name every kept-out table {sorted(want)}")


@pytest.fixture
def world(tmp_path: Path, daemons):  # noqa: ANN201
    legacy = tmp_path / "legacy" / "bot.db"
    make_db(legacy, SCHEMA)
    make_db(tmp_path / "scratch.db", "CREATE TABLE notes(n);")
    cfg = write_config(tmp_path, CONFIG)
    r = cdc_cmd("install", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    d = daemons(cfg)
    d.wait_synced()
    return {
        "cfg": cfg,
        "d": d,
        "legacy": legacy,
        "core": tmp_path / "out" / "core.db",
        "scratch": tmp_path / "scratch.db",
    }


def _cut_over(w: dict, holder_on: Path | None = None) -> Holder | None:
    holder = Holder(holder_on) if holder_on else None
    r = cdc_step("cutover", w["cfg"], "core")
    assert r.returncode == 0, r.stdout + r.stderr
    return holder


def test_fencing_the_legacy_side_is_still_live(world: dict) -> None:
    """Killed before its fence: the legacy tables are still the live ones, so a bot's
    write there is not stale. It is replicated, and the resumed cutover carries it."""
    w = world
    holder = Holder(w["legacy"])
    r = cdc_step("cutover", w["cfg"], "core", kill_at="fencing")
    assert r.returncode != 0
    got = _row_writers(w["legacy"], w["scratch"], w["cfg"], "bot", holder)
    assert all(v == ["ok"] for v in got.values()), got
    r = cdc_step("cutover", w["cfg"], "core")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _tables(w["core"]) == _tables(w["legacy"])


def test_fenced_every_stale_writer_is_refused_or_named(world: dict) -> None:
    """Killed with its fences up: nothing of the legacy side may change from here on."""
    w = world
    holder = Holder(w["legacy"])
    r = cdc_step("cutover", w["cfg"], "core", kill_at="fenced")
    assert r.returncode != 0
    copied = _tables(w["legacy"])
    _refused(_row_writers(w["legacy"], w["scratch"], w["cfg"], "bot", holder), "sqlite-cdc:")
    ddl = _ddl(w["legacy"])
    assert ddl["nk"][0] != "ok" and "sqlite-cdc:" in ddl["nk"][0], ddl  # the row delete
    kept = _kept_out(w["cfg"], DDL, "legacy")
    assert all(k["path"] == str(w["legacy"]) for k in kept.values()), kept
    w["d"].wait_synced()
    assert _tables(w["core"]) == copied
    r = cdc_step("cutover", w["cfg"], "core")  # resumed: it will not prove the wrong copy
    assert r.returncode == 12, r.stdout + r.stderr
    assert "d_drop" in r.stdout + r.stderr, r.stdout + r.stderr


def test_done_stale_writers_never_reach_the_live_target(world: dict) -> None:
    w = world
    holder = _cut_over(w, holder_on=w["legacy"])
    copied = {t: _rows(w["core"], t) for t in ("kv", *DDL_TABLES, "nk")}
    bot = SwitchedBot(w["core"], "sw")
    bot.start()
    try:
        _refused(
            _row_writers(w["legacy"], w["scratch"], w["cfg"], "bot", holder),
            "sqlite-cdc:",
            "moved to",
        )
        _ddl(w["legacy"])
        kept = _kept_out(w["cfg"], DDL, "legacy")
    finally:
        wrote = bot.finish()
    assert {k["target"] for k in kept.values()} == {"core"}
    w["d"].wait_synced()
    expected = {**copied, "kv": sorted(copied["kv"] + wrote, key=repr)}
    assert {t: _rows(w["core"], t) for t in expected} == expected
    r = cdc_cmd("verify", "--json", "-c", str(w["cfg"]))
    assert r.returncode != 0, r.stdout  # the kept-out tables are named there too
    states = {t["table"]: t["state"] for t in json.loads(r.stdout)["tables"]}
    assert all(states[t] != "equal" for t in DDL), states
    assert w["d"].proc.poll() is None, w["d"].output()


def test_rolled_back_stale_writers_of_the_target_are_refused(world: dict) -> None:
    """The mirror: once a rollback gave the tables back, a bot still on the target is
    the stale one, and the legacy file is live again."""
    w = world
    _cut_over(w)
    with contextlib.closing(sqlite3.connect(w["core"], timeout=10, isolation_level=None)) as c:
        c.execute("INSERT INTO kv VALUES ('from-target', 7)")  # comes back with the rollback
    holder = Holder(w["core"])
    r = cdc_step("rollback", w["cfg"], "core")
    assert r.returncode == 0, r.stdout + r.stderr
    bot = SwitchedBot(w["legacy"], "back")
    bot.start()
    try:
        got = _row_writers(w["core"], w["scratch"], w["cfg"], "core", holder)
    finally:
        bot.finish()
    _refused(got, "sqlite-cdc:")
    w["d"].wait_synced()
    legacy = _tables(w["legacy"])
    assert ("from-target", 7, "integer") in legacy["kv"]
    assert not any("stale" in repr(r) for r in legacy["kv"]), legacy["kv"]
    assert _tables(w["core"]) == legacy  # the forward path again, bots' rows included
    for sqls in DDL.values():  # DDL on the fenced target: never flows back
        _writer("sqlite3", str(w["core"]), "", *sqls)
    w["d"].wait_synced()
    assert _tables(w["legacy"]) == legacy
    r = cdc_cmd("verify", "--json", "-c", str(w["cfg"]))
    assert r.returncode != 0, r.stdout  # the target's drift is named, table by table
    states = {t["table"]: t["state"] for t in json.loads(r.stdout)["tables"]}
    assert all(states[t] == "diverged" for t in DDL_TABLES if t in states), states
    assert {"d_drop", "d_recreate", "d_alter", "d_index"} <= states.keys(), states
    assert states["nk"] == "equal", states  # its delete was refused: VACUUM renumbered nothing


def test_finalized_stale_writers_learn_where_the_data_went(world: dict) -> None:
    w = world
    _cut_over(w)  # a process holding the file would make finalize refuse, naming it
    copied = {t: _rows(w["core"], t) for t in ("kv", *DDL_TABLES, "nk")}
    bot = SwitchedBot(w["core"], "sw")
    bot.start()
    try:
        r = cdc_cmd("finalize", "core", "-c", str(w["cfg"]), timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        holder = Holder(w["legacy"])  # opened on the guard
        got = _row_writers(w["legacy"], w["scratch"], w["cfg"], "bot", holder)
        ddl = _ddl(w["legacy"])
    finally:
        wrote = bot.finish()
    moved = f"sqlite-cdc: table kv of {w['legacy']} moved to {w['core']}"
    pooled = got.pop("pool")
    _refused(got, moved)
    assert pooled[0] != "ok" and "finaliz" in pooled[0], pooled  # the pool names it too
    assert all(v[0] != "ok" for v in ddl.values()), ddl  # a guard takes no DDL
    w["d"].wait_synced()
    expected = {**copied, "kv": sorted(copied["kv"] + wrote, key=repr)}
    assert {t: _rows(w["core"], t) for t in expected} == expected
    r = cdc_cmd("history", "-c", str(w["cfg"]), "--json", "core.kv", "b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["complete"]
    past = w["cfg"].parent / "past.db"
    r = cdc_cmd(
        "rebuild", "-c", str(w["cfg"]), "core", "--as-of", f"@{time.time()}", "--out", str(past)
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert _rows(past, "d_drop") == copied["d_drop"]  # the moved tables, from the log
