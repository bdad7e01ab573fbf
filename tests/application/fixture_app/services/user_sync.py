"""Syncs the Telegram users from the CRM: creates the same legacy table as the bot does,
with one more column (whichever module runs first decides the table's shape)."""

import sqlite3


def sync(rows: list) -> None:
    conn = sqlite3.connect("data/telegram.db")
    conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT, email TEXT)")
    conn.executemany("INSERT OR REPLACE INTO users (id, name, email) VALUES (?, ?, ?)", rows)
    conn.commit()
