"""Trading bot: records fills and keeps its orders."""

from __future__ import annotations

import sqlite3
from pathlib import Path

DATA_DIR = Path(__file__).parent.parent / "data"
DB_NAME = "trading.db"


def connect() -> sqlite3.Connection:
    return sqlite3.connect(DATA_DIR / DB_NAME)


def record_fill(symbol: str, qty: float, price: float) -> None:
    conn = connect()
    # fills go to the trades table; the order is marked filled
    conn.execute("INSERT INTO trades (symbol, qty, price) VALUES (?, ?, ?)", (symbol, qty, price))
    conn.execute("UPDATE orders SET filled = 1 WHERE symbol = ?", (symbol,))
    conn.commit()


def open_orders() -> list:
    with connect() as conn:
        return conn.execute(
            'SELECT o.id, o.symbol FROM "orders" AS o WHERE o.filled = 0'  # keep the quotes
        ).fetchall()
