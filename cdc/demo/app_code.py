"""The demo's example *application*: one Python module per demo bot, as the real bots wrote
their database code before the consolidation, written into `<demo>/app/`.

What `cdc refs` must find there is what the real code base holds: a path built from
`__file__` (`DATA_DIR / "trading.db"`, behind an `os.getenv` override), one written as a
single literal (`"legacy/bots/buy_tracker/trades.db"`: the only shape `--fix` can rewrite),
a new `sqlite3.connect(DB_PATH, timeout=5.0)` per operation, the bot's own
`CREATE TABLE IF NOT EXISTS` DDL (the FileSpec's text, so it cannot drift from the files)
run with `executescript` at start-up, and reads and writes of its tables: a renamed one
(`users`, `memories`), the merged `trades`, the excluded `trading.test`.

The modules are generated, never imported nor run by the demo; they are valid Python that
ruff accepts with the project's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdc.demo.schema import BY_SOURCE, FileSpec


@dataclass(frozen=True)
class _Bot:
    """One module: what it is called, how it builds its path, what it runs."""

    source: str
    module: str
    title: str
    paths: str  # the lines that end with `DB_PATH = ...`
    functions: str  # reads and writes, each on a fresh connection


_DATA_DIR = 'DATA_DIR = Path(__file__).resolve().parent.parent / "legacy" / "data"\n'

_BOTS = (
    _Bot(
        "trading",
        "trading_bot",
        "Trading bot",
        _DATA_DIR + 'DB_PATH = os.getenv("TRADING_DB", str(DATA_DIR / "trading.db"))\n',
        """
def open_positions() -> list[tuple]:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        return conn.execute(
            "SELECT id, symbol, entry_price, current_price FROM positions WHERE status = ?",
            ("open",),
        ).fetchall()
    finally:
        conn.close()


def record_trade(trade_id: str, symbol: str, mint: str, side: str, sol: float) -> None:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        with conn:
            conn.execute(
                "INSERT INTO trades (id, symbol, token_mint, side, amount_sol, amount_tokens,"
                " price, timestamp) VALUES (?, ?, ?, ?, ?, 0, 0, datetime('now'))",
                (trade_id, symbol, mint, side, sol),
            )
    finally:
        conn.close()


def trades_for(symbol: str) -> list[tuple]:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        return conn.execute(
            "SELECT id, side, amount_sol FROM trades WHERE symbol = ? ORDER BY timestamp, id",
            (symbol,),
        ).fetchall()
    finally:
        conn.close()


def self_test(note: str) -> None:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        with conn:
            conn.execute("INSERT INTO test (note) VALUES (?)", (note,))
    finally:
        conn.close()
""",
    ),
    _Bot(
        "buy_tracker",
        "buy_tracker_bot",
        "Buy tracker bot",
        "ROOT = Path(__file__).resolve().parent.parent\n"
        'DB_PATH = ROOT / "legacy/bots/buy_tracker/trades.db"\n',
        """
def buys_per_token() -> list[tuple]:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        return conn.execute(
            "SELECT token_symbol, count(*) FROM trades GROUP BY token_symbol"
        ).fetchall()
    finally:
        conn.close()


def track(mint: str, symbol: str, min_buy_lamports: int) -> None:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        with conn:
            conn.execute(
                "INSERT OR IGNORE INTO tracked_tokens (mint, symbol, min_buy_lamports)"
                " VALUES (?, ?, ?)",
                (mint, symbol, min_buy_lamports),
            )
    finally:
        conn.close()
""",
    ),
    _Bot(
        "telegram",
        "telegram_bot",
        "Telegram bot",
        _DATA_DIR + 'DB_PATH = os.getenv("TELEGRAM_DB", str(DATA_DIR / "telegram_memory.db"))\n',
        """
def top_users(limit: int = 10) -> list[tuple]:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        return conn.execute(
            "SELECT user_id, username, message_count FROM users"
            " ORDER BY message_count DESC, user_id LIMIT ?",
            (limit,),
        ).fetchall()
    finally:
        conn.close()


def count_message(user_id: int) -> None:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        with conn:
            conn.execute(
                "UPDATE users SET message_count = message_count + 1 WHERE user_id = ?",
                (user_id,),
            )
    finally:
        conn.close()


def remember(user_id: int, key: str, value: str) -> None:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        with conn:
            conn.execute(
                "INSERT OR REPLACE INTO memories (user_id, key, value) VALUES (?, ?, ?)",
                (user_id, key, value),
            )
    finally:
        conn.close()
""",
    ),
    _Bot(
        "x_memory",
        "x_bot",
        "X (Twitter) bot",
        _DATA_DIR + 'DB_PATH = os.getenv("X_MEMORY_DB", str(DATA_DIR / "x_memory.db"))\n',
        """
def memories_per_type() -> list[tuple]:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        return conn.execute(
            "SELECT memory_type, count(*) FROM memories GROUP BY memory_type"
        ).fetchall()
    finally:
        conn.close()


def handle_seen(handle: str) -> None:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        with conn:
            conn.execute(
                "UPDATE users SET interaction_count = interaction_count + 1 WHERE handle = ?",
                (handle,),
            )
    finally:
        conn.close()
""",
    ),
    _Bot(
        "llm_costs",
        "llm_costs",
        "LLM cost tracker",
        _DATA_DIR + 'DB_PATH = str(DATA_DIR / "llm_costs.db")\n',
        """
def usage_per_model() -> list[tuple]:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        return conn.execute(
            "SELECT provider, model, count(*), sum(input_tokens) FROM llm_usage"
            " GROUP BY provider, model"
        ).fetchall()
    finally:
        conn.close()
""",
    ),
    _Bot(
        "metrics",
        "metrics",
        "Metrics collector",
        _DATA_DIR + 'DB_PATH = os.path.join(DATA_DIR, "metrics.db")\n',
        """
def requests_per_component() -> list[tuple]:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        return conn.execute(
            "SELECT component, sum(total_requests) FROM metrics_1m GROUP BY component"
        ).fetchall()
    finally:
        conn.close()
""",
    ),
    _Bot(
        "rate_limiter",
        "rate_limiter",
        "Rate limiter",
        _DATA_DIR + 'DB_PATH = DATA_DIR / "rate_limiter.db"\n',
        """
def enabled_limits() -> list[tuple]:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        return conn.execute(
            "SELECT name, requests_per_second, burst_size FROM rate_configs WHERE enabled = 1"
        ).fetchall()
    finally:
        conn.close()
""",
    ),
    _Bot(
        "file_cache",
        "file_cache",
        "File cache",
        _DATA_DIR + 'DB_PATH = DATA_DIR / "cache" / "file_cache.db"\n',
        """
def get(key: str) -> bytes | None:
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        row = conn.execute(
            "SELECT value FROM cache_entries WHERE key = ? AND expires_at > ?",
            (key, time.time()),
        ).fetchone()
    finally:
        conn.close()
    return row[0] if row else None
""",
    ),
)


def write_app(root: Path) -> list[Path]:
    """Write one module per demo bot into `root/app/` (replacing earlier ones)."""
    folder = Path(root) / "app"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for bot in _BOTS:
        path = folder / f"{bot.module}.py"
        path.write_text(module_text(bot, BY_SOURCE[bot.source]), encoding="utf-8")
        out.append(path)
    return out


def module_text(bot: _Bot, spec: FileSpec) -> str:
    body = bot.paths + "\n" + _schema(spec) + _INIT + bot.functions
    imports = [m for m in ("os", "sqlite3", "time") if f"{m}." in body]
    return (
        f'"""{bot.title}: its database code as it runs today, on legacy/{spec.relpath}.\n\n'
        "Generated by `cdc demo` as an example application: `cdc refs` finds what it names,\n"
        "`cdc queries` compares its reads on the legacy and the consolidated files.\n"
        '"""\n\n'
        "from __future__ import annotations\n\n"
        + "".join(f"import {m}\n" for m in imports)
        + "from pathlib import Path\n\n"
        + body
    )


def _schema(spec: FileSpec) -> str:
    """The bot's own DDL as one script constant; refused if it would not survive as a plain
    triple-quoted literal (the DDL is copied verbatim, never escaped)."""
    text = "".join(f"{stmt};\n" for stmt in spec.ddl)
    if '"""' in text or "\\" in text or text.endswith('"'):
        raise ValueError(f"{spec.source}: its DDL cannot be written as a plain literal")
    return f'SCHEMA = """\n{text}"""\n'


_INIT = '''

def init_db() -> None:
    """At start-up, as every module of the bot system does."""
    conn = sqlite3.connect(DB_PATH, timeout=5.0)
    try:
        conn.executescript(SCHEMA)
    finally:
        conn.close()

'''


QUERIES_TOML = """\
# The demo bots' reads, as `cdc queries` takes them: each runs on its legacy file and,
# rewritten to the consolidated names (a renamed table, a merged one with its tag filter),
# on its consolidated file. Only exact answers: counts, min/max and integer sums, never a
# float sum whose last bits depend on the order rows are added in (nor a sum of the
# lamports, which the demo files push to the ends of the 64-bit range: SQLite's sum()
# overflows).

[[query]]
name = "open positions"
source = "trading"
sql = "SELECT id, symbol, entry_price, status FROM positions WHERE status = ? ORDER BY id"
params = ["open"]

[[query]]
name = "merged trades, trading's rows: count per symbol and side"
source = "trading"
sql = '''SELECT symbol, side, count(*) AS n FROM trades
GROUP BY symbol, side ORDER BY symbol, side'''

[[query]]
name = "merged trades, buy_tracker's rows: buys per token"
source = "buy_tracker"
sql = '''SELECT token_symbol, count(*) AS buys, min(amount_lamports) AS least,
max(amount_lamports) AS most FROM trades GROUP BY token_symbol ORDER BY token_symbol'''

[[query]]
name = "renamed users (telegram_users): the most active"
source = "telegram"
sql = '''SELECT user_id, username, message_count FROM users
ORDER BY message_count DESC, user_id LIMIT 10'''

[[query]]
name = "renamed memories (x_memories): count per type"
source = "x_memory"
sql = '''SELECT memory_type, count(*) AS n, sum(priority) AS priority FROM memories
GROUP BY memory_type ORDER BY memory_type'''

[[query]]
name = "llm_usage: calls and tokens per provider and model"
source = "llm_costs"
sql = '''SELECT provider, model, count(*) AS calls, sum(input_tokens) AS tokens_in,
sum(output_tokens) AS tokens_out FROM llm_usage GROUP BY provider, model
ORDER BY provider, model'''

[[query]]
name = "metrics_1m: requests per component"
source = "metrics"
sql = '''SELECT component, count(*) AS samples, sum(total_requests) AS requests,
sum(failed_requests) AS failed FROM metrics_1m GROUP BY component ORDER BY component'''

[[query]]
name = "cache_entries of a namespace"
source = "file_cache"
sql = '''SELECT key, created_at, expires_at FROM cache_entries WHERE namespace = ?
ORDER BY key'''
params = ["prices"]
"""
"""~8 of the demo bots' reads (columns as in cdc.demo.schema), in `load_queries`' format."""


def write_queries(root: Path) -> Path:
    path = Path(root) / "app" / "queries.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(QUERIES_TOML, encoding="utf-8")
    return path
