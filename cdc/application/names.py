"""What the plan makes of each legacy file and table, in the terms application code uses.

Code names a database by a path it builds (`DATA_DIR / "trading.db"`), rarely the absolute
path `cdc.toml` holds, so a file is matched by its trailing path components: the longest
suffix that names exactly one source wins, and a name two sources share stays ambiguous
(never guessed). A table is matched as SQL matches it, case-insensitively.
"""

from __future__ import annotations

import os
from pathlib import PurePath

import msgspec

from cdc.config import Config
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan
from cdc.stages.finalized import with_finalized


class LegacyFile(msgspec.Struct, frozen=True):
    """One legacy database: its source name and path, and where its tables go."""

    source: str
    path: str
    targets: list[str]  # every target one of its tables goes to, sorted
    excluded: list[str] = []  # tables explicitly left behind


class TableMove(msgspec.Struct, frozen=True):
    """One legacy table and its consolidated home."""

    source: str
    table: str
    target: str
    target_path: str
    target_table: str
    tag_column: str | None = None  # a merged table: rows told apart by this column
    tag: str | None = None
    fts: bool = False

    @property
    def renamed(self) -> bool:
        return self.target_table != self.table

    @property
    def merged(self) -> bool:
        return self.tag_column is not None


class LegacyNames:
    """The plan's answer to "what does this name become?", built once per run."""

    def __init__(self, plan: Plan) -> None:
        self.targets = dict(plan.targets)
        self.files: list[LegacyFile] = []
        self._tables: dict[tuple[str, str], TableMove] = {}
        for sp in plan.sources:
            moves = [*((m, False) for m in sp.tables), *((m, True) for m in sp.fts)]
            for m, fts in moves:
                self._tables[(sp.name, m.table.lower())] = TableMove(
                    source=sp.name,
                    table=m.table,
                    target=m.target,
                    target_path=plan.targets.get(m.target, ""),
                    target_table=m.target_table,
                    tag_column=m.tag_column,
                    tag=m.tag,
                    fts=fts,
                )
            self.files.append(
                LegacyFile(
                    source=sp.name,
                    path=sp.path,
                    targets=sorted({m.target for m, _ in moves}),
                    excluded=sorted(sp.excluded),
                )
            )

    def file_named(self, written: str) -> LegacyFile | list[LegacyFile] | None:
        """The legacy file a path written in code names: one file, the files it could be
        (a name several sources share, with too little of the path to tell), or None."""
        parts = _parts(written)
        if not parts:
            return None
        found: list[LegacyFile] = []
        for f in self.files:
            mine = _parts(f.path)
            if mine[-len(parts) :] == parts or (
                len(parts) > len(mine) and parts[-len(mine) :] == mine
            ):
                found.append(f)
        if not found:
            return None
        return found[0] if len(found) == 1 else found

    def source(self, name: str) -> LegacyFile | None:
        return next((f for f in self.files if f.source == name), None)

    def table(self, source: str, name: str) -> TableMove | None:
        return self._tables.get((source, name.lower()))

    def tables_named(self, name: str) -> list[TableMove]:
        """Every legacy table of that name, in any file: what SQL names when the file it
        runs on cannot be told."""
        low = name.lower()
        return [t for (_, n), t in self._tables.items() if n == low]

    def stage(self, target: str) -> list[LegacyFile]:
        """The legacy files a stage (target) takes tables from."""
        return [f for f in self.files if target in f.targets]


def _parts(path: str) -> list[str]:
    """Trailing components that can name a file: `..`, `.` and the empty ones dropped."""
    return [p for p in PurePath(path.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]


def legacy_names(cfg: Config) -> LegacyNames:
    """From `cdc.toml` and the legacy files as they are now, finalized stages included (a
    guard replaced their files, but code naming them is still a stale reference)."""
    return LegacyNames(with_finalized(cfg, resolve_plan(cfg, strict=False)))


def relative(path: str, start: str) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive
        return path
