"""Demo step with `--postgres`: cut the `core` stage over to PostgreSQL, write to it as a
switched bot would (through `cdc.pool`), roll it back.

The same round as `cutover_phase` on the cache stage, on the stage that moves to a server:
the fence a stale bot meets in its legacy file, the pause, a bot switched to `cdc.pool`
writing into PostgreSQL (psycopg's `%s` placeholders), the way back writing those rows into
the fenced legacy file, and `cdc rollback core` handing that file back with every one of
them. The stage ends rolled back, so the final verification covers every table (forward).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cdc import pool
from cdc.config import Config
from cdc.cutover.cutover import cutover, instructions
from cdc.cutover.rollback import rollback
from cdc.demo.cutover_phase import _wait_written_back
from cdc.demo.show import Echo
from cdc.planning.plan import Plan
from cdc.sqlident import q

STAGE = "core"
SOURCE, TABLE = "trading", "positions"
KEYS = [f"demo-after-cutover-{i}" for i in range(3)]
COLUMNS = ("id", "symbol", "token_mint", "entry_price", "entry_amount_sol", "entry_lamports")


def run_pg_cutover_round(cfg: Config, plan: Plan, cfg_path: Path, echo: Echo) -> bool:
    """True when every write made to the PostgreSQL target came back to the legacy file."""
    sub = lambda s: echo(f"    {s}")  # noqa: E731 - the engine's progress, indented
    echo(f"  $ cdc cutover {STAGE}   ({STAGE} is on PostgreSQL)")
    rec = cutover(cfg, plan, STAGE, echo=sub)
    echo(f"  cut over: the bots' writes to these tables paused {rec.pause_ms:.0f} ms")
    for line in instructions(plan, rec)[:3]:
        echo(f"  {line}")
    legacy = plan.source(SOURCE).path
    stale = sqlite3.connect(legacy, timeout=5)
    try:
        with stale:
            stale.execute(
                f"INSERT INTO {TABLE}(id, symbol, token_mint, entry_price, entry_amount_sol, "
                "entry_lamports) VALUES ('stale bot', 'X', 'x', 1, 1, 1)"
            )
        echo("  FAILED: the fenced legacy table accepted a stale bot's write")
        return False
    except sqlite3.DatabaseError as e:
        echo(f"  a stale bot writing {legacy} gets: {e}")
    finally:
        stale.close()
    target_table = plan.mapping(SOURCE, TABLE).target_table
    marks = ", ".join(["%s"] * len(COLUMNS))
    insert = f"INSERT INTO {q(target_table)} ({', '.join(q(c) for c in COLUMNS)}) VALUES ({marks})"
    echo(f"  a switched bot: pool.configure({str(cfg_path)!r}); with pool.connection('core') as c:")
    echo(f"    c.execute({insert!r}, ...)")
    pool.configure(cfg_path)
    try:
        with pool.connection(STAGE) as conn:  # a psycopg connection; commits at the end
            for i, k in enumerate(KEYS):
                conn.execute(insert, (k, f"DEMO{i}", f"mint{i}", 1.5 + i, 0.25, 250_000_000))
    finally:
        pool.close_all()
    echo(f"  it wrote {len(KEYS)} rows into PostgreSQL ({STAGE}.{target_table}) through cdc.pool")
    back = _wait_written_back(cfg, STAGE, timeout=30.0)
    if back is None:
        echo("  FAILED: the rollback window did not write them back within 30s")
        return False
    echo(
        f"  rollback window: {back} target change(s) written back from PostgreSQL into the "
        "fenced legacy file"
    )
    echo(f"  $ cdc rollback {STAGE}")
    rb = rollback(cfg, plan, STAGE, echo=sub)
    with sqlite3.connect(f"file:{legacy}?mode=ro", uri=True, timeout=5) as c:
        found = c.execute(
            f"SELECT count(*) FROM {TABLE} WHERE id IN ({', '.join('?' * len(KEYS))})", KEYS
        ).fetchone()[0]
    c.close()
    echo(
        f"  rolled back (bots paused {rb.rollback.pause_ms:.0f} ms): {found} of {len(KEYS)} "
        f"rows the switched bot wrote into PostgreSQL are in {legacy}; its bots may write "
        "there again"
    )
    return found == len(KEYS)
