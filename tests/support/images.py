"""Rows as bytes and storage classes, read independently of the code under test."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def image(db: Path, table: str, where: str = "") -> list[tuple]:
    """Every row as (typeof, hex) pairs, sorted: identical bytes and storage classes only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
        cols = [c for c in cols if c != "source"]
        sel = ", ".join(f'typeof("{c}"), hex("{c}")' for c in cols)
        return sorted(con.execute(f'SELECT {sel} FROM "{table}" {where}').fetchall())
    finally:
        con.close()


def bot(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=5)
