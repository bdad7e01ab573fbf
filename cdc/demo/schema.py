"""The demo's legacy layout: which files exist, their journal mode and their DDL.

One place for it because two writers need the same schema: the generator creates the files
and the bots re-run the same `CREATE TABLE IF NOT EXISTS` at start-up, as every module of the
real system did. The shapes are modelled on the real bot system's files (see the corpus
README): AUTOINCREMENT keys, TEXT keys, a composite key, a WITHOUT ROWID table, a table with no
declared key, a `CHECK (id = 1)` single-row table, extra UNIQUE constraints, CURRENT_TIMESTAMP
defaults, REAL money next to INTEGER lamports, JSON in TEXT, BLOBs, an awkwardly quoted table
name, and table names (`trades`, `users`, `memories`) and index names that collide across files.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

Row = tuple[object, ...]

ODD_TABLE = 'odd "name" table'
"""A table name that needs quoting everywhere (spaces and embedded double quotes)."""


@dataclass(frozen=True)
class FileSpec:
    """One legacy database: where it lives under `legacy/`, how it journals, what it holds."""

    source: str
    relpath: str
    journal: str
    ddl: tuple[str, ...]


def quote(name: str) -> str:
    """SQL identifier quoting; the demo's odd table name makes it necessary, not cosmetic."""
    return '"' + name.replace('"', '""') + '"'


def insert_rows(conn: sqlite3.Connection, table: str, cols: str, rows: list[Row]) -> None:
    """Bulk insert for the generator; `cols` is a ready SQL column list."""
    marks = ", ".join("?" * len(rows[0]))
    conn.executemany(f"INSERT INTO {quote(table)} ({cols}) VALUES ({marks})", rows)


TRADING = FileSpec(
    "trading",
    "data/trading.db",
    "wal",
    (
        """CREATE TABLE IF NOT EXISTS positions (
    id TEXT PRIMARY KEY,
    symbol TEXT NOT NULL,
    token_mint TEXT NOT NULL,
    entry_price REAL NOT NULL,
    current_price REAL,
    entry_amount_sol REAL NOT NULL,
    entry_lamports INTEGER NOT NULL,
    pnl_pct REAL,
    status TEXT DEFAULT 'open',
    meta_json TEXT,
    opened_at TEXT DEFAULT CURRENT_TIMESTAMP
)""",
        """CREATE TABLE IF NOT EXISTS trades (
    id TEXT PRIMARY KEY,
    symbol TEXT NOT NULL,
    token_mint TEXT NOT NULL,
    side TEXT NOT NULL,
    amount_sol REAL NOT NULL,
    amount_tokens REAL NOT NULL,
    price REAL NOT NULL,
    timestamp TEXT NOT NULL,
    tx_signature TEXT UNIQUE,
    position_id TEXT,
    user_id INTEGER DEFAULT 0
)""",
        """CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_ref TEXT UNIQUE NOT NULL,
    order_json TEXT NOT NULL,
    amount_lamports INTEGER NOT NULL,
    created_at TEXT DEFAULT CURRENT_TIMESTAMP
)""",
        """CREATE TABLE IF NOT EXISTS scorecard (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    total_trades INTEGER DEFAULT 0,
    winning_trades INTEGER DEFAULT 0,
    total_pnl_sol REAL DEFAULT 0,
    largest_win_sol REAL DEFAULT 0,
    win_rate REAL DEFAULT 0,
    last_updated TEXT DEFAULT ''
)""",
        """CREATE TABLE IF NOT EXISTS daily_stats (
    date TEXT PRIMARY KEY,
    trades_opened INTEGER DEFAULT 0,
    trades_closed INTEGER DEFAULT 0,
    total_pnl_sol REAL DEFAULT 0,
    win_rate REAL DEFAULT 0
)""",
        """CREATE TABLE IF NOT EXISTS test (
    id INTEGER PRIMARY KEY,
    note TEXT
)""",
        "CREATE INDEX IF NOT EXISTS idx_status ON positions(status)",
    ),
)

BUY_TRACKER = FileSpec(
    "buy_tracker",
    "bots/buy_tracker/trades.db",
    "delete",
    (
        """CREATE TABLE IF NOT EXISTS trades (
    id TEXT PRIMARY KEY,
    token_symbol TEXT NOT NULL,
    token_mint TEXT NOT NULL,
    buyer_wallet TEXT NOT NULL,
    amount_lamports INTEGER NOT NULL,
    price_usd REAL,
    tx_signature TEXT UNIQUE,
    detected_at TEXT DEFAULT CURRENT_TIMESTAMP
)""",
        """CREATE TABLE IF NOT EXISTS tracked_tokens (
    mint TEXT PRIMARY KEY,
    symbol TEXT NOT NULL,
    min_buy_lamports INTEGER NOT NULL DEFAULT 0,
    last_price_usd REAL,
    added_at TEXT DEFAULT CURRENT_TIMESTAMP
) WITHOUT ROWID""",
    ),
)

TELEGRAM = FileSpec(
    "telegram",
    "data/telegram_memory.db",
    "delete",
    (
        """CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER,
    username TEXT,
    role TEXT,
    content TEXT,
    timestamp TEXT,
    chat_id INTEGER
)""",
        """CREATE TABLE IF NOT EXISTS users (
    user_id INTEGER PRIMARY KEY,
    username TEXT UNIQUE,
    first_name TEXT,
    language TEXT,
    message_count INTEGER DEFAULT 0,
    prefs_json TEXT,
    last_seen TEXT DEFAULT CURRENT_TIMESTAMP
)""",
        """CREATE TABLE IF NOT EXISTS memories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER,
    key TEXT,
    value TEXT,
    created_at TEXT,
    updated_at TEXT,
    UNIQUE(user_id, key)
)""",
        "CREATE INDEX IF NOT EXISTS idx_messages_user_id ON messages(user_id)",
    ),
)

X_MEMORY = FileSpec(
    "x_memory",
    "data/x_memory.db",
    "wal",
    (
        """CREATE TABLE IF NOT EXISTS tweets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tweet_id TEXT UNIQUE,
    content TEXT,
    category TEXT,
    cashtags TEXT,
    posted_at TEXT,
    engagement_likes INTEGER DEFAULT 0
)""",
        """CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    handle TEXT UNIQUE,
    user_id TEXT,
    first_seen TEXT DEFAULT CURRENT_TIMESTAMP,
    interaction_count INTEGER DEFAULT 0,
    sentiment TEXT DEFAULT 'neutral',
    notes TEXT
)""",
        """CREATE TABLE IF NOT EXISTS memories (
    id TEXT PRIMARY KEY,
    content TEXT NOT NULL,
    content_hash TEXT UNIQUE NOT NULL,
    memory_type TEXT NOT NULL,
    priority INTEGER NOT NULL,
    tags TEXT,
    embedding BLOB,
    created_at TEXT DEFAULT CURRENT_TIMESTAMP
)""",
    ),
)

LLM_COSTS = FileSpec(
    "llm_costs",
    "data/llm_costs.db",
    "delete",
    (
        """CREATE TABLE IF NOT EXISTS llm_usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_ms REAL,
    success INTEGER NOT NULL,
    error TEXT,
    metadata TEXT,
    created_at TEXT DEFAULT CURRENT_TIMESTAMP
)""",
        """CREATE TABLE IF NOT EXISTS llm_daily_stats (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    date TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    total_requests INTEGER NOT NULL,
    total_cost_usd REAL NOT NULL,
    avg_latency_ms REAL,
    UNIQUE(date, provider, model)
)""",
        "CREATE INDEX IF NOT EXISTS idx_timestamp ON llm_usage(timestamp)",
    ),
)

METRICS = FileSpec(
    "metrics",
    "data/metrics.db",
    "delete",
    (
        """CREATE TABLE IF NOT EXISTS metrics_1m (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    component TEXT NOT NULL,
    total_requests INTEGER,
    failed_requests INTEGER,
    error_rate REAL,
    latency_p50 REAL,
    latency_p99 REAL,
    UNIQUE(timestamp, component)
)""",
        """CREATE TABLE IF NOT EXISTS alert_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    component TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    threshold REAL,
    severity TEXT,
    resolved_at TEXT
)""",
        """CREATE TABLE IF NOT EXISTS component_correlations (
    timestamp TEXT NOT NULL,
    component TEXT NOT NULL,
    correlation REAL NOT NULL,
    sample_size INTEGER NOT NULL
)""",
        f"""CREATE TABLE IF NOT EXISTS {quote(ODD_TABLE)} (
    id INTEGER PRIMARY KEY,
    "select" TEXT,
    "from" REAL,
    raw
)""",
        "CREATE INDEX IF NOT EXISTS idx_timestamp ON metrics_1m(timestamp)",
    ),
)

RATE_LIMITER = FileSpec(
    "rate_limiter",
    "data/rate_limiter.db",
    "delete",
    (
        """CREATE TABLE IF NOT EXISTS rate_configs (
    name TEXT PRIMARY KEY,
    requests_per_second REAL NOT NULL,
    burst_size INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    enabled INTEGER DEFAULT 1,
    metadata TEXT
)""",
        """CREATE TABLE IF NOT EXISTS request_log (
    request_id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    wait_time_ms REAL NOT NULL,
    limit_name TEXT
)""",
        """CREATE TABLE IF NOT EXISTS limit_stats (
    name TEXT NOT NULL,
    date TEXT NOT NULL,
    total_requests INTEGER DEFAULT 0,
    limited_requests INTEGER DEFAULT 0,
    avg_wait_time_ms REAL DEFAULT 0,
    PRIMARY KEY (name, date)
)""",
    ),
)

FILE_CACHE = FileSpec(
    "file_cache",
    "data/cache/file_cache.db",
    "delete",
    (
        """CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    namespace TEXT DEFAULT 'default',
    tags TEXT
)""",
        "CREATE INDEX IF NOT EXISTS idx_namespace ON cache_entries(namespace)",
    ),
)

FILES: tuple[FileSpec, ...] = (
    TRADING,
    BUY_TRACKER,
    TELEGRAM,
    X_MEMORY,
    LLM_COSTS,
    METRICS,
    RATE_LIMITER,
    FILE_CACHE,
)
BY_SOURCE: dict[str, FileSpec] = {f.source: f for f in FILES}
