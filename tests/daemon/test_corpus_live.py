"""The jarvis legacy corpus end to end: its resolved plan installed and replicated live.

The corpus (29 real-schema SQLite files, see its README) lives beside the repo root in
`../shared/corpus/jarvis` and is read-only: every test works on a copy in `tmp_path`.
Its plan's checks are `test_corpus.py`; shared helpers are in `tests/support/corpus.py`.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cdc.daemon.status import collect_status
from cdc.errors import PlanError
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan
from tests.support.corpus import (
    WAIT,
    assert_nothing_orphaned,
    cdc_objects,
    run_cli,
    source_names,
    spawn_daemon,
    write_resolved_config,
)
from verifier.compare import compare_plan
from verifier.continuous import read_verifier_status


def _wait_for(what: str, cond: Callable[[], object], proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"daemon exited ({proc.returncode}) while waiting for {what}:\n"
                + log.read_text(errors="replace")
            )
        last = cond()
        if last is True:
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; last: {last}\n" + log.read_text(errors="replace"))


def _caught_up(cfg, plan: Plan, need_snapshot: bool = True):
    st = collect_status(cfg, plan)
    if st.daemon.state != "running":
        return f"daemon {st.daemon.state}: {st.daemon.error}"
    busy = [
        (s.name, s.snapshot, s.backlog_events, s.last_error)
        for s in st.sources
        if s.tables
        and (
            s.backlog_events
            or s.last_error
            or not s.installed
            or (need_snapshot and s.snapshot != "done")
        )
    ]
    return busy or True


def _write(path: Path, fn: Callable[[sqlite3.Connection], None]) -> None:
    """One bot operation: a fresh connection (default 5 s timeout), one transaction."""
    with contextlib.closing(sqlite3.connect(path)) as c, c:
        fn(c)


def _resave(table: str, key: str, edit: Callable[[list[list]], list[list]]):
    """The treasury writer's save: delete every row, insert them all again (edited)."""

    def fn(c: sqlite3.Connection) -> None:
        cur = c.execute(f"SELECT * FROM {table} ORDER BY {key}")
        cols = [d[0] for d in cur.description]
        rows = edit([list(r) for r in cur.fetchall()])
        c.execute(f"DELETE FROM {table}")
        c.executemany(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows
        )

    return fn


def _sql(path: Path, sql: str, args: tuple | list = (), many: bool = False) -> None:
    _write(path, lambda c: c.executemany(sql, args) if many else c.execute(sql, args))


def _read(path: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as c:
        return c.execute(sql).fetchall()


def _trading(legacy: Path) -> dict[tuple[str, str], int]:
    """jarvis.db (WAL): the treasury's whole-table saves, REAL edits, upserts."""
    db, rnd = legacy / "data/jarvis.db", random.Random(1)

    def positions(rows):
        rows = rows[5:]  # five positions closed and dropped
        for r in rows[::3]:
            r[13] = r[13] * 1.1 + 1e-12 if r[13] is not None else 0.1 + 0.2  # pnl_sol (REAL)
            r[10] = "closed"
        for i in range(3):  # id, symbol, mint, prices/amounts, 4 x order data, status, ...
            rows.append([f"new-pos-{i}", "BONK", f"mint{i}", 1e-5, 0.5, 5e4, *[None] * 4])
            rows[-1] += ["open", *[None] * 4, "2026-01-25T00:00:00", None, None, None, i]
        return rows

    def trades(rows):
        rows = rows[4:]
        for i in range(6):  # id, symbol, mint, side, sol, tokens, price, ts, tx, position, user
            rows.append([f"new-trade-{i}", "WIF", "mintW", "BUY", 0.25 * i, 1000.0 + i, 2.5e-4])
            rows[-1] += ["2026-01-25T00:00:01", None, "new-pos-0", 0]
        return rows

    def orders(rows):
        for r in rows[::7]:
            r[1] = json.dumps({"symbol": "PYTH", "price": rnd.random(), "flags": ["edited"]})
        return rows[10:]

    _write(db, _resave("positions", "id", positions))
    _write(db, _resave("trades", "id", trades))
    _write(db, _resave("positions", "id", lambda rows: rows))  # a save with nothing changed
    _write(db, _resave("treasury_orders", "order_id", orders))
    _sql(
        db,
        "UPDATE scorecard SET total_pnl_sol=?, win_rate=?, largest_loss_sol=?, "
        "total_trades=total_trades+1 WHERE id=1",
        (0.1 + 0.2, 1 / 3, -2.5e-300),
    )
    users = [(1, "renamed", None), (2, "x", "x@example.org"), (10_001, "n", ""), (10_002, "m", "")]
    _sql(db, "INSERT OR REPLACE INTO users(id, name, email) VALUES (?, ?, ?)", users, many=True)
    _sql(db, "INSERT INTO test(id) VALUES (99999)")  # an excluded table
    return {
        ("data/jarvis.db", "positions"): -5 + 3,
        ("data/jarvis.db", "trades"): -4 + 6,
        ("data/jarvis.db", "treasury_orders"): -10,
        ("data/jarvis.db", "users"): 2,
    }


def _admin(legacy: Path) -> dict[tuple[str, str], int]:
    """jarvis_admin.db (rollback journal): updates, an upsert, ALTER ... DEFAULT, deletes."""
    db = legacy / "data/jarvis_admin.db"
    new_user = not _read(db, "SELECT 1 FROM users WHERE user_id = 42")
    _sql(db, "UPDATE users SET spam_score = spam_score + 0.25, is_banned = 1 WHERE user_id % 7 = 0")
    _sql(db, "INSERT OR REPLACE INTO users(user_id, username, spam_score) VALUES (42, 'b', 0.75)")
    # the old rows read the DEFAULT without any trigger firing
    _sql(db, "ALTER TABLE messages ADD COLUMN edited INTEGER DEFAULT 0")
    _sql(db, "UPDATE messages SET edited = 1 WHERE id % 50 = 0")
    msgs = [(90_000 + i, 42, "b", f"gm {i} 👀", -1001) for i in range(10)]
    _sql(
        db,
        "INSERT INTO messages(message_id, user_id, username, text, chat_id) VALUES (?, ?, ?, ?, ?)",
        msgs,
        many=True,
    )
    _sql(db, "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT 7)")
    return {
        ("data/jarvis_admin.db", "users"): int(new_user),
        ("data/jarvis_admin.db", "messages"): 10 - 7,
    }


def _memories(legacy: Path) -> dict[tuple[str, str], int]:
    """REPLACE through a non-key UNIQUE, BLOBs, pickles, app-owned FTS triggers."""
    rnd = random.Random(2)
    ai = legacy / "data/ai_memory.db"  # UNIQUE(namespace, key): the old row goes, no trigger
    pairs = _read(ai, "SELECT namespace, key FROM memories ORDER BY id LIMIT 5")
    rows = [(ns, k, "replaced") for ns, k in pairs] + [("new", f"k{i}", "v") for i in range(3)]
    _sql(ai, "INSERT OR REPLACE INTO memories(namespace, key, value) VALUES (?, ?, ?)", rows, True)

    lt = legacy / "data/memory/long_term.db"
    ids = [r[0] for r in _read(lt, "SELECT id FROM memories ORDER BY id LIMIT 10")]
    _sql(
        lt,
        "UPDATE memories SET embedding = ?, importance_score = importance_score / 3 WHERE id = ?",
        [(rnd.randbytes(64), i) for i in ids],
        many=True,
    )
    blobs = [("b0", b""), ("b1", b"\x00\x01\x00"), ("b2", rnd.randbytes(4096)), ("b3", None)]
    _sql(
        lt,
        "INSERT INTO memories(id, content, content_hash, memory_type, priority, embedding, "
        "created_at, accessed_at, updated_at) VALUES (?, 'c', 'h', 'f', 1, ?, 'a', 'b', 'c')",
        blobs,
        many=True,
    )
    _sql(lt, "DELETE FROM memories WHERE id IN (SELECT id FROM memories ORDER BY id DESC LIMIT 2)")

    fc = legacy / "data/cache/file_cache.db"  # pickled values
    keys = [r[0] for r in _read(fc, "SELECT key FROM cache_entries ORDER BY key LIMIT 5")]
    rows = [(k, pickle.dumps({"v": i, "f": 1 / 7}), 1.0 * i, 2e9) for i, k in enumerate(keys)]
    rows += [(f"new-{i}", pickle.dumps([i, None]), 0.5, 1e9) for i in range(2)]
    _sql(
        fc,
        "INSERT OR REPLACE INTO cache_entries(key, value, created_at, expires_at) "
        "VALUES (?, ?, ?, ?)",
        rows,
        many=True,
    )

    jm = legacy / "data/jarvis_memory.db"  # the app's FTS triggers fire alongside ours
    facts = [("BONK", f"new fact {i}", 0.5 + i / 10) for i in range(3)]
    _sql(jm, "INSERT INTO facts(entity, fact, confidence) VALUES (?, ?, ?)", facts, many=True)
    _sql(jm, "UPDATE facts SET confidence = 0.99 WHERE id IN (2, 3)")
    _sql(jm, "DELETE FROM facts WHERE id = 4")
    _sql(jm, "DELETE FROM reflections WHERE id IN (1, 2)")
    return {
        ("data/ai_memory.db", "memories"): 3,
        ("data/memory/long_term.db", "memories"): 4 - 2,
        ("data/cache/file_cache.db", "cache_entries"): 2,
        ("data/jarvis_memory.db", "facts"): 3 - 1,
        ("data/jarvis_memory.db", "reflections"): -2,
    }


def _services(legacy: Path) -> dict[tuple[str, str], int]:
    """ALTER then writes to the new column, a rowid-only table, composite keys, an excluded file."""
    xm = legacy / "data/jarvis_x_memory.db"  # a bot adds a column at start-up, then writes it
    _sql(xm, "ALTER TABLE interactions ADD COLUMN sentiment REAL")
    _sql(xm, "UPDATE interactions SET sentiment = (id % 10) / 10.0 WHERE id % 3 = 0")
    _sql(
        xm,
        "INSERT INTO interactions(tweet_id, user_handle, interaction_type, sentiment) "
        "VALUES (?, ?, 'reply', ?)",
        [("t1", "@a", -0.5), ("t2", "@b", 0.75)],
        many=True,
    )

    se = legacy / "data/sentiment.db"  # no declared key: identified by rowid
    _sql(se, "DELETE FROM component_correlations WHERE rowid IN (5, 6, 7)")
    _sql(se, "UPDATE component_correlations SET correlation = -correlation WHERE rowid = 8")
    rows = [("2026-01-25T00:00:00", 0.125), ("2026-01-25T00:00:01", -1.0)]
    _sql(se, "INSERT INTO component_correlations VALUES (?, 'grok', ?, 3)", rows, many=True)

    rl = legacy / "data/rate_limiter.db"  # composite key upserts
    rows = [(*r, 1, 0.5) for r in _read(rl, "SELECT name, date FROM limit_stats LIMIT 3")]
    rows.append(("new", "2026-01-25", 7, 12.25))
    _sql(
        rl,
        "INSERT OR REPLACE INTO limit_stats(name, date, total_requests, avg_wait_time_ms) "
        "VALUES (?, ?, ?, ?)",
        rows,
        many=True,
    )

    al = legacy / "data/alerts.db"  # a file excluded as a whole
    _sql(al, "INSERT INTO alerts(id, name, alert_type, symbol) VALUES ('x', 'n', 't', 'S')")
    return {
        ("data/jarvis_x_memory.db", "interactions"): 2,
        ("data/sentiment.db", "component_correlations"): -3 + 2,
        ("data/rate_limiter.db", "limit_stats"): 1,
    }


def _burst(legacy: Path) -> dict[tuple[str, str], int]:
    """Writes modelled on the corpus README, four writers at once (one Python sqlite3 library,
    a fresh connection per operation); returns the row-count change per (file, table)."""
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda fn: fn(legacy), (_trading, _admin, _memories, _services)))
    return {k: v for part in parts for k, v in part.items()}


def _target_count(plan: Plan, source: str, table: str) -> int:
    m = plan.mapping(source, table)
    with contextlib.closing(
        sqlite3.connect(f"file:{plan.targets[m.target]}?mode=ro", uri=True)
    ) as c:
        return c.execute(f'SELECT count(*) FROM "{m.target_table}"').fetchone()[0]


def _target_tables(path: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as c:
        return {
            r[0]
            for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if not r[0].startswith(("sqlite_", "_cdc_"))
        }


def test_resolved_plan_replicates_live_writes(
    plan_json: dict, manifest: dict, legacy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    toml, cfg = write_resolved_config(plan_json, legacy, out)
    plan = resolve_plan(cfg)
    names = source_names(list(plan_json["databases"]))

    r = run_cli("install", toml)
    assert r.returncode == 0, r.stderr
    assert "installed: 95 tables in 26 databases" in r.stdout
    touched = {rel for rel, _ in cdc_objects(legacy)}
    assert len(touched) == 26  # the excluded files get nothing at all
    assert not touched & {"database.db", "data/alerts.db", "data/recycle_test.db"}

    log = tmp_path / "daemon.log"
    proc = spawn_daemon(toml, log)
    try:
        _wait_for("the snapshot", lambda: _caught_up(cfg, plan), proc, log)
        snap = compare_plan(plan)
        assert [d for d in snap if not d.equal] == []
        for d in snap:  # the snapshot is the manifest, table by table
            rel = next(p for p, n in names.items() if n == d.source)
            assert d.target_rows == d.source_rows == manifest[rel][d.table], d

        deltas = _burst(legacy)
        _wait_for("zero backlog", lambda: _caught_up(cfg, plan, need_snapshot=False), proc, log)
        st = run_cli("status", toml, "--json")
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["daemon"]["state"] == "running"
        assert all(s["backlog_events"] == 0 for s in status["sources"]), status["sources"]
        assert status.get("problems", []) == []
        # The product's own verifier, run by an operator while the daemon runs, agrees.
        reports = tmp_path / "validation"
        r = run_cli("verify", toml, "--json", "--report", reports)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr
        verified = json.loads(r.stdout)["tables"]
        assert len(verified) == 95 and {t["state"] for t in verified} == {"equal"}
        assert sum(t["source_rows"] for t in verified) == sum(t["target_rows"] for t in verified)
        assert sorted(p.name for p in reports.iterdir()) == [
            f"validation-{t}.{ext}"
            for t in ("analytics", "cache", "core")
            for ext in ("json", "md")
        ]
        # and the daemon's continuous verifier never raised an alarm
        vs = read_verifier_status(cfg.state_dir)
        assert vs is not None and vs.tables
        assert [t for t in vs.tables if t.state == "diverged"] == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    plan = resolve_plan(cfg)  # the files' shapes after the burst (the ALTER)
    diffs = compare_plan(plan)
    assert len(diffs) == 95
    assert [d for d in diffs if not d.equal] == []
    for (rel, table), delta in deltas.items():
        expected = manifest[rel][table] + delta
        assert _target_count(plan, names[rel], table) == expected, (rel, table)
    assert _target_count(plan, "jarvis_x_memory", "interactions") == 413
    assert _target_count(plan, "memory_long_term", "memories") == 477
    assert_nothing_orphaned(plan, plan_json, legacy)
    # each target holds exactly the mapped tables: nothing excluded leaked in
    for target, path in plan.targets.items():
        mapped = {m.target_table for s in plan.sources for m in s.tables if m.target == target}
        assert _target_tables(path) == mapped, target
    # the new columns arrived, defaults included
    with contextlib.closing(sqlite3.connect(f"file:{plan.targets['core']}?mode=ro", uri=True)) as c:
        assert c.execute("SELECT count(*), sum(edited) FROM messages").fetchone() == (2125, 42)
    with contextlib.closing(
        sqlite3.connect(f"file:{plan.targets['analytics']}?mode=ro", uri=True)
    ) as c:
        assert c.execute("SELECT count(sentiment) FROM x_interactions").fetchone() == (139,)
    text = log.read_text(errors="replace")
    assert "ERROR" not in text and "CRITICAL" not in text and "Traceback" not in text, text
    # a table that appears later in a live file is not orphaned either: the plan stops on it
    _write(legacy / "data/jarvis.db", lambda c: c.execute("CREATE TABLE IF NOT EXISTS cfg(k, v)"))
    with pytest.raises(PlanError, match="table 'cfg' of source 'jarvis' .* is matched by no rule"):
        resolve_plan(cfg)
