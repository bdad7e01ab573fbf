"""Hook capture (`cdc.hooks`): the same change events as trigger capture, whole transactions
only, durable with the writer's COMMIT, and writers outside the pool still captured."""

from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import apsw
import pytest

from cdc.capture.hooks import HookCapture
from cdc.changelog.segments import LogReader
from cdc.config import load_config
from cdc.errors import PlanError
from cdc.events import RowBatch, TableSchema
from cdc.planning.resolve import resolve_plan
from cdc.pool.pooled import PooledConnection
from tests.conftest import REPO, cdc_cmd, make_db, write_config
from verifier import compare_plan

SCHEMA = """
CREATE TABLE acct(id INTEGER PRIMARY KEY AUTOINCREMENT, handle TEXT UNIQUE, bal REAL, note TEXT);
CREATE TABLE kv(k TEXT PRIMARY KEY, v);
CREATE TABLE pos(bot TEXT, sym TEXT, qty REAL, raw BLOB, PRIMARY KEY(bot, sym)) WITHOUT ROWID;
CREATE TABLE log(msg TEXT, at REAL);
"""
REALS = [0.0, -0.0, 1e308, -1e308, 5e-324, math.inf, -math.inf, 0.1 + 0.2, 2.0**53 + 1]


def _config(root: Path, capture: str) -> Path:
    return write_config(
        root,
        f"""
state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "bot"
path = "bot.db"
capture = "{capture}"
[[rules]]
table = "*"
target = "core"
""",
    )


def _workload(seed: int):
    """Steps, each a list of (sql, bindings | list-of-bindings for executemany)."""
    rng = random.Random(seed)
    steps: list[list[tuple]] = []
    for i in range(1, 41):
        steps.append(
            [
                (
                    "INSERT INTO acct(handle, bal, note) VALUES (?, ?, ?)",
                    (f"h{i}", rng.choice(REALS), None),
                )
            ]
        )
    steps.append(
        [
            (
                "INSERT INTO kv VALUES (?, ?)",
                [(f"k{i}", rng.choice([1, 1.0, "1", b"1", None])) for i in range(30)],
            )
        ]
    )
    steps.append(
        [
            (
                "INSERT INTO pos VALUES (?, ?, ?, ?)",
                [("b", f"S{i}", rng.choice(REALS), rng.randbytes(8)) for i in range(20)],
            )
        ]
    )
    steps.append([("INSERT INTO log VALUES (?, ?)", [(f"m{i}", float(i)) for i in range(10)])])
    for _ in range(120):
        r = rng.random()
        i = rng.randint(1, 45)
        if r < 0.15:  # REPLACE through the UNIQUE: deletes another row silently
            steps.append(
                [
                    (
                        "INSERT OR REPLACE INTO acct(handle, bal) VALUES (?, ?)",
                        (f"h{i}", rng.choice(REALS)),
                    )
                ]
            )
        elif r < 0.25:  # key change
            steps.append([("UPDATE acct SET id = ? WHERE id = ?", (1000 + len(steps), i))])
        elif r < 0.35:
            steps.append([("DELETE FROM acct WHERE id = ?", (i,))])
        elif r < 0.45:  # a transaction that rolls back: nothing of it may reach the log
            steps.append(
                [
                    ("BEGIN", None),
                    ("INSERT INTO kv VALUES (?, 'gone')", (f"rb{i}",)),
                    ("UPDATE acct SET bal = 7 WHERE id = ?", (i,)),
                    ("ROLLBACK", None),
                ]
            )
        elif r < 0.55:  # savepoints: the inner part is undone, the rest commits
            steps.append(
                [
                    ("BEGIN", None),
                    ("UPDATE kv SET v = ? WHERE k = ?", (rng.choice(REALS), f"k{i % 30}")),
                    ("SAVEPOINT sp", None),
                    ("DELETE FROM kv WHERE k = ?", (f"k{(i + 1) % 30}",)),
                    ("INSERT INTO pos VALUES ('b', ?, 1.5, x'00ff')", (f"SP{i}",)),
                    ("ROLLBACK TO sp", None),
                    ("RELEASE sp", None),
                    (
                        "UPDATE pos SET bot = 'c', raw = ? WHERE sym = ?",
                        (rng.randbytes(4), f"S{i % 20}"),
                    ),
                    ("COMMIT", None),
                ]
            )
        elif r < 0.65:  # rowid table: identified by rowid
            steps.append(
                [
                    ("UPDATE log SET at = ? WHERE rowid = ?", (rng.choice(REALS), i % 10 + 1)),
                    ("DELETE FROM log WHERE rowid = ?", (i % 13,)),
                ]
            )
        elif r < 0.70:  # NULL keys (told apart by rowid) and a key that changes spelling
            steps.append(
                [
                    ("INSERT INTO kv VALUES (NULL, ?)", (i,)),
                    ("UPDATE kv SET v = ? WHERE k IS NULL AND v = ?", (-i, i - 1)),
                    ("UPDATE kv SET k = NULL WHERE k = ?", (f"k{i % 30}",)),
                    ("UPDATE kv SET k = ? WHERE k IS NULL AND v = ?", (f"n{i}", i - 2)),
                    ("UPDATE kv SET k = upper(k) WHERE k = ?", (f"k{(i + 3) % 30}",)),
                ]
            )
        elif r < 0.75:  # upsert
            steps.append(
                [
                    (
                        "INSERT INTO kv VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                        (f"k{i % 35}", b"\x00" * (i % 5)),
                    )
                ]
            )
        elif r < 0.85:  # a failing statement inside a transaction, the rest commits
            steps.append(
                [
                    ("BEGIN", None),
                    ("INSERT INTO kv VALUES ('x', 1)", None),
                    (
                        "INSERT INTO acct(id, handle) VALUES (NULL, NULL), (NULL, 'h1'), (NULL, 'h1')",
                        None,
                    ),
                    ("COMMIT", None),
                ]
            )
        else:
            steps.append(
                [
                    (
                        "UPDATE acct SET bal = bal * 2, note = ? WHERE id % 3 = ?",
                        (rng.choice(["x", None, 3]), i % 3),
                    )
                ]
            )
    return steps


def _run(conn, steps) -> None:
    for step in steps:
        for sql, b in step:
            try:
                if isinstance(b, list):
                    conn.executemany(sql, b)
                else:
                    list(conn.execute(sql, b) if b is not None else conn.execute(sql))
            except apsw.ConstraintError:
                pass  # the failing statement of its step (both sides fail alike)
        yield


def _events(cfg) -> list[tuple]:
    """The log as comparable data: schema frames whole; row events without their capture
    sequence and observation time."""
    out = []
    reader = LogReader(cfg.log_dir)
    for e in reader.read(0, None, max_frames=1_000_000):
        f = e.frame
        if isinstance(f, TableSchema):
            out.append(("schema", f.table, tuple(c.name for c in f.columns), tuple(f.key)))
        elif isinstance(f, RowBatch):
            for ev in f.events:
                out.append((f.table, int(ev.op), _bits(ev.key), _bits(ev.row)))
    return out


def _bits(values) -> tuple:
    return tuple(
        ("f", struct.pack("<d", v)) if isinstance(v, float) else (type(v).__name__, v)
        for v in values or ()
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_hook_capture_logs_the_same_events_as_trigger_capture(tmp_path, pipeline_for, seed):
    sides = {}
    for capture in ("triggers", "hooks"):
        root = tmp_path / capture
        make_db(root / "bot.db", SCHEMA)
        cfg = load_config(_config(root, capture))
        p = pipeline_for(cfg)
        raw = apsw.Connection(str(root / "bot.db"))
        conn = PooledConnection(raw, HookCapture(raw, "bot")) if capture == "hooks" else raw
        sides[capture] = (cfg, p, conn)
    runs = {c: _run(conn, _workload(seed)) for c, (_, _, conn) in sides.items()}
    for _ in _workload(seed):  # step by step: each step harvested on both sides
        for capture, (_, p, _) in sides.items():
            next(runs[capture])
            p.harvest()
    for capture, (_cfg, p, _conn) in sides.items():
        p.sync()
        assert p.diffs() == [], capture
    trig, hook = (_events(sides[c][0]) for c in ("triggers", "hooks"))
    assert len(trig) > 200
    assert hook == trig
    assert not any(t == "kv" and str(k[0][1]).startswith("rb") for t, _, k, _ in hook if k)
    assert any(t == "kv" and k[0][1] is None and len(k) == 2 for t, _, k, _ in hook)
    _, p, conn = sides["hooks"]
    h = p.harvesters[0]
    assert h.foreign_rows == 0 and h.hook_rows > 0  # every change came through the pool


def test_writers_outside_the_pool_are_still_captured_and_counted(tmp_path, pipeline_for):
    make_db(tmp_path / "bot.db", SCHEMA)
    p = pipeline_for(load_config(_config(tmp_path, "hooks")))
    raw = apsw.Connection(str(tmp_path / "bot.db"))
    pooled = PooledConnection(raw, HookCapture(raw, "bot"))
    pooled.execute("INSERT INTO kv VALUES ('pool', 1)")
    other = apsw.Connection(str(tmp_path / "bot.db"))  # a bot that never heard of the pool
    other.execute("INSERT INTO kv VALUES ('cron', 2)")
    p.sync()
    assert p.diffs() == []
    h = p.harvesters[0]
    assert (h.hook_rows, h.foreign_rows) == (1, 1)


def test_a_write_around_the_pool_capture_is_refused_not_lost(tmp_path, pipeline_for):
    make_db(tmp_path / "bot.db", SCHEMA)
    p = pipeline_for(load_config(_config(tmp_path, "hooks")))
    raw = apsw.Connection(str(tmp_path / "bot.db"))
    pooled = PooledConnection(raw, HookCapture(raw, "bot"))
    with pytest.raises(apsw.ConstraintError):
        pooled.raw.execute("INSERT INTO kv VALUES ('sneaky', 1)")  # the raw apsw connection
    assert raw.execute("SELECT count(*) FROM kv").fetchone() == (0,)
    with pooled:  # a savepoint through the pool: captured at its release
        pooled.execute("INSERT INTO kv VALUES ('ok', 1)")
    p.sync()
    assert p.diffs() == []


def test_hook_capture_refuses_a_file_with_triggers_of_its_own(tmp_path):
    make_db(
        tmp_path / "bot.db",
        SCHEMA
        + "CREATE TRIGGER stamp AFTER INSERT ON kv BEGIN INSERT INTO log VALUES ('kv', 0); END;",
    )
    with pytest.raises(PlanError, match=r"source 'bot' has triggers of its own \(stamp\)"):
        resolve_plan(load_config(_config(tmp_path, "hooks")))


WRITER = textwrap.dedent(
    """
    import sys, apsw
    from cdc.capture.hooks import HookCapture
    from cdc.pool.pooled import PooledConnection
    raw = apsw.Connection(sys.argv[1])
    raw.set_busy_timeout(5000)
    conn = PooledConnection(raw, HookCapture(raw, "bot"))
    i = int(sys.argv[2])
    while True:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO kv VALUES (?, ?)", (f"w{i}", i))
        conn.execute("UPDATE acct SET bal = ? WHERE id = 1", (float(i),))
        conn.execute("COMMIT")
        print(i, flush=True)  # COMMIT returned: this transaction must reach the target
        i += 1
    """
)


def test_a_writer_killed_at_any_instant_loses_nothing_it_committed(tmp_path, pipeline_for):
    make_db(tmp_path / "bot.db", SCHEMA + "INSERT INTO acct(handle) VALUES ('a');")
    p = pipeline_for(load_config(_config(tmp_path, "hooks")))
    committed: set[int] = set()
    start = 0
    for _ in range(8):
        w = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / "bot.db"), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        want = random.randint(5, 60)
        got = []
        while len(got) < want:
            line = w.stdout.readline()
            assert line, f"the writer exited early ({w.poll()})"
            got.append(int(line))
        w.send_signal(signal.SIGKILL)  # mid-transaction or between: wherever it is
        w.wait()
        w.stdout.close()
        committed.update(got)
        start = got[-1] + 1000
        p.harvest()
    p.sync()
    assert p.diffs() == []
    tgt = apsw.Connection(str(tmp_path / "out" / "core.db"))
    keys = {int(k[1:]) for (k,) in tgt.execute("SELECT k FROM kv")}
    assert committed <= keys  # everything the writer saw committed arrived
    src = apsw.Connection(str(tmp_path / "bot.db"))
    assert keys == {int(k[1:]) for (k,) in src.execute("SELECT k FROM kv")}
    assert p.harvesters[0].foreign_rows == 0


POOL_BOT = textwrap.dedent(
    """
    import sys, time
    from cdc import pool
    pool.configure(sys.argv[1])
    n = int(sys.argv[2])
    for i in range(n):
        with pool.connection("bot") as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO kv VALUES (?, ?)", (f"{sys.argv[3]}{i}", i * 0.5))
            conn.execute("UPDATE acct SET bal = ? WHERE id = 1", (float(i),))
            conn.execute("COMMIT")
        if i % 50 == 0:
            with pool.connection("bot") as conn:  # autocommit, REPLACE through the UNIQUE
                conn.execute("INSERT OR REPLACE INTO acct(handle, bal) VALUES ('a', ?)", (-0.0,))
    pool.close_all()
    """
)


def test_pool_writers_and_a_foreign_writer_under_a_daemon_killed_midway(tmp_path, daemons):
    """Real processes: two bots through `cdc.pool` (hooks), one bot that never heard of it,
    the daemon SIGKILLed while they write; the targets end equal, and `cdc status` tells the
    two kinds of writers apart."""
    make_db(tmp_path / "bot.db", SCHEMA + "INSERT INTO acct(handle) VALUES ('a');")
    cfg_path = _config(tmp_path, "hooks")
    with open(cfg_path, "a") as f:
        f.write(
            "[daemon]\npoll_interval = 0.05\ntrim_interval = 0.2\n[verify]\ncontinuous = false\n"
        )
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    d = daemons(cfg_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bots = [
        subprocess.Popen([sys.executable, "-c", POOL_BOT, str(cfg_path), "300", tag], env=env)
        for tag in ("p", "q")
    ]
    other = sqlite3.connect(tmp_path / "bot.db", isolation_level=None, timeout=10)
    for i in range(100):
        other.execute("INSERT INTO kv VALUES (?, ?)", (f"x{i}", i))
        if i == 50:
            d.kill()  # SIGKILL, mid-stream
            d = daemons(cfg_path)
    other.close()
    for b in bots:
        assert b.wait(timeout=120) == 0
    st = d.wait_synced()
    src = st["sources"][0]
    assert src["capture"] == "hooks"
    assert src["foreign_changes"] > 0 and src["hook_changes"] > 0  # since this daemon started
    cfg = load_config(cfg_path)
    assert [x for x in compare_plan(resolve_plan(cfg)) if not x.equal] == []
    tgt = apsw.Connection(cfg.targets["core"])
    assert tgt.execute("SELECT count(*) FROM kv").fetchone() == (700,)


PART_WAY = [
    [("INSERT INTO kv VALUES (?, ?)", [("a", 0)])],
    [  # fails at its 3rd row inside a transaction; the bot skips the error and commits
        ("BEGIN", None),
        ("INSERT INTO kv VALUES (?, ?)", [("m1", 1), ("m2", 2), ("a", 3), ("m4", 4)]),
        ("COMMIT", None),
    ],
    [("INSERT INTO kv VALUES (?, ?)", [("n1", 1), ("n2", 2), ("a", 3)])],  # autocommit
    [  # OR FAIL keeps the rows its statement wrote before the failing one
        ("BEGIN", None),
        ("INSERT OR FAIL INTO kv VALUES ('f1', 1), ('f2', 2), ('a', 3)", None),
        ("COMMIT", None),
    ],
    [("INSERT OR FAIL INTO kv VALUES ('g1', 1), ('a', 3)", None)],  # autocommit
]


def test_rows_written_before_a_failing_row_keep_their_capture(tmp_path, pipeline_for):
    """executemany runs one statement per row and OR FAIL keeps a statement's earlier
    rows: a bot that catches the error and commits commits those rows, so their keys must
    be captured exactly as the triggers capture them."""
    sides = {}
    for capture in ("triggers", "hooks"):
        root = tmp_path / capture
        make_db(root / "bot.db", SCHEMA + "INSERT INTO acct(handle) VALUES ('h1'), ('h2');")
        cfg = load_config(_config(root, capture))
        p = pipeline_for(cfg)
        raw = apsw.Connection(str(root / "bot.db"))
        conn = PooledConnection(raw, HookCapture(raw, "bot")) if capture == "hooks" else raw
        p.sync()  # the initial copy first: every later row comes through capture
        for _ in _run(conn, PART_WAY):
            pass
        assert not raw.in_transaction
        p.sync()
        assert p.diffs() == [], capture
        sides[capture] = cfg
    trig, hook = (_events(sides[c]) for c in ("triggers", "hooks"))
    kept = {k[0][1] for t, _, k, _ in trig if t == "kv"}
    assert {"m1", "m2", "n1", "n2", "f1", "f2", "g1"} <= kept
    assert hook == trig
