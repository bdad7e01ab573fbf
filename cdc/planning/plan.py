"""The resolved plan's types: every table of every legacy file, mapped to a target or
excluded (`cdc.resolve` builds it from `cdc.toml` and the files).

Kept apart from the resolution so that what consumes a plan (the target's DDL, the
capture, the apply) depends on these types only, never on how a plan is read.
"""

from __future__ import annotations

import functools

import msgspec

from cdc.errors import ConfigError
from cdc.inventory import TableInfo
from cdc.postgres.types import pg_type


class TableMapping(msgspec.Struct, frozen=True):
    """One captured legacy table and where its rows go."""

    source: str
    table: str
    target: str
    target_table: str
    tag_column: str | None = None  # set for merged tables
    tag: str | None = None
    drop_foreign_keys: bool = False
    pg_types: dict[str, str] = {}  # a PostgreSQL target: column -> type, from its rule
    # its target takes rows only, never a copy by reference (a PostgreSQL target: the
    # apply cannot attach the legacy file there)
    rows_only: bool = False

    def pg_type(self, column: str, decl_type: str, strict: bool) -> str:
        """A column's PostgreSQL type: the rule's, or the one its affinity maps to."""
        return self.pg_types.get(column) or pg_type(decl_type, strict)


class SourcePlan(msgspec.Struct, frozen=True):
    name: str
    path: str
    tables: list[TableMapping]
    excluded: list[str] = []
    uncapturable: list[str] = []  # virtual tables explicitly excluded
    fts: list[TableMapping] = []  # FTS tables re-created in the target (cdc.ddl), not captured
    infos: list[TableInfo] = []  # every table as the plan saw it (the target DDL's context)
    capture: str = "triggers"  # or "hooks" (cdc.hooks)

    def info(self, table: str) -> TableInfo | None:
        low = table.lower()
        return next((t for t in self.infos if t.name.lower() == low), None)

    def mapping_of(self, table: str) -> TableMapping | None:
        """The mapping of a table named as SQL names it (case-insensitively)."""
        low = table.lower()
        return next((m for m in self.tables if m.table.lower() == low), None)

    def needs_unique_probes(self) -> set[str]:
        """Tables that get the REPLACE probes (those with a non-key UNIQUE): all of them.

        A copied table's target has the same UNIQUE, and applying the new row with REPLACE
        deletes the same old row there, but only if the new row reaches the target: when
        a bot deletes it again before the harvest, the collapsed event is a delete of the
        new key, and the old row would stay in the target forever."""
        return {m.table for m in self.tables}


class Plan(msgspec.Struct, frozen=True, dict=True):
    targets: dict[str, str]
    sources: list[SourcePlan]
    problems: list[str] = []  # only in a lenient plan (status must work on a drifting system)
    unmapped: list[tuple[str, str]] = []  # (source, table) matched by no rule, lenient plan
    busy: list[str] = []  # sources locked past the busy timeout: their tables are unknown

    def unmapped_only(self) -> bool:
        """Every problem is a table no rule matches: what a bot's `CREATE TABLE` causes on
        a live system, and what must not stop replicating the rest (`daemon_plan`)."""
        return len(self.problems) == len(self.unmapped)

    def mapping(self, source: str, table: str) -> TableMapping | None:
        return self._index.get((source, table))

    def stage(self, target: str) -> list[TableMapping]:
        """Every mapped table of one target: what a cutover moves (a stage)."""
        if target not in self.targets:
            raise ConfigError(f"no target {target!r} (known: {', '.join(sorted(self.targets))})")
        return [m for s in self.sources for m in s.tables if m.target == target]

    @functools.cached_property
    def _index(self) -> dict[tuple[str, str], TableMapping]:
        return {(m.source, m.table): m for s in self.sources for m in s.tables}

    def source(self, name: str) -> SourcePlan:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)
