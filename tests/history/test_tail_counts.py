"""`cdc log tail` prints the number of events asked for, even while the log grows.

Seen on the corpus under six bots: the default 10 printed 80 lines, because the events
the daemon appended while the last ten were read were printed after them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cdc.config import load_config
from cdc.history.tail import tail
from tests.conftest import make_db, write_config

CONFIG = """
state_dir = "state"
[targets]
core = "core.db"
[[sources]]
name = "a"
path = "legacy/a.db"
[[rules]]
source = "a"
table = "*"
target = "core"
"""


def test_the_last_n_are_n_even_when_the_log_grows_meanwhile(tmp_path: Path, pipeline_for):
    make_db(tmp_path / "legacy" / "a.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v);")
    cfg_path = write_config(tmp_path, CONFIG)
    p = pipeline_for(cfg_path)
    bot = sqlite3.connect(tmp_path / "legacy" / "a.db", isolation_level=None)
    for i in range(30):
        bot.execute("INSERT INTO t(v) VALUES (?)", (i,))
    p.sync()

    events = tail(load_config(cfg_path), last=10)
    first = next(events)  # the last ten are chosen here
    for i in range(30, 60):  # the bots go on writing, the daemon logs it
        bot.execute("INSERT INTO t(v) VALUES (?)", (i,))
    p.sync()
    shown = [first, *events]
    assert len(shown) == 10
    rows = [e.key for e in shown if hasattr(e, "key")]
    assert rows[-1] == [30] and max(rows) == [30]  # the ten before the writes went on
    bot.close()
