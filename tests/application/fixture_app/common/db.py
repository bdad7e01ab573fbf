"""Connections shared by the services."""

from pathlib import Path
from sqlite3 import connect as open_sqlite

import apsw


class Store:
    """The HTTP response cache."""

    DB = Path.home() / ".jarvis" / "http_cache.db"

    def __init__(self) -> None:
        self.conn = apsw.Connection(str(self.DB))

    def get(self, url: str) -> list:
        return list(self.conn.execute("SELECT body FROM responses WHERE url = ?", (url,)))


def connect_to(path: str):
    # the caller decides which database
    return open_sqlite(path)
