"""Nightly copy of every bot database."""

import sqlite3
from pathlib import Path

ROOT = Path.cwd()


def backup(name: str) -> None:
    src = sqlite3.connect(f"data/{name}.db")
    dst = sqlite3.connect(f"{ROOT}/backups/{name}.bak")
    src.backup(dst)


def backup_trading() -> None:
    src = sqlite3.connect(f"{ROOT}/data/trading.db")
    src.close()
