"""`cdc plan`: an inventory plus the operator's mapping become a checked `cdc.toml`.

The output is written only when the plan resolves without a single problem, so a
`cdc.toml` made by this command can always be installed. Every problem is reported at
once (a sheet of 100 tables is fixed in one pass, not one error per run). The rules it
writes are literal, one per table, so the file says exactly what the sheet said and a
table that appears later is refused by name instead of matched by accident.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec
import tomli_w

from cdc import exact_text
from cdc.config import Config, expand_sources, load_config
from cdc.errors import ConfigError, PlanError
from cdc.inventory import list_tables
from cdc.planning.collisions import clash_suggestions
from cdc.planning.mapping import EXCLUDE, MappingRow, read_mapping, source_names
from cdc.planning.plan import Plan
from cdc.planning.plan_file import PlanTable, is_plan_file, read_plan_file
from cdc.planning.resolve import resolve_plan
from cdc.planning.targets import (
    apply_defaults,
    choose_targets,
    parse_defaults,
    split_targets,
    unknown_targets,
)
from cdc.sqlconn import open_legacy
from cdc.sqlident import q


class InventoryDatabase(msgspec.Struct):
    path: str
    relpath: str
    tables: list[PlanTable] = []


class InventoryFile(msgspec.Struct):
    """The part of `inventory.json` a plan needs; other fields are ignored."""

    base: str
    databases: list[InventoryDatabase]
    targets: list[str] = []  # `cdc inventory --target`


class PlanResult(msgspec.Struct):
    config_path: str
    plan: Plan
    targets: dict[str, int]  # target -> tables mapped
    excluded: int
    fts: int


def read_inventory(path: str | os.PathLike[str]) -> InventoryFile:
    try:
        return msgspec.json.decode(Path(path).read_bytes(), type=InventoryFile)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: inventory not found", hint="run `cdc inventory DIR` first"
        ) from None
    except (OSError, msgspec.DecodeError) as e:
        raise ConfigError(f"{path}: not a readable inventory.json: {e}") from e


def make_plan(
    inventory: str | os.PathLike[str],
    mapping: str | os.PathLike[str],
    out: str | os.PathLike[str],
    targets: list[str] | None = None,
    targets_dir: str = "consolidated",
    state_dir: str = "cdc-state",
    defaults: list[str] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> PlanResult:
    """Write `out` (a `cdc.toml`) from the inventory and a mapping (CSV, a plan file, or a
    TOML whose `[targets]` and `[[rules]]` are used), or raise PlanError naming every
    problem. `targets` (else the plan file's, else the inventory's) are the only targets
    the mapping may name; `defaults` (`GLOB=TARGET`) fill the rows it leaves empty."""
    inv = read_inventory(inventory)
    out = Path(out).resolve()
    problems: list[str] = []
    rows: list[MappingRow] = []
    if str(mapping).endswith(".toml"):
        data = _from_toml_rules(inv, Path(mapping), out, state_dir)
    else:
        rows, declared = _mapping_rows(inv, mapping, targets, defaults, on_note or (lambda _: None))
        data = _from_rows(inv, rows, out, declared, targets_dir, state_dir, problems)
    text = tomli_w.dumps(data)
    cfg, plan = _check(out, text, problems)
    if plan is not None:
        taken = {t.name.lower() for d in inv.databases for t in d.tables}
        hints = clash_suggestions(rows, taken)
        problems.extend(_with_suggestion(p, hints) for p in plan.problems)
    if problems:
        raise PlanError(
            f"{mapping}: {len(problems)} problem(s); {out.name} not written:\n  - "
            + "\n  - ".join(problems)
        )
    _atomic_write(out, text)
    assert cfg is not None and plan is not None
    counts: dict[str, int] = {t: 0 for t in cfg.targets}
    for sp in plan.sources:
        for m in sp.tables:
            counts[m.target] += 1
    return PlanResult(
        config_path=str(out),
        plan=plan,
        targets=counts,
        excluded=sum(len(s.excluded) + len(s.uncapturable) for s in plan.sources),
        fts=sum(len(s.fts) for s in plan.sources),
    )


def _check(out: Path, text: str, problems: list[str]) -> tuple[Config | None, Plan | None]:
    """Load and resolve the config from the folder it will live in (its relative paths
    resolve from there); what fails is added to `problems`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    probe = out.with_name(f".{out.name}.{os.getpid()}.check")
    probe.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(probe)
    except ConfigError as e:
        problems.append(e.message.split(": ", 1)[-1])
        return None, None
    finally:
        probe.unlink()
    return cfg, resolve_plan(cfg, strict=False)


def _with_suggestion(problem: str, hints: dict[str, str]) -> str:
    low = problem.lower()
    for key, hint in hints.items():
        if low.startswith(f"{key} receives "):
            return f"{problem}; {hint}"
    return problem


def _mapping_rows(
    inv: InventoryFile,
    mapping: str | os.PathLike[str],
    targets: list[str] | None,
    defaults: list[str] | None,
    on_note: Callable[[str], None],
) -> tuple[list[MappingRow], list[str]]:
    """The sheet's rows (or a plan file's, as the same rows), one per table of the
    inventory, with the defaults applied; and the targets they may name."""
    names = source_names([d.relpath for d in inv.databases])
    if is_plan_file(mapping):
        tables = {d.relpath: d.tables for d in inv.databases}
        pf = read_plan_file(mapping, tables, names)
        rows, file_targets = pf.rows, pf.targets
    else:
        rows, file_targets = _complete(inv, read_mapping(mapping), names), []
    declared = choose_targets(split_targets(targets), file_targets, inv.targets)
    rules = parse_defaults(defaults, declared)
    if not rules:
        return rows, declared
    filled = apply_defaults(rows, rules)
    for note in filled.notes:
        on_note(note)
    return filled.rows, declared


def _complete(
    inv: InventoryFile, rows: list[MappingRow], names: dict[str, str]
) -> list[MappingRow]:
    """An empty row for each table the sheet does not list, so a default can fill it
    (undecided, it is still named as unmapped by the plan)."""
    listed = {(r.database, r.table.lower()) for r in rows}
    chosen = {r.database: r.source for r in rows if r.source}
    extra = [
        MappingRow(
            database=d.relpath,
            source=chosen.get(d.relpath, names[d.relpath]),
            table=t.name,
            kind="table" if t.kind == "table" else "virtual",
        )
        for d in inv.databases
        for t in d.tables
        if t.kind != "shadow" and (d.relpath, t.name.lower()) not in listed
    ]
    return rows + extra


def _from_rows(
    inv: InventoryFile,
    rows: list[MappingRow],
    out: Path,
    declared: list[str],
    targets_dir: str,
    state_dir: str,
    problems: list[str],
) -> dict:
    dbs = {d.relpath: d for d in inv.databases}
    names = source_names(list(dbs))
    by_db = _rows_by_database(dbs, rows, problems)
    problems.extend(unknown_targets(rows, declared))
    data: dict = {
        "state_dir": state_dir,
        "targets": {t: f"{targets_dir}/{t}.db" for t in declared},
        "sources": [],
        "rules": [],
    }
    merges: dict[tuple[str, str], list[tuple[MappingRow, str]]] = {}
    for rel, d in dbs.items():
        mine = by_db.get(rel, [])
        name = next((r.source for r in mine if r.source), names[rel])
        data["sources"].append({"name": name, "path": _rel(d.path, out.parent)})
        for r in mine:
            if not r.target:
                continue  # no rule: the plan names the table as unmapped
            data["rules"].append(_rule(name, r, declared, d.path, merges))
    for (target, table), members in sorted(merges.items()):
        problems.append(_tagless_merge(target, table, members))
    return data


def _rows_by_database(
    dbs: dict[str, InventoryDatabase],
    rows: list[MappingRow],
    problems: list[str],
) -> dict[str, list[MappingRow]]:
    by_db: dict[str, list[MappingRow]] = {}
    for r in rows:
        if r.database not in dbs:
            problems.append(
                f"{r.database}: in the mapping but not in the inventory (table {r.table!r})"
            )
            continue
        by_db.setdefault(r.database, []).append(r)
    return by_db


def _rule(
    name: str,
    r: MappingRow,
    declared: list[str],
    path: str,
    merges: dict[tuple[str, str], list[tuple[MappingRow, str]]],
) -> dict:
    """A merge without a tag column is collected into `merges` (with the file's path), so
    that `_tagless_merge` can count the keys its members share."""
    rule: dict = {"source": name, "table": r.table}
    if r.target == EXCLUDE or r.target not in declared:  # unknown: reported above
        rule["exclude"] = True
        return rule
    rule["target"] = r.target
    if r.as_ and r.as_ != r.table:
        rule["as"] = r.as_
    if r.merge:
        rule["merge"] = True
        rule["tag_column"] = r.tag_column or "source"
        if r.tag:
            rule["tag"] = r.tag
        if not r.tag_column:
            key = (r.target, (r.as_ or r.table).lower())
            merges.setdefault(key, []).append((r, path))
    if r.drop_foreign_keys:
        rule["drop_foreign_keys"] = True
    return rule


def _tagless_merge(target: str, table: str, members: list[tuple[MappingRow, str]]) -> str:
    """A merge must name its tag column: without one, rows of different sources that share
    a key would overwrite each other. Count how many do today, so the operator sees it."""
    keys: dict[tuple, list[str]] = {}
    for r, path in members:
        try:
            conn = open_legacy(path, 5000, readonly=True)
        except Exception:  # noqa: BLE001 - the plan reports unreadable files itself
            continue
        try:
            info = next((t for t in list_tables(conn) if t.name == r.table), None)
            if info is None or info.rowid_unreachable():
                continue  # the plan names it (no key to compare by)
            cols = [q(k) for k in info.key] or [info.rowid_alias()]
            for k in exact_text.select(conn, cols, f"FROM {q(r.table)}"):  # any TEXT bytes
                keys.setdefault(tuple(k), []).append(r.database)
        finally:
            conn.close()
    shared = [k for k, where in keys.items() if len(set(where)) > 1]
    names = ", ".join(f"{r.database}:{r.table}" for r, _ in members)
    if shared:
        sample = ", ".join(repr(k[0] if len(k) == 1 else k) for k in sorted(shared, key=repr)[:3])
        return (
            f"{target}.{table}: merge of {names} has no `tag_column`, and {len(shared)} key(s) "
            f"exist in more than one of them (e.g. {sample}): their rows would overwrite each "
            "other; give a tag_column (e.g. `source`)"
        )
    return (
        f"{target}.{table}: merge of {names} has no `tag_column`: no key is shared today, but "
        "nothing stops a bot writing one tomorrow; give a tag_column (e.g. `source`)"
    )


def _from_toml_rules(inv: InventoryFile, path: Path, out: Path, state_dir: str) -> dict:
    """The rules and targets of an existing config, over the inventory's databases. A
    database that config already declares keeps its source name there (its rules name
    sources); any other gets a name derived from its path."""
    cfg: Config = load_config(path)
    derived = source_names([d.relpath for d in inv.databases])
    declared = {os.path.realpath(p): n for n, p, _ in expand_sources(cfg)}
    taken = set(declared.values())
    rules = []
    for r in cfg.rules:
        rule = {k: v for k, v in msgspec.to_builtins(r).items() if v not in (None, False)}
        if rule.get("tag_column") == "source" and not r.merge:
            rule.pop("tag_column")
        rules.append(rule)
    sources = []
    for d in inv.databases:
        name = declared.get(os.path.realpath(d.path))
        if name is None:
            name = derived[d.relpath]
            while name in taken:
                name += "_"
            taken.add(name)
        sources.append({"name": name, "path": _rel(d.path, out.parent)})
    return {
        "state_dir": state_dir,
        "targets": {t: _rel(p, out.parent) for t, p in cfg.targets.items()},
        "sources": sources,
        "rules": rules,
    }


def _rel(path: str, base: Path) -> str:
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:
        return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
