"""The resolved plan: every table of every legacy file, mapped to a target or excluded.

This is where invariant 3 lives: a table matched by no rule is an error that names it,
two tables landing in one target table must be a declared merge, and the problems are all
reported at once so an operator fixes the config in one pass, before a row is copied.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import os
from pathlib import Path

import msgspec

from cdc.config import Config, RuleConfig
from cdc.errors import ConfigError, PlanError
from cdc.guard import is_guard
from cdc.inventory import TableInfo, list_tables
from cdc.sqlconn import open_legacy


class TableMapping(msgspec.Struct, frozen=True):
    """One captured legacy table and where its rows go."""

    source: str
    table: str
    target: str
    target_table: str
    tag_column: str | None = None  # set for merged tables
    tag: str | None = None


class SourcePlan(msgspec.Struct, frozen=True):
    name: str
    path: str
    tables: list[TableMapping]
    excluded: list[str] = []
    uncapturable: list[str] = []  # virtual tables explicitly excluded

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


def expand_sources(cfg: Config) -> list[tuple[str, str, bool]]:
    """(name, absolute path, required) for each declared source, globs expanded."""
    out = []
    for s in cfg.sources:
        if any(c in s.path for c in "*?["):
            matches = sorted(glob.glob(s.path, recursive=True))
            if not matches:
                out.append((s.name, s.path, s.required))  # reported as matching nothing
            for p in matches:
                out.append((s.name.replace("{stem}", Path(p).stem), p, s.required))
        else:
            out.append((s.name, s.path, s.required))
    return out


def resolve_plan(
    cfg: Config, inventories: dict[str, list[TableInfo]] | None = None, strict: bool = True
) -> Plan:
    """Match every table of every source against the rules; raise PlanError listing all problems.

    With `strict=False` the problems are returned in the plan instead (for `cdc status`,
    which must keep working when a bot creates an unmapped table on a live system).
    """
    problems: list[str] = []
    sources: list[tuple[str, str, list[TableInfo]]] = []
    seen: dict[str, str] = {}
    for name, path, required in expand_sources(cfg):
        if "{stem}" in name or any(c in path for c in "*?["):
            problems.append(f"source glob {path!r} matches no file")
            continue
        if name in seen:
            problems.append(f"source name {name!r} given to both {seen[name]} and {path}")
            continue
        seen[name] = path
        if inventories is not None and name in inventories:
            tables = inventories[name]
        else:
            if not os.path.exists(path) and not required:
                continue
            if is_guard(path):  # finalized: the data moved (cdc.guard), nothing to map
                sources.append((name, path, []))
                continue
            try:
                conn = open_legacy(path, cfg.daemon.busy_timeout_ms, readonly=True)
            except Exception as e:  # noqa: BLE001 - reported with the others
                problems.append(f"source {name!r}: {e}")
                continue
            try:
                tables = list_tables(conn)
            finally:
                conn.close()
        sources.append((name, path, tables))

    plans = []
    landing: dict[tuple[str, str], list[tuple[TableMapping, RuleConfig]]] = {}
    for name, path, tables in sources:
        mapped, excluded, uncapturable = [], [], []
        for t in tables:
            if t.kind == "shadow":
                continue  # belongs to its virtual table
            rule, err = _match(cfg.rules, name, t.name)
            if err:
                problems.append(err)
                continue
            if rule is None:
                problems.append(
                    f"table {t.name!r} of source {name!r} ({path}) is matched by no rule: "
                    "map it to a target or exclude it"
                )
                continue
            if rule.exclude:
                (uncapturable if t.kind == "virtual" else excluded).append(t.name)
                continue
            if t.kind == "virtual":
                problems.append(
                    f"table {t.name!r} of source {name!r} is a virtual table (e.g. FTS): "
                    "triggers cannot capture it; exclude it and rebuild it in the target"
                )
                continue
            as_name = (rule.as_ or t.name).replace("{table}", t.name).replace("{source}", name)
            m = TableMapping(
                source=name,
                table=t.name,
                target=rule.target or "",
                target_table=as_name,
                tag_column=rule.tag_column if rule.merge else None,
                tag=(rule.tag or name) if rule.merge else None,
            )
            if rule.merge and not t.key:
                problems.append(
                    f"table {t.name!r} of source {name!r}: a merge needs a declared primary "
                    "key (this table is identified only by its rowid)"
                )
            if rule.merge and rule.tag_column in t.column_names:
                problems.append(
                    f"table {t.name!r} of source {name!r} already has a column "
                    f"{rule.tag_column!r}: choose another `tag_column`"
                )
            landing.setdefault((m.target, m.target_table), []).append((m, rule))
            mapped.append(m)
        plans.append(SourcePlan(name, path, mapped, excluded, uncapturable))

    infos = {(n, t.name): t for n, _, ts in sources for t in ts}
    for (target, ttable), entries in sorted(landing.items()):
        if len(entries) < 2 and not entries[0][1].merge:
            continue
        problems.extend(_check_merge(target, ttable, entries, infos))
    if problems and not strict:
        return Plan(targets=dict(cfg.targets), sources=plans, problems=problems)
    if problems:
        raise PlanError(
            f"{cfg.config_path or 'config'}: {len(problems)} problem(s) in the table mapping:\n  - "
            + "\n  - ".join(problems)
        )
    return Plan(targets=dict(cfg.targets), sources=plans)


def _check_merge(target, ttable, entries, infos) -> list[str]:
    names = ", ".join(f"{m.source}.{m.table}" for m, _ in entries)
    if not all(r.merge for _, r in entries):
        return [
            f"{target}.{ttable} receives {names}: rename one (`as`) or declare "
            "`merge = true` with a `tag_column` on every rule involved"
        ]
    problems = []
    if len({r.tag_column for _, r in entries}) > 1:
        problems.append(f"{target}.{ttable}: merged rules disagree on `tag_column` ({names})")
    tags = [m.tag for m, _ in entries]
    if len(set(tags)) != len(tags):
        problems.append(f"{target}.{ttable}: two merged tables share one tag ({names})")
    keys = {tuple(infos[(m.source, m.table)].key) for m, _ in entries}
    if len(keys) > 1:
        problems.append(
            f"{target}.{ttable}: merged tables have different primary keys "
            f"({'; '.join(','.join(k) for k in sorted(keys))})"
        )
    return problems


def _specificity(rule: RuleConfig) -> int:
    lit = lambda s: not any(c in s for c in "*?[")  # noqa: E731
    return 2 * lit(rule.table) + lit(rule.source)


def _match(rules: list[RuleConfig], source: str, table: str):
    hits = [
        (i, r)
        for i, r in enumerate(rules)
        if fnmatch.fnmatchcase(source, r.source) and fnmatch.fnmatchcase(table, r.table)
    ]
    if not hits:
        return None, None
    best = max(_specificity(r) for _, r in hits)
    top = [(i, r) for i, r in hits if _specificity(r) == best]
    if len(top) > 1:
        which = ", ".join(f"rules[{i}]" for i, _ in top)
        return None, f"table {table!r} of source {source!r} is matched by {which} equally: keep one"
    return top[0][1], None
