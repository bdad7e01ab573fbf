"""Opening legacy files: the cases a live system leaves behind."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from cdc.sqlconn import open_legacy

DIE_MID_TRANSACTION = """
import os, signal, sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute('PRAGMA cache_size=1')  # spill to the file: the journal is needed to undo it
c.execute('BEGIN IMMEDIATE')
c.executemany('INSERT INTO t VALUES (?)', [(os.urandom(2000),) for _ in range(2000)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_hot_journal_left_by_a_killed_writer_does_not_stop_a_read(tmp_path: Path) -> None:
    """A writer SIGKILLed mid-transaction in rollback-journal mode (a bot, or our way back)
    leaves a hot journal that a read-only connection may not roll back ("attempt to write
    a readonly database"): the daemon failed to start on it once. It is rolled back, as
    any bot's next open would, and the read sees the last committed state."""
    db = tmp_path / "bot.db"
    with sqlite3.connect(db) as c:
        c.executescript("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    c.close()
    subprocess.run([sys.executable, "-c", DIE_MID_TRANSACTION, str(db)], check=False)
    assert os.path.exists(f"{db}-journal")
    conn = open_legacy(str(db), readonly=True)
    try:
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
    finally:
        conn.close()
    assert not os.path.exists(f"{db}-journal")
