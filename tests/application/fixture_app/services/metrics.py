"""Samples and costs for the dashboards."""

import sqlite3
from pathlib import Path


def record(name: str, value: float) -> None:
    path = Path("data/metrics.db")
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE IF NOT EXISTS costs (
            id INTEGER PRIMARY KEY, model TEXT, usd REAL, tokens INTEGER
        );
        """
    )
    conn.execute("INSERT INTO samples (name, value) VALUES (?, ?)", (name, value))
    conn.execute("INSERT INTO debug_log (msg) VALUES (?)", (f"{name}={value}",))
    # cdc-refs: reviewed: the dashboard adds the origin filter itself
    conn.execute("SELECT model, sum(usd) FROM costs GROUP BY model")
    table = "samples"
    conn.execute(f"DELETE FROM {table} WHERE value < 0")
