"""The legacy databases the fixture application (tests/application/fixture_app) uses, as
real SQLite files, and the `cdc.toml` that consolidates them onto `core`, `analytics` and
`cache`: a renamed table (`orders` -> `trade_orders`, `users` -> `tg_users`), a merged
one (`costs` from two files, tagged in `origin`), an excluded one (`metrics.debug_log`),
a file split across two targets (`llm_costs`), and two files named `state.db`.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

FIXTURE_APP = Path(__file__).resolve().parent / "fixture_app"

SCHEMAS = {
    "data/trading.db": """
        CREATE TABLE trades (id INTEGER PRIMARY KEY, symbol TEXT, qty REAL, price REAL);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, symbol TEXT, filled INTEGER);
    """,
    "data/telegram.db": """
        CREATE TABLE messages (id INTEGER PRIMARY KEY, chat_id INTEGER, text TEXT);
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
    """,
    "data/llm_costs.db": """
        CREATE TABLE costs (id INTEGER PRIMARY KEY, model TEXT, usd REAL);
        CREATE TABLE llm_cache (prompt TEXT PRIMARY KEY, answer TEXT);
    """,
    "data/metrics.db": """
        CREATE TABLE costs (id INTEGER PRIMARY KEY, model TEXT, usd REAL);
        CREATE TABLE samples (id INTEGER PRIMARY KEY, name TEXT, value REAL);
        CREATE TABLE debug_log (id INTEGER PRIMARY KEY, msg TEXT);
    """,
    "bots/alpha/state.db": "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT);",
    "bots/beta/state.db": "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT);",
    ".jarvis/http_cache.db": "CREATE TABLE responses (url TEXT PRIMARY KEY, body BLOB);",
}

SOURCES = {
    "trading": "data/trading.db",
    "telegram": "data/telegram.db",
    "llm_costs": "data/llm_costs.db",
    "metrics": "data/metrics.db",
    "alpha_state": "bots/alpha/state.db",
    "beta_state": "bots/beta/state.db",
    "http_cache": ".jarvis/http_cache.db",
}

RULES = """
[[rules]]
source = "trading"
table = "*"
target = "core"

[[rules]]
source = "trading"
table = "orders"
target = "core"
as = "trade_orders"

[[rules]]
source = "telegram"
table = "*"
target = "core"

[[rules]]
source = "telegram"
table = "users"
target = "core"
as = "tg_users"

[[rules]]
source = "llm_costs"
table = "costs"
target = "analytics"
merge = true
tag_column = "origin"
tag = "llm"

[[rules]]
source = "metrics"
table = "costs"
target = "analytics"
merge = true
tag_column = "origin"
tag = "metrics"

[[rules]]
source = "llm_costs"
table = "llm_cache"
target = "cache"

[[rules]]
source = "metrics"
table = "*"
target = "analytics"

[[rules]]
source = "metrics"
table = "debug_log"
exclude = true

[[rules]]
source = "*_state"
table = "kv"
target = "cache"
as = "{source}_kv"

[[rules]]
source = "http_cache"
table = "*"
target = "cache"
"""


def make_legacy(root: Path) -> Path:
    """Legacy files under `root/legacy`, targets beside them in `legacy/data`, and
    `root/cdc.toml`; returns the config's path."""
    legacy = root / "legacy"
    for rel, script in SCHEMAS.items():
        path = legacy / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:
            conn.executescript(script)
        conn.close()
    lines = ['state_dir = "state"', "", "[targets]"]
    lines += [f'{t} = "legacy/data/{t}.db"' for t in ("core", "analytics", "cache")]
    for name, rel in SOURCES.items():
        lines += ["", "[[sources]]", f'name = "{name}"', f'path = "legacy/{rel}"']
    config = root / "cdc.toml"
    config.write_text("\n".join(lines) + "\n" + RULES)
    return config


def copy_app(dest: Path) -> Path:
    """A copy of the fixture application to rewrite (`--fix --write`)."""
    shutil.copytree(FIXTURE_APP, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
