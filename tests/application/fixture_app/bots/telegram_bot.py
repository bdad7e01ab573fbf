"""Telegram bot: stores messages and the users it knows."""

import sqlite3 as sq

from common import paths

DB_FILE = paths.TELEGRAM_DB

USERS_SCHEMA = "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT)"


def save_message(chat_id: int, text: str, db_path="data/telegram.db") -> None:
    conn = sq.connect(db_path)
    conn.execute("INSERT INTO messages (chat_id, text) VALUES (?, ?)", (chat_id, text))
    conn.executescript(USERS_SCHEMA)
    conn.commit()


def lookup_user(user_id: int, db=DB_FILE):
    conn = sq.connect(db)
    return conn.execute("SELECT name FROM users WHERE id = ?", (user_id,)).fetchone()


def scratch() -> None:
    mem = sq.connect(":memory:")
    mem.execute("CREATE TABLE users (id INTEGER)")
