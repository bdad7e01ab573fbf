"""The jarvis corpus in a mixed plan (issue 19): `core` on PostgreSQL, `analytics` and
`cache` SQLite files, and bots writing the legacy files as the corpus README says the real
ones did (a fresh connection per operation, the driver's default 5 s timeout and no
`busy_timeout`, `INSERT OR REPLACE` upserts, whole-table saves, several writers at once).
Used by tests/postgres/test_pg_corpus.py."""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import apsw

from cdc import exact_text
from cdc.inventory import is_strict
from cdc.planning.plan import Plan
from cdc.postgres.types import from_pg
from cdc.sqlident import q
from tests.support.corpus import DAEMON, config_to_toml, plan_to_config

PG_TEXT = {("jarvis", "memory_entries"): {"imported_at": "text"}}
"""The `postgres_types` rules of the core stage: the TIMESTAMP columns holding TEXT."""


def mixed_config(
    plan_json: dict,
    legacy: Path,
    out: Path,
    targets: dict[str, str],
    pg_types: dict[tuple[str, str], dict[str, str]] | None = None,
    name: str = "cdc.toml",
) -> Path:
    """The operator's plan resolved (`tests.support.corpus.RESOLUTIONS`), with the targets
    `targets` names replaced (a PostgreSQL URL or a file) and `pg_types` as the
    `postgres_types` of the rules of those (source, table); written to `out/name`."""
    out.mkdir(parents=True, exist_ok=True)
    data = plan_to_config(plan_json, legacy, out, resolve=True)
    data["targets"].update(targets)
    data["daemon"] = dict(DAEMON)
    data["verify"] = {"rows_per_second": 0, "cycle_pause": 1}
    for rule in data["rules"]:
        types = (pg_types or {}).get((rule["source"], rule["table"]))
        if types:
            rule["postgres_types"] = dict(types)
    path = out / name
    path.write_text(config_to_toml(data), encoding="utf-8")
    return path


# -- the legacy side, as the bots use it ----------------------------------------------------


def write(path: Path, fn: Callable[[sqlite3.Connection], object]) -> object:
    """One bot operation: a fresh connection (default 5 s timeout), one transaction."""
    with contextlib.closing(sqlite3.connect(path)) as c, c:
        return fn(c)


def sql(path: Path, stmt: str, args: tuple | list = (), many: bool = False) -> None:
    write(path, lambda c: c.executemany(stmt, args) if many else c.execute(stmt, args))


def read(path: Path, stmt: str, args: tuple = ()) -> list[tuple]:
    """Rows of a legacy file, read-only (a fenced file is still readable)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as c:
        return c.execute(stmt, args).fetchall()


def _treasury(legacy: Path, rnd: int) -> int:
    """jarvis.db (WAL, core): the treasury's whole-table save of `positions` (delete every
    row, insert them all again, some edited, two new), users upserted by id, memory entries
    whose TIMESTAMP column takes its DEFAULT CURRENT_TIMESTAMP (TEXT)."""
    db = legacy / "data/jarvis.db"

    def save(c: sqlite3.Connection) -> None:
        cur = c.execute("SELECT * FROM positions ORDER BY id")
        cols = [d[0] for d in cur.description]
        rows = [list(r) for r in cur.fetchall()]
        for r in rows[rnd::9]:
            r[cols.index("pnl_sol")] = (r[cols.index("pnl_sol")] or 0.0) * 1.1 + 1e-12
            r[cols.index("status")] = "closed"
        for i in range(2):
            new = dict.fromkeys(cols)
            new.update(id=f"pos-{rnd}-{i}", symbol="BONK", token_mint=f"mint{i}")
            new.update(entry_price=1e-5, entry_amount_sol=0.5, entry_amount_tokens=5e4)
            new.update(status="open", opened_at="2026-01-25T00:00:00", user_id=i)
            rows.append([new[k] for k in cols])
        c.execute("DELETE FROM positions")
        marks = ", ".join("?" * len(cols))
        c.executemany(f"INSERT INTO positions ({', '.join(cols)}) VALUES ({marks})", rows)
        return len(rows)

    n = write(db, save)
    for i in range(20):
        sql(
            db,
            "INSERT OR REPLACE INTO users(id, name, email) VALUES (?, ?, ?)",
            (1 + i * 7 if i % 2 else 20_000 + rnd * 100 + i, f"u{rnd}-{i}", f"{i}@example.org"),
        )
        n += 1
    for i in range(15):
        sql(
            db,
            "INSERT INTO memory_entries(id, type, content, confidence, timestamp) "
            "VALUES (?, 'note', ?, '0.5', ?)",
            (f"mem-{rnd}-{i}", f"remember {i} 👀", f"2026-01-25T00:00:{i:02d}"),
        )
        n += 1
    return n


def _admin(legacy: Path, rnd: int) -> int:
    """jarvis_admin.db (rollback journal, core): chat messages one connection each, a user
    upserted, a few messages deleted."""
    db = legacy / "data/jarvis_admin.db"
    for i in range(40):
        sql(
            db,
            "INSERT INTO messages(message_id, user_id, username, text, chat_id, timestamp) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (90_000 + rnd * 1000 + i, 42, "b", f"gm {i} ✨", -1001, "2026-01-25T00:00:00"),
        )
    sql(db, "INSERT OR REPLACE INTO users(user_id, username, spam_score) VALUES (42, 'b', 0.75)")
    sql(db, "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT 3)")
    return 44


def _telegram(legacy: Path, rnd: int) -> int:
    """telegram_memory.db (rollback journal, core) and treasury_trades.db: chat turns, user
    memories upserted through UNIQUE(user_id, key) (SQLite's REPLACE deletes the old row
    under another id, with no trigger), trades taking their DEFAULT CURRENT_TIMESTAMP, daily
    snapshots upserted through UNIQUE(date)."""
    tg = legacy / "data/telegram_memory.db"
    for i in range(40):
        sql(
            tg,
            "INSERT INTO messages(user_id, username, role, content, timestamp, chat_id) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (7, "aiko", ("user", "assistant")[i % 2], f"turn {rnd}.{i}", "2026-01-25", -1001),
        )
    pairs = read(tg, "SELECT user_id, key FROM memories ORDER BY id LIMIT 8 OFFSET ?", (rnd * 8,))
    rows = [(u, k, f"replaced {rnd}") for u, k in pairs] + [
        (7, f"k{rnd}-{i}", "v") for i in range(4)
    ]
    sql(
        tg,
        "INSERT OR REPLACE INTO memories(user_id, key, value, updated_at) "
        "VALUES (?, ?, ?, '2026-01-25')",
        rows,
        many=True,
    )
    tt = legacy / "data/treasury_trades.db"
    for i in range(20):
        sql(
            tt,
            "INSERT INTO treasury_trades(timestamp, token_mint, side, amount_in, amount_out, "
            "pnl) VALUES (?, 'mintW', 'BUY', ?, ?, ?)",
            (f"2026-01-25T00:{i:02d}:00", 10**9 + i, 5 * 10**12 + i, -i),
        )
    for i in range(5):
        sql(
            tt,
            "INSERT OR REPLACE INTO daily_snapshots(date, starting_balance, ending_balance) "
            "VALUES (?, ?, ?)",
            (f"2026-02-{i + 1:02d}", 10**10 + rnd, 10**10 + i),
        )
    return 40 + len(rows) + 25


def _others(legacy: Path, rnd: int) -> int:
    """The SQLite stages: metrics (analytics), the research log's DATETIME column taking
    its DEFAULT, ai_memory's upserts through UNIQUE(namespace, key) and the rate
    limiter's composite-key upserts (cache)."""
    mx = legacy / "data/metrics.db"
    for i in range(30):
        sql(
            mx,
            "INSERT OR REPLACE INTO metrics_1m(timestamp, component, total_requests, error_rate) "
            "VALUES (?, 'jupiter', ?, ?)",
            (f"2026-01-25T00:{i:02d}:00.000Z", i + rnd, i / 7),
        )
    rs = legacy / "data/research.db"
    for i in range(10):
        sql(rs, "INSERT INTO research_log(action, details) VALUES ('scan', ?)", (f"r{rnd}.{i}",))
    ai = legacy / "data/ai_memory.db"
    pairs = read(ai, "SELECT namespace, key FROM memories ORDER BY id LIMIT 5 OFFSET ?", (rnd,))
    rows = [(ns, k, "replaced") for ns, k in pairs] + [
        ("new", f"k{rnd}-{i}", "v") for i in range(5)
    ]
    sql(ai, "INSERT OR REPLACE INTO memories(namespace, key, value) VALUES (?, ?, ?)", rows, True)
    rl = legacy / "data/rate_limiter.db"
    keys = read(rl, "SELECT name, date FROM limit_stats ORDER BY name, date LIMIT 5")
    rows = [(*k, rnd + 1, 0.5) for k in keys] + [("new", f"2026-01-2{rnd}", 7, 12.25)]
    sql(
        rl,
        "INSERT OR REPLACE INTO limit_stats(name, date, total_requests, avg_wait_time_ms) "
        "VALUES (?, ?, ?, ?)",
        rows,
        many=True,
    )
    return 30 + 10 + 10 + len(rows)


def bots(legacy: Path, rnd: int, core: bool = True) -> int:
    """One round of the bots, four writers at once; the number of rows written. With
    `core=False` only the SQLite stages' files are written (the core stage is cut over)."""
    writers = (_treasury, _admin, _telegram, _others) if core else (_others,)
    with ThreadPoolExecutor(len(writers)) as pool:
        return sum(pool.map(lambda fn: fn(legacy, rnd), writers))


# -- both sides, value by value ------------------------------------------------------------


def pg_differences(plan: Plan, dsn: str) -> list[str]:
    """Every row of the tables bound for the PostgreSQL target `dsn` that differs between
    the legacy file and the server, by table and key, legacy first: values compared with
    their storage class and bytes, the server's read back through `from_pg` with the
    column's type as the plan gives it (the rule's `postgres_types` included; the shared
    `tests.support.pg_world.differences` maps every column by its affinity). Independent
    of the verifier; no merged table (the corpus plan has none)."""
    import psycopg

    out = []
    with psycopg.connect(dsn) as pg:
        for sp in plan.sources:
            conn = apsw.Connection(sp.path, flags=apsw.SQLITE_OPEN_READONLY)
            conn.set_busy_timeout(10_000)  # a running daemon trims its capture table
            try:
                for m in sp.tables:
                    if plan.targets[m.target] != dsn:
                        continue
                    assert m.tag_column is None, m
                    info = sp.info(m.table)
                    strict = is_strict(info.create_sql)
                    cols = [c.name for c in info.columns]
                    types = [m.pg_type(c.name, c.decl_type, strict) for c in info.columns]
                    key = info.key or ["rowid"]
                    legacy = exact_text.select(
                        conn, [q(k) for k in key] + [q(c) for c in cols], f"FROM {q(m.table)}"
                    )
                    rows = pg.execute(
                        f"SELECT {', '.join(q(k) for k in key + cols)} FROM {q(m.target_table)}"
                    ).fetchall()
                    ktypes = ["bigint" if k == "rowid" else types[cols.index(k)] for k in key]
                    target = [
                        tuple(from_pg(v, ty) for v, ty in zip(r, ktypes + types, strict=True))
                        for r in rows
                    ]
                    a = {_exact(r[: len(key)]): _exact(r) for r in legacy}
                    b = {_exact(r[: len(key)]): _exact(r) for r in target}
                    for k in sorted(set(a) | set(b), key=repr):
                        if a.get(k) != b.get(k):
                            out.append(f"{m.source}.{m.table} {k}: {a.get(k)} | {b.get(k)}")
            finally:
                conn.close()
    return out


def _exact(row) -> tuple:  # noqa: ANN001
    return tuple(
        (type(v).__name__, struct.pack("<d", v) if isinstance(v, float) else v) for v in row
    )
