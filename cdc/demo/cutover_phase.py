"""Demo step: cut the cache stage over, write to it as a switched bot would, roll it back.

What an operator sees on the way to the real cutover: the fence a stale bot meets, the pause
the bots had, the rollback window writing the switched bot's changes back into the fenced
legacy file, and a rollback that hands that file back with every one of those writes. The
stage ends rolled back, so the demo's final verification covers every table again (forward).
"""

from __future__ import annotations

import sqlite3
import time

from cdc.config import Config
from cdc.cutover.cutover import cutover, instructions
from cdc.cutover.rollback import rollback
from cdc.demo.show import Echo
from cdc.planning.plan import Plan
from cdc.status_file import read_status

STAGE = "cache"
SOURCE, TABLE = "file_cache", "cache_entries"
KEYS = [f"demo:after-cutover:{i}" for i in range(3)]


def run_cutover_round(cfg: Config, plan: Plan, echo: Echo) -> bool:
    """True when every write made to the target came back to the legacy file."""
    sub = lambda s: echo(f"    {s}")  # noqa: E731 - the engine's progress, indented
    echo(f"  $ cdc cutover {STAGE}")
    rec = cutover(cfg, plan, STAGE, echo=sub)
    echo(f"  cut over: the bots' writes to these tables paused {rec.pause_ms:.0f} ms")
    for line in instructions(plan, rec)[:3]:
        echo(f"  {line}")
    legacy = plan.source(SOURCE).path
    try:
        with sqlite3.connect(legacy, timeout=5) as c:
            c.execute(
                f"INSERT INTO {TABLE}(key, value, created_at, expires_at) "
                "VALUES ('stale bot', x'00', 0, 0)"
            )
        echo("  FAILED: the fenced legacy table accepted a stale bot's write")
        return False
    except sqlite3.DatabaseError as e:
        echo(f"  a stale bot writing {legacy} gets: {e}")
    target_table = plan.mapping(SOURCE, TABLE).target_table
    with sqlite3.connect(rec.path, timeout=5) as c:  # the switched bot
        now = time.time()
        c.executemany(
            f'INSERT INTO "{target_table}"(key, value, created_at, expires_at, namespace) '
            "VALUES (?, ?, ?, ?, 'demo')",
            [
                (k, f"written after the cutover {i}".encode(), now, now + 3600)
                for i, k in enumerate(KEYS)
            ],
        )
    c.close()
    echo(f"  a switched bot wrote {len(KEYS)} rows to {rec.path} ({target_table})")
    back = _wait_written_back(cfg, STAGE, timeout=30.0)
    if back is None:
        echo("  FAILED: the rollback window did not write them back within 30s")
        return False
    echo(f"  rollback window: {back} target change(s) written back into the fenced legacy file")
    echo(f"  $ cdc rollback {STAGE}")
    rb = rollback(cfg, plan, STAGE, echo=sub)
    with sqlite3.connect(f"file:{legacy}?mode=ro", uri=True, timeout=5) as c:
        found = c.execute(
            f"SELECT count(*) FROM {TABLE} WHERE key IN ({', '.join('?' * len(KEYS))})", KEYS
        ).fetchone()[0]
    c.close()
    echo(
        f"  rolled back (bots paused {rb.rollback.pause_ms:.0f} ms): {found} of {len(KEYS)} "
        f"rows the switched bot wrote are in {legacy}; its bots may write there again"
    )
    return found == len(KEYS)


def _wait_written_back(cfg: Config, target: str, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = read_status(cfg.state_dir)
        b = st.backflow.get(target) if st else None
        if b is not None and b.events and b.behind == 0 and not b.last_error:
            return b.events
        time.sleep(0.1)
    return None
