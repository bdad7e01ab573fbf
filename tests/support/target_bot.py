"""A switched bot for the rollback tests: writes to a consolidated core target as the bots
do once their stage is cut over (REPLACE upserts through a UNIQUE, key changes, deletes,
REAL/BLOB/NULL edge values, rows of a merged table under its tag, a runtime ALTER).

Run as `python -m tests.support.target_bot CORE_DB STOP_FILE`: writes batches of 100 until
STOP_FILE exists. Like the real bots: stdlib sqlite3.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
from pathlib import Path

from tests.support.workload import VALUES


def target_writes(db: Path, n: int, seed: int) -> None:
    """What a switched bot does in the consolidated core: REPLACE upserts through a UNIQUE,
    key changes, deletes, REAL/BLOB/NULL edge values, rows of a merged table under its tag,
    and a runtime ALTER that adds a column."""
    rnd = random.Random(seed)
    c = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        cols = [r[1] for r in c.execute("PRAGMA table_info(alpha_positions)")]
        if "note" not in cols:
            c.execute("ALTER TABLE alpha_positions ADD COLUMN note TEXT")
        for _ in range(n):
            sym, r = f"S{rnd.randrange(60)}", rnd.random()
            if r < 0.2:
                c.execute(
                    "INSERT OR REPLACE INTO alpha_positions(symbol, qty, px, meta, note) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        sym,
                        rnd.random(),
                        rnd.choice(VALUES),
                        rnd.randbytes(3),
                        rnd.choice([None, "n"]),
                    ),
                )
            elif r < 0.3:
                c.execute(
                    "UPDATE alpha_positions SET px = -0.0, qty = qty + 1 WHERE symbol = ?", (sym,)
                )
            elif r < 0.35:
                c.execute(
                    "UPDATE OR REPLACE alpha_positions SET id = id + 100000 "
                    "WHERE symbol = ? AND id < 100000",
                    (sym,),
                )
            elif r < 0.4:
                c.execute("DELETE FROM alpha_positions WHERE symbol = ?", (sym,))
            elif r < 0.6:
                c.execute(
                    "INSERT OR REPLACE INTO alpha_kv(k, v) VALUES (?, ?)",
                    (f"k{rnd.randrange(100)}", rnd.choice(VALUES)),
                )
            elif r < 0.65:
                c.execute("DELETE FROM alpha_kv WHERE k = ?", (f"k{rnd.randrange(100)}",))
            elif r < 0.8:
                # A merged table has neither the legacy UNIQUE(symbol) nor its column types:
                # a bot keeps to them (REAL in px), or the way back refuses (tested below).
                i = rnd.randrange(1, 3000)
                c.execute(
                    "INSERT OR REPLACE INTO positions(bot, id, symbol, qty, px) "
                    "VALUES ('beta', ?, ?, ?, ?)",
                    (i, f"M{i}", rnd.random(), rnd.choice([None, 0.1 + 0.2, 1e-300, 2.5])),
                )
            elif r < 0.85:
                c.execute(
                    "DELETE FROM positions WHERE bot = 'beta' AND id % 7 = ?", (rnd.randrange(7),)
                )
            else:
                c.execute(
                    "INSERT OR REPLACE INTO beta_kv VALUES (?, ?)",
                    (f"t{rnd.randrange(50)}", rnd.choice(VALUES)),
                )
    finally:
        c.close()


def main() -> None:
    core, stop = sys.argv[1], sys.argv[2]
    seed = 10
    while not os.path.exists(stop):
        target_writes(core, 100, seed)
        seed += 1


if __name__ == "__main__":
    main()
