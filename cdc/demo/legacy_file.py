"""What the demo generator made, one entry per legacy file: the shared vocabulary of the
demo's config writer, bot launcher and report (below all of them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LegacyFile:
    """What the demo created: enough for a config writer, a bot launcher or a test."""

    source: str
    path: Path  # relative to the demo root, e.g. legacy/data/trading.db
    journal: str  # "wal" or "delete"
    tables: tuple[str, ...]  # user tables at creation time, in creation order
