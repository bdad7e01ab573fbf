"""The service-side bots: Telegram, metrics, file cache and LLM cost logger.

Each op models a write pattern a replicator has to get right: `INSERT OR REPLACE` on a non-key
UNIQUE (the row changes id), `ON CONFLICT DO UPDATE`, bulk inserts in one transaction, writes
addressed by rowid to a table with no declared key, a table whose name needs quoting, REPLACE of
NUL-laden BLOBs under unicode TEXT keys, and a table created at start-up by a newer version.
"""

from __future__ import annotations

import time

from cdc.demo import schema
from cdc.demo import values as v
from cdc.demo.botlib import Bot
from cdc.demo.schema import ODD_TABLE, quote


class TelegramBot(Bot):
    """The Telegram bot on the rollback-journal file `data/telegram_memory.db`."""

    kind = "telegram"
    spec = schema.TELEGRAM
    OPS = (
        ("insert_message", 6),
        ("touch_user", 3),
        ("upsert_user", 1),
        ("remember", 2),
        ("prune_messages", 1),
    )

    def drift(self) -> None:
        self.add_column("users", "is_premium", "INTEGER DEFAULT 0")

    def insert_message(self) -> None:
        r = self.rng
        with self.tx() as c:
            c.execute(
                "INSERT INTO messages (user_id, username, role, content, timestamp, chat_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    self.pick_key(c, "users", "user_id"),
                    v.maybe(r, f"user_{r.randrange(300)}"),
                    r.choice(("user", "assistant")),
                    v.text(r),
                    v.now_iso(),
                    r.choice((-1001234567890, 0, r.randrange(10**10))),
                ),
            )

    def touch_user(self) -> None:
        r = self.rng
        with self.tx() as c:
            c.execute(
                "UPDATE users SET message_count = message_count + 1,"
                " last_seen = CURRENT_TIMESTAMP, first_name = ? WHERE user_id = ?",
                (v.maybe(r, v.text(r)[:40]), self.pick_key(c, "users", "user_id")),
            )

    def upsert_user(self) -> None:
        """New or returning user; a reused username clashes on UNIQUE and REPLACE deletes
        the other user's row."""
        r = self.rng
        with self.tx() as c:
            name = self.pick_key(c, "users", "username") if r.random() < 0.2 else None
            c.execute(
                "INSERT OR REPLACE INTO users (user_id, username, first_name, language,"
                " prefs_json) VALUES (?, ?, ?, ?, ?)",
                (
                    r.randrange(10_000, 7_000_000_000),
                    name or f"new_{r.getrandbits(32):x}",
                    v.text(r)[:40],
                    r.choice(("en", "ar", "he", None)),
                    v.maybe(r, v.json_text(r)),
                ),
            )

    def remember(self) -> None:
        """INSERT OR REPLACE keyed by UNIQUE(user_id, key): the row gets a new id each time."""
        r = self.rng
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO memories (user_id, key, value, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    self.pick_key(c, "users", "user_id"),
                    r.choice(("wallet", "risk", "语言")),
                    v.text(r),
                    v.now_iso(),
                    v.now_iso(),
                ),
            )

    def prune_messages(self) -> None:
        with self.tx() as c:
            c.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT 3)"
            )


class MetricsBot(Bot):
    """The metrics collector: bulk inserts in one transaction, pruning of old rows."""

    kind = "metrics"
    spec = schema.METRICS
    OPS = (
        ("flush_minutes", 3),
        ("prune_old", 1),
        ("record_correlations", 2),
        ("raise_alert", 1),
        ("touch_odd_table", 1),
    )

    def drift(self) -> None:
        self.add_column("metrics_1m", "host", "TEXT")

    def flush_minutes(self) -> None:
        """Up to 48 rows in one transaction; a repeated (minute, component) REPLACEs."""
        r = self.rng
        minute = int(time.time() // 60)
        rows = [
            (
                v.minute_iso(minute - k),
                comp,
                r.randint(0, 9999),
                r.randint(0, 99),
                v.real(r, 0, 1),
                v.real(r, 1, 500),
                v.maybe(r, v.real(r, 100, 9000)),
            )
            for k in range(r.randint(1, 8))
            for comp in v.COMPONENTS
        ]
        with self.tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO metrics_1m (timestamp, component, total_requests,"
                " failed_requests, error_rate, latency_p50, latency_p99)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def prune_old(self) -> None:
        with self.tx() as c:
            c.execute(
                "DELETE FROM metrics_1m WHERE id IN (SELECT id FROM metrics_1m ORDER BY id LIMIT 12)"
            )
            c.execute(
                "DELETE FROM component_correlations WHERE rowid IN"
                " (SELECT rowid FROM component_correlations ORDER BY rowid LIMIT 3)"
            )

    def record_correlations(self) -> None:
        """Writes to the table with no declared key: bulk insert (with an exact duplicate)
        and an UPDATE addressed by rowid."""
        r = self.rng
        rows = [
            (v.now_iso(), r.choice(v.COMPONENTS), v.real(r, -1, 1), r.randint(1, 5000))
            for _ in range(r.randint(1, 6))
        ]
        with self.tx() as c:
            c.executemany(
                "INSERT INTO component_correlations (timestamp, component, correlation,"
                " sample_size) VALUES (?, ?, ?, ?)",
                rows + rows[:1],
            )
            c.execute(
                "UPDATE component_correlations SET correlation = ? WHERE rowid ="
                " (SELECT rowid FROM component_correlations ORDER BY random() LIMIT 1)",
                (v.real(r, -1, 1, edge=0.3),),
            )

    def raise_alert(self) -> None:
        r = self.rng
        with self.tx() as c:
            c.execute(
                "INSERT INTO alert_history (timestamp, component, metric, value, threshold,"
                " severity) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    v.now_iso(),
                    r.choice(v.COMPONENTS),
                    "error_rate",
                    v.real(r, 0, 1, edge=0.3),
                    0.05,
                    r.choice(("warning", "critical")),
                ),
            )
            c.execute(
                "UPDATE alert_history SET resolved_at = ? WHERE id = ?",
                (v.now_iso(), self.pick_key(c, "alert_history", "id")),
            )

    def touch_odd_table(self) -> None:
        """The table whose name and columns (`select`, `from`) need quoting everywhere."""
        r = self.rng
        t = quote(ODD_TABLE)
        with self.tx() as c:
            c.execute(
                f'INSERT OR REPLACE INTO {t} (id, "select", "from", raw) VALUES (?, ?, ?, ?)',
                (
                    r.randint(1, 260),
                    v.text(r, "SELECT "),
                    v.real(r, edge=0.3),
                    r.choice((None, -0.0, 1e-300, v.blob(r, 40), "نص 🚀", 2**63 - 1)),
                ),
            )
            c.execute(
                f'UPDATE {t} SET "select" = ? WHERE id = ?',
                (v.text(r), self.pick_key(c, ODD_TABLE, "id")),
            )


class CacheBot(Bot):
    """The file cache: REPLACE upserts of BLOB values under TEXT keys, and evictions."""

    kind = "cache"
    spec = schema.FILE_CACHE
    OPS = (("put", 6), ("evict_expired", 1), ("delete_key", 1), ("touch", 1))
    KEYS = tuple(f"{ns}:{i}" for ns in ("prices", "tweets", "llm", "λ-ns🚀") for i in range(40))

    def drift(self) -> None:
        self.add_column("cache_entries", "hits", "INTEGER DEFAULT 0")

    def put(self) -> None:
        r = self.rng
        now = time.time()
        with self.tx() as c:
            c.execute(
                "REPLACE INTO cache_entries (key, value, created_at, expires_at, namespace,"
                " tags) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    r.choice(self.KEYS),
                    v.blob(r),
                    now,
                    now + r.choice((1.0, 60.0, 0.1 + 0.2)),
                    v.maybe(r, r.choice(("default", "prices", "λ-ns"))),
                    v.maybe(r, v.json_text(r)),
                ),
            )

    def evict_expired(self) -> None:
        with self.tx() as c:
            c.execute(
                "DELETE FROM cache_entries WHERE key IN (SELECT key FROM cache_entries"
                " WHERE expires_at < ? ORDER BY expires_at LIMIT 15)",
                (time.time(),),
            )

    def delete_key(self) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM cache_entries WHERE key = ?", (self.rng.choice(self.KEYS),))

    def touch(self) -> None:
        with self.tx() as c:
            key = self.pick_key(c, "cache_entries", "key")
            c.execute(
                "UPDATE cache_entries SET expires_at = ? WHERE key = ?", (time.time() + 30, key)
            )
            if self.has_column(c, "cache_entries", "hits"):
                c.execute("UPDATE cache_entries SET hits = hits + 1 WHERE key = ?", (key,))


class LlmCostBot(Bot):
    """The LLM cost logger: an insert per call and an ON CONFLICT DO UPDATE daily roll-up."""

    kind = "llm_costs"
    spec = schema.LLM_COSTS
    OPS = (("log_call", 6), ("roll_up", 2), ("prune_usage", 1), ("budget_alert", 1))
    BUDGET_DDL = """CREATE TABLE IF NOT EXISTS budget_alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_name TEXT NOT NULL,
    threshold_usd REAL NOT NULL,
    actual_usd REAL NOT NULL,
    period TEXT NOT NULL,
    triggered_at TEXT DEFAULT CURRENT_TIMESTAMP
)"""

    def drift(self) -> None:
        """A newer version adds a column and a whole table the generator never created."""
        self.add_column("llm_usage", "cached_tokens", "INTEGER")
        with self.tx() as c:
            c.execute(self.BUDGET_DDL)

    def log_call(self) -> None:
        r = self.rng
        provider, model = r.choice(v.PROVIDERS)
        ok = r.random() > 0.1
        with self.tx() as c:
            c.execute(
                "INSERT INTO llm_usage (timestamp, provider, model, input_tokens, output_tokens,"
                " cost_usd, latency_ms, success, error, metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    v.now_iso(),
                    provider,
                    model,
                    r.randint(0, 8000),
                    r.randint(0, 4000),
                    v.money(r, 0.05),
                    v.maybe(r, v.real(r, 50, 30000, edge=0.2)),
                    int(ok),
                    None if ok else v.text(r, "error: "),
                    v.maybe(r, v.json_text(r), 0.3),
                ),
            )

    def roll_up(self) -> None:
        r = self.rng
        provider, model = r.choice(v.PROVIDERS)
        with self.tx() as c:
            c.execute(
                "INSERT INTO llm_daily_stats (date, provider, model, total_requests,"
                " total_cost_usd, avg_latency_ms) VALUES (?, ?, ?, 1, ?, ?)"
                " ON CONFLICT(date, provider, model) DO UPDATE SET"
                " total_requests = total_requests + 1,"
                " total_cost_usd = total_cost_usd + excluded.total_cost_usd,"
                " avg_latency_ms = excluded.avg_latency_ms",
                (v.now_iso()[:10], provider, model, v.money(r, 0.05), v.real(r, 80, 9000)),
            )

    def prune_usage(self) -> None:
        with self.tx() as c:
            c.execute(
                "DELETE FROM llm_usage WHERE id IN (SELECT id FROM llm_usage ORDER BY id LIMIT 5)"
            )

    def budget_alert(self) -> None:
        """Writes only once the drifted table exists (another process may have made it)."""
        with self.tx() as c:
            exists = c.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'budget_alerts'"
            ).fetchone()
            if exists:
                c.execute(
                    "INSERT INTO budget_alerts (alert_name, threshold_usd, actual_usd, period)"
                    " VALUES (?, ?, ?, ?)",
                    ("daily", 5.0, v.money(self.rng, 10), "day"),
                )
