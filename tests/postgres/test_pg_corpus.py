"""The jarvis corpus in a mixed plan (issue 19, "Done when"): the operator's plan.json
(its four collisions resolved by `tests.support.corpus.RESOLUTIONS`) with the stage `core`
on PostgreSQL and `analytics`, `cache` kept as SQLite files, replicated by a real `cdc run`
under live bots, proven equal by `cdc verify` across both engines, then a full cutover ->
rollback -> cutover of `core` with a switched bot writing into PostgreSQL through
`cdc.pool`.

The stage `core` is the whole of what plan.json sends to core: 18 tables of 4 files
(jarvis.db: positions, trades, treasury_orders, error_logs, memory_entries, users, items;
jarvis_admin.db: users -> admin_users, messages, mod_actions, upgrade_ideas, engagement;
telegram_memory.db: messages, memories, instructions, learnings -> telegram_*;
treasury_trades.db: treasury_trades, daily_snapshots), 9,774 rows. It is small enough
(the snapshot into PostgreSQL takes about a second, a cutover's whole-table proof a few)
that no subset is needed. plan.json has no merged table: its "merge" notes name files
the corpus does not hold (bots/treasury/.positions.db, bots/buy_tracker/.trades.db), and
its four collisions are resolved by renames; the test asserts there is none.

What `cdc check` refuses of the corpus against PostgreSQL (asserted below, so a change in
them is seen):

- the mixed plan (`core` on PostgreSQL), exactly one:
  `core: jarvis.memory_entries.imported_at (TIMESTAMP -> numeric): 226 x TEXT in a
  numeric column` (its times as TEXT). With `postgres_types = { imported_at = "text" }`
  on that rule, `cdc check` passes; nothing else is mapped or excluded for PostgreSQL.
- every stage on PostgreSQL (checked too, as the census of the whole corpus), eight:
  core: jarvis.memory_entries.imported_at (TIMESTAMP) 226 x TEXT;
  analytics: research.knowledge_graph.timestamp (DATETIME) 506 x TEXT,
  research.research_log.timestamp (DATETIME) 513, research.research_notes.timestamp
  (DATETIME) 251, twitter_engagement.tweet_metrics.url_clicks (INTEGER -> bigint) 260 x
  TEXT, twitter_engagement.tweet_metrics.hashtag_clicks (INTEGER -> bigint) 263 x TEXT;
  cache: ai_memory.memories.created_at (TIMESTAMP) 394, ai_memory.memories.accessed_at
  (TIMESTAMP) 404 x TEXT.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from cdc import pool
from tests.conftest import cdc_cmd
from tests.support.pg_corpus import PG_TEXT, bots, mixed_config, pg_differences, read, sql
from tests.support.pg_world import load

CORE_TABLES = 18
ALL_TABLES = 95
MIXED_REFUSALS = [
    "core: jarvis.memory_entries.imported_at (TIMESTAMP -> numeric): "
    "226 x TEXT in a numeric column",
]
ALL_PG_REFUSALS = [
    *MIXED_REFUSALS,
    "analytics: research.knowledge_graph.timestamp (DATETIME -> numeric): "
    "506 x TEXT in a numeric column",
    "analytics: research.research_log.timestamp (DATETIME -> numeric): "
    "513 x TEXT in a numeric column",
    "analytics: research.research_notes.timestamp (DATETIME -> numeric): "
    "251 x TEXT in a numeric column",
    "analytics: twitter_engagement.tweet_metrics.url_clicks (INTEGER -> bigint): "
    "260 x TEXT in a bigint column",
    "analytics: twitter_engagement.tweet_metrics.hashtag_clicks (INTEGER -> bigint): "
    "263 x TEXT in a bigint column",
    "cache: ai_memory.memories.created_at (TIMESTAMP -> numeric): 394 x TEXT in a numeric column",
    "cache: ai_memory.memories.accessed_at (TIMESTAMP -> numeric): 404 x TEXT in a numeric column",
]
UTC_TEXT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # SQLite's CURRENT_TIMESTAMP


def _refusals(cfg: Path) -> list[str]:
    """`cdc check`'s refusals, one per column, without their examples."""
    r = cdc_cmd("check", "-c", str(cfg))
    assert r.returncode == 3, (r.stdout, r.stderr)
    return [
        line[4:].split(", e.g. ")[0] for line in r.stderr.splitlines() if line.startswith("  - ")
    ]


def _ok(*args: str, timeout: float = 120) -> str:
    r = cdc_cmd(*args, timeout=timeout)
    assert r.returncode == 0, (args, r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout


def _verified(cfg: Path, *tables: str) -> list[dict]:
    """`cdc verify --json` (exit 0: every table equal); its tables."""
    out = _ok("verify", "-c", str(cfg), "--json", "--rate", "0", *tables)
    got = json.loads(out)["tables"]
    assert {t["state"] for t in got} == {"equal"}, [t for t in got if t["state"] != "equal"]
    assert all(t["source_rows"] == t["target_rows"] for t in got)
    return got


def _eventually(fn, what: str, timeout: float = 30.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _switched_bot() -> dict:
    """What a bot pointed at PostgreSQL writes through `cdc.pool` (target table names):
    three chat turns into an INTEGER PRIMARY KEY AUTOINCREMENT table without giving the
    id, an error log taking its DEFAULT CURRENT_TIMESTAMP, an update of a user, a delete
    of a message. Returns what it wrote, by key."""
    turns = [
        (7, "aiko", "assistant", f"from postgres {i} 🚀", "2026-02-01", -1001) for i in range(3)
    ]
    with pool.connection("core") as c:
        ids = [
            c.execute(
                "INSERT INTO telegram_messages(user_id, username, role, content, timestamp, "
                "chat_id) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                t,
            ).fetchone()[0]
            for t in turns
        ]
        err_id, err_at = c.execute(
            "INSERT INTO error_logs(error_type, component, message) "
            "VALUES ('timeout', 'pg', 'switched') RETURNING id, created_at"
        ).fetchone()
        (user,) = c.execute("SELECT min(user_id) FROM admin_users").fetchone()
        c.execute(
            "UPDATE admin_users SET spam_score = %s, notes = %s, is_banned = 1 WHERE user_id = %s",
            (0.125, "switched ✓", user),
        )
        (gone,) = c.execute("SELECT max(id) FROM messages WHERE username <> 'b'").fetchone()
        assert c.execute("DELETE FROM messages WHERE id = %s", (gone,)).rowcount == 1
    return {
        "turns": {i: (i, *t) for i, t in zip(ids, turns, strict=True)},
        "error": (err_id, "timeout", "pg", "switched", None, None, 0, err_at),
        "user": user,
        "gone": gone,
    }


def _legacy_holds(legacy: Path, wrote: dict) -> bool:
    tg = legacy / "data/telegram_memory.db"
    ids = sorted(wrote["turns"])
    marks = ", ".join("?" * len(ids))
    turns = read(tg, f"SELECT * FROM messages WHERE id IN ({marks}) ORDER BY id", tuple(ids))
    (err_id, *_), jv = wrote["error"], legacy / "data/jarvis.db"
    err = read(jv, "SELECT * FROM error_logs WHERE id = ?", (err_id,))
    adm = legacy / "data/jarvis_admin.db"
    user = read(
        adm, "SELECT spam_score, notes, is_banned FROM users WHERE user_id = ?", (wrote["user"],)
    )
    gone = read(adm, "SELECT id FROM messages WHERE id = ?", (wrote["gone"],))
    return (
        turns == [wrote["turns"][i] for i in ids]
        and err == [wrote["error"]]
        and user == [(0.125, "switched ✓", 1)]
        and gone == []
    )


def test_corpus_mixed_plan_cutover_rollback_cutover(
    plan_json: dict, legacy: Path, tmp_path: Path, pg, daemons
) -> None:
    started = time.monotonic()
    out = tmp_path / "out"
    base = pg.rsplit("/", 1)[0]
    # The census: the whole corpus against PostgreSQL, then the mixed plan without and with
    # the TEXT rule. `cdc check` only reads (the other two databases need not exist).
    every = {t: f"{base}/unused_{t}" for t in ("analytics", "cache")} | {"core": pg}
    assert _refusals(mixed_config(plan_json, legacy, out, every, name="all.toml")) == (
        ALL_PG_REFUSALS
    )
    assert _refusals(mixed_config(plan_json, legacy, out, {"core": pg}, name="bare.toml")) == (
        MIXED_REFUSALS
    )
    cfg = mixed_config(plan_json, legacy, out, {"core": pg}, PG_TEXT)
    assert _ok("check", "-c", str(cfg)).strip() == "ok: 29 sources, 95 tables mapped, 11 excluded"
    conf, plan = load(cfg)
    assert conf.targets["core"] == pg and not conf.targets["analytics"].startswith("postgres")
    core = [m for s in plan.sources for m in s.tables if m.target == "core"]
    assert len(core) == CORE_TABLES and not [m for m in core if m.tag_column]  # nothing merged

    assert "installed: 95 tables in 26 databases" in _ok("install", "-c", str(cfg))
    d = daemons(cfg)
    d.wait_synced(timeout=90)
    written = bots(legacy, 0)
    assert written > 300
    _ok("wait", "--zero-lag", "-c", str(cfg), "--timeout", "60")
    tables = _verified(cfg)
    assert len(tables) == ALL_TABLES
    assert sum(t["target"] == "core" for t in tables) == CORE_TABLES
    assert pg_differences(plan, pg) == []  # the PostgreSQL side, value by value
    tg = legacy / "data/telegram_memory.db"
    (top,) = read(tg, "SELECT seq FROM sqlite_sequence WHERE name = 'messages'")[0]
    assert top >= 3040

    _ok("cutover", "core", "-c", str(cfg), timeout=180)
    with pytest.raises(sqlite3.IntegrityError, match="sqlite-cdc:.*moved to"):
        sql(tg, "INSERT INTO messages(content) VALUES ('stale')")  # a bot not switched yet
    pool.configure(cfg)
    try:
        wrote = _switched_bot()
    finally:
        pool.close_all()
    assert min(wrote["turns"]) > top  # no id a legacy row had is handed out again
    assert UTC_TEXT.fullmatch(wrote["error"][-1]), wrote["error"]
    bots(legacy, 1, core=False)  # the SQLite stages go on meanwhile
    _eventually(lambda: _legacy_holds(legacy, wrote), "the switched bot's rows in legacy")

    _ok("rollback", "core", "-c", str(cfg), timeout=180)
    assert _legacy_holds(legacy, wrote)  # the switched bot's rows, exactly, by key
    assert pg_differences(plan, pg) == []  # and every other row of the stage
    sql(tg, "INSERT INTO messages(content) VALUES ('back')")  # the legacy file is live again
    (back,) = read(tg, "SELECT id FROM messages WHERE content = 'back'")[0]
    assert back > max(wrote["turns"])  # the target's ids were carried back
    bots(legacy, 2)
    _ok("wait", "--zero-lag", "-c", str(cfg), "--timeout", "60")
    assert pg_differences(plan, pg) == []

    _ok("cutover", "core", "-c", str(cfg), timeout=180)
    sqlite_side = _verified(cfg, "analytics.*", "cache.*")
    assert len(sqlite_side) == ALL_TABLES - CORE_TABLES
    assert {t["target"] for t in sqlite_side} == {"analytics", "cache"}
    assert d.kill(signal.SIGTERM) == 0, d.output()
    text = d.log_path.read_text(errors="replace")
    assert "Traceback" not in text and "ERROR" not in text, text[-4000:]
    print(f"\ncorpus mixed plan: {written} bot rows per round, {time.monotonic() - started:.1f}s")
