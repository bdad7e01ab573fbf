"""Two bots, one module: each keeps its own key-value state."""

import sqlite3
from pathlib import Path

STATE = Path(__file__).parent / "state.db"
ALPHA_STATE = Path(__file__).parent.parent / "bots" / "alpha" / "state.db"


def get(key: str):
    conn = sqlite3.connect(STATE)
    return conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
