"""Create the demo's legacy SQLite files, deterministically from a seed.

The files are written with the stdlib `sqlite3` driver, as the external legacy bots wrote them,
never through the engine: the demo must not share code paths with what it tests. Each file draws
from its own `random.Random(f"{seed}:{source}")`, so one file's rows do not depend on which
other files exist or in what order they are made. Generated rows carry explicit timestamps
(the CURRENT_TIMESTAMP defaults are left for the bots to exercise), so a seed reproduces every
value.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from cdc.demo import fill_core, fill_services
from cdc.demo.config_toml import demo_config_toml, write_demo_config
from cdc.demo.legacy_file import LegacyFile
from cdc.demo.schema import FILES, FileSpec

__all__ = ["LegacyFile", "demo_config_toml", "generate_legacy", "write_demo_config"]


Filler = Callable[[random.Random, sqlite3.Connection], None]


def generate_legacy(root: Path, seed: int = 7) -> list[LegacyFile]:
    """Create every demo file under `root/legacy/`, replacing any earlier copy of it."""
    root = Path(root)
    out: list[LegacyFile] = []
    for spec in FILES:
        rel = Path("legacy") / spec.relpath
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        tables = _build(path, spec, random.Random(f"{seed}:{spec.source}"))
        out.append(LegacyFile(spec.source, rel, spec.journal, tables))
    return out


def _build(path: Path, spec: FileSpec, rng: random.Random) -> tuple[str, ...]:
    with closing(sqlite3.connect(path)) as conn:
        mode = conn.execute(f"PRAGMA journal_mode={spec.journal}").fetchone()[0]
        if mode != spec.journal:
            raise RuntimeError(f"{path}: journal_mode {mode!r}, wanted {spec.journal!r}")
        for stmt in spec.ddl:
            conn.execute(stmt)
        _FILLERS[spec.source](rng, conn)
        conn.commit()
        names = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"
        ).fetchall()
    return tuple(n for (n,) in names)


_FILLERS: dict[str, Filler] = {
    "trading": fill_core.fill_trading,
    "buy_tracker": fill_core.fill_buy_tracker,
    "telegram": fill_core.fill_telegram,
    "x_memory": fill_core.fill_x_memory,
    "llm_costs": fill_services.fill_llm_costs,
    "metrics": fill_services.fill_metrics,
    "rate_limiter": fill_services.fill_rate_limiter,
    "file_cache": fill_services.fill_file_cache,
}
