"""The set of targets, and the defaults that fill a mapping's empty target cells.

The targets are a decision the operator makes once (`cdc inventory --target`, recorded in
inventory.json; `cdc plan --target`; a plan file's `targets:`). Every target a mapping
names is checked against that set, so a typo in one cell is refused with the name it was
probably meant to be, instead of quietly becoming one more consolidated database.

Defaults (`--default-target GLOB=TARGET`) exist because filling 100 target cells by hand
is where such typos come from: a few globs decide most tables, and the operator reviews
the sheet instead of typing it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from fnmatch import fnmatchcase

import msgspec

from cdc.errors import ConfigError, PlanError
from cdc.planning.mapping import EXCLUDE, MappingRow

MAX_LISTED = 5  # rows named per unknown target; the rest are counted

NO_TARGETS_HINT = (
    "name them once: `cdc inventory DIRS --target core,analytics,cache` (kept in "
    "inventory.json), or `cdc plan --target ...`, or `targets: [...]` in a plan file"
)


class DefaultTarget(msgspec.Struct, frozen=True):
    """One `--default-target` spec, parsed. `table_glob` None: the spec matches whole
    databases (every table of a file whose path matches)."""

    spec: str
    database_glob: str
    table_glob: str | None
    target: str

    def matches(self, row: MappingRow) -> bool:
        if not fnmatchcase(row.database, self.database_glob):
            return False
        # table names compare ignoring case, as SQLite compares them
        return self.table_glob is None or fnmatchcase(row.table.lower(), self.table_glob.lower())


class Defaulted(msgspec.Struct, frozen=True):
    rows: list[MappingRow]
    filled: int  # empty target cells a default filled
    notes: list[str] = []


def split_targets(values: Iterable[str] | None) -> list[str]:
    """`--target a,b --target c` -> [a, b, c], in order, without repeats."""
    out: list[str] = []
    for v in values or ():
        for name in v.split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


def check_target_names(targets: list[str], where: str) -> list[str]:
    """`exclude` is what a cell says for "no target": a target of that name could never be
    told apart from it."""
    if EXCLUDE in targets:
        raise ConfigError(
            f"{where}: {EXCLUDE!r} cannot be a target name (it marks a table as not copied)"
        )
    return targets


def choose_targets(
    given: list[str] | None, plan_file: list[str] | None, inventory: list[str] | None
) -> list[str]:
    """The command line wins over the plan file, which wins over the inventory. None of
    them: refused, since the sheet's own names would turn any typo into a target."""
    for where, names in (
        ("--target", given),
        ("the plan file's `targets`", plan_file),
        ("inventory.json's `targets`", inventory),
    ):
        if names:
            return check_target_names(list(names), where)
    raise PlanError(
        "no targets named: cdc plan does not take them from the sheet", hint=NO_TARGETS_HINT
    )


def unknown_targets(rows: list[MappingRow], targets: list[str]) -> list[str]:
    """One problem per unknown target name, with the rows that use it and the near name."""
    allowed = ", ".join(sorted(targets))
    problems = []
    used: dict[str, list[str]] = {}
    for r in rows:
        if r.target and r.target != EXCLUDE and r.target not in targets:
            used.setdefault(r.target, []).append(f"{r.database}:{r.table}")
    for name, where in sorted(used.items()):
        listed = ", ".join(where[:MAX_LISTED])
        if len(where) > MAX_LISTED:
            listed += f", and {len(where) - MAX_LISTED} more"
        problems.append(
            f"target {name!r} (rows: {listed}) is not one of {allowed}{_near(name, targets)}"
        )
    return problems


def _near(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f": did you mean {close[0]}?" if close else ""


def parse_defaults(specs: Iterable[str] | None, targets: list[str] | None) -> list[DefaultTarget]:
    """Every malformed spec, or one naming a target not in `targets`, refused at once.
    `targets` None: there is no set to check against (refused, a default must name one)."""
    specs = list(specs or ())
    if specs and not targets:
        raise ConfigError(
            "--default-target names a target, but no targets are named",
            hint="add --target core,analytics,... (the targets the defaults may name)",
        )
    out, problems = [], []
    for spec in specs:
        glob, eq, target = spec.rpartition("=")
        target = target.strip()
        db_glob, colon, table_glob = glob.partition(":")
        if not eq or not db_glob.strip() or not target or (colon and not table_glob.strip()):
            problems.append(f"{spec!r} is not GLOB=TARGET or DBGLOB:TABLEGLOB=TARGET")
            continue
        if target != EXCLUDE and target not in (targets or []):
            allowed = ", ".join(sorted(targets or []))
            problems.append(
                f"{spec!r}: target {target!r} is not one of {allowed} or exclude"
                + _near(target, list(targets or []))
            )
            continue
        out.append(
            DefaultTarget(
                spec=spec,
                database_glob=db_glob.strip(),
                table_glob=table_glob.strip() if colon else None,
                target=target,
            )
        )
    if problems:
        raise ConfigError(
            "--default-target: " + "; ".join(problems),
            hint="e.g. --default-target 'data/metrics*.db=analytics' "
            "--default-target 'data/jarvis.db:cache_*=cache' (first match wins)",
        )
    return out


def apply_defaults(rows: list[MappingRow], defaults: list[DefaultTarget]) -> Defaulted:
    """Fill each empty target cell from the first default that matches its row; a cell
    already decided is never changed. A default matching no table at all is a note: it is
    probably a mistyped glob, but it does no harm."""
    matched = {d.spec: 0 for d in defaults}
    out, filled = [], 0
    for r in rows:
        hits = [d for d in defaults if d.matches(r)]
        for d in hits:
            matched[d.spec] += 1
        if not r.target and hits:
            r = msgspec.structs.replace(r, target=hits[0].target)
            filled += 1
        out.append(r)
    notes = [f"--default-target {spec!r} matches no table" for spec, n in matched.items() if n == 0]
    return Defaulted(rows=out, filled=filled, notes=notes)
