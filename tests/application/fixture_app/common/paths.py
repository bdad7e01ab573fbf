"""Where the bots keep their databases."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / "data"
TRADING_DB = DATA_DIR / "trading.db"
TELEGRAM_DB = os.getenv(
    "TELEGRAM_DB",
    "data/telegram.db",
)
HTTP_CACHE = Path.home() / ".jarvis" / "http_cache.db"
