"""A plan file (`--mapping plan.json` / `plan.yaml`): the mapping as an operator who
already has a plan writes it, per database and table instead of one CSV row per table.

It is turned into the very rows the CSV gives (`MappingRow`) and goes through the same
planner, so every refusal of the CSV path applies to it too. What only a plan file can
get wrong (a database or table the inventory does not have, a key or type the format
does not know, a bare table name that is ambiguous) is refused here, every problem at
once, each with where it is in the file (`databases["data/x.db"].tables["t"]`).

    targets: [core, analytics, cache]     # optional
    databases:
      data/jarvis.db:
        target: core                      # for this database's tables not listed below
        tables:
          positions: core                 # short form
          scorecard: {target: analytics, as: scorecards, note: "..."}
    tables:                               # a table name found in exactly one database
      llm_costs: analytics

`about` and `comment` keys (free text) are accepted and ignored at the top and per
database, so a plan can carry its own explanation (the corpus's plan.json does). So are
entries for SQLite's own tables (`sqlite_sequence`): the inventory never lists them, since
SQLite maintains them in each target itself, but a plan written from the files may.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import msgspec

from cdc.errors import ConfigError, PlanError
from cdc.planning.mapping import MappingRow

SUFFIXES = (".json", ".yaml", ".yml")
_TEXT = ("about", "comment")
TOP_KEYS = ("targets", "databases", "tables", *_TEXT)
DATABASE_KEYS = ("target", "tables", *_TEXT)
STR_FIELDS = ("target", "as", "tag_column", "tag", "note")
BOOL_FIELDS = ("merge", "drop_foreign_keys")


class PlanTable(msgspec.Struct, frozen=True):
    name: str
    kind: str = "table"  # table, virtual or shadow (as inventory.json says)


class PlanFile(msgspec.Struct, frozen=True):
    targets: list[str]  # empty: the file names none
    rows: list[MappingRow]  # one per mappable table of the inventory, in its order


def is_plan_file(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def read_plan_file(
    path: str | os.PathLike[str],
    databases: dict[str, list[PlanTable]],
    sources: dict[str, str],
) -> PlanFile:
    """`databases`: the inventory's (relpath -> tables); `sources`: relpath -> source name."""
    data = _load(Path(path))
    r = _Reader(databases)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a plan file is a mapping with `databases` (and `tables`)")
    r.keys("the top level", data, TOP_KEYS)
    targets = r.targets(data.get("targets"))
    r.databases(data.get("databases"))
    r.bare_tables(data.get("tables"))
    if r.problems:
        raise PlanError(
            f"{path}: {len(r.problems)} problem(s) in the plan file:\n  - "
            + "\n  - ".join(r.problems),
            hint='the format: `cdc docs planning` ("A plan file")',
        )
    return PlanFile(targets=targets, rows=r.rows(sources))


def _load(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: plan file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the plan file: {e}") from e
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from e
    import yaml  # only plan files need it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from e


def _q(name: object) -> str:
    return json.dumps(name, ensure_ascii=False) if isinstance(name, str) else repr(name)


def _near(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class _Reader:
    """Walks the parsed file once, collecting problems and the decision per table."""

    def __init__(self, databases: dict[str, list[PlanTable]]) -> None:
        self.inventory = databases
        self.problems: list[str] = []
        self.decided: dict[tuple[str, str], tuple[str, dict]] = {}  # (rel, table) -> where, fields
        self.default: dict[str, str] = {}  # rel -> a database's own target

    def keys(self, where: str, value: dict, allowed: tuple[str, ...]) -> None:
        for k in value:
            if k not in allowed:
                self.problems.append(
                    f"{where}: unknown key {_q(k)} (expected: {', '.join(allowed)})"
                )

    def text(self, where: str, value: object) -> str | None:
        if isinstance(value, str):
            return value
        self.problems.append(f"{where}: expected text, got {type(value).__name__} {value!r}")
        return None

    def targets(self, value: object) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.append(f"targets: expected a list of names, got {value!r}")
            return []
        return [t for i, v in enumerate(value) if (t := self.text(f"targets[{i}]", v))]

    def databases(self, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            self.problems.append("databases: expected a mapping of database path -> entry")
            return
        for rel, entry in value.items():
            where = f"databases[{_q(rel)}]"
            if not isinstance(rel, str) or rel not in self.inventory:
                known = list(self.inventory)
                near = _near(rel, known) if isinstance(rel, str) else ""
                self.problems.append(f"{where}: not a database of the inventory{near}")
                continue
            if isinstance(entry, str):  # `data/x.db: exclude`
                self.default[rel] = entry
                continue
            if not isinstance(entry, dict):
                self.problems.append(f"{where}: expected a target or a mapping, got {entry!r}")
                continue
            self.keys(where, entry, DATABASE_KEYS)
            if "target" in entry and (t := self.text(f"{where}.target", entry["target"])):
                self.default[rel] = t
            self.database_tables(rel, where, entry.get("tables"))

    def database_tables(self, rel: str, where: str, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            self.problems.append(f"{where}.tables: expected a mapping of table -> target")
            return
        for name, spec in value.items():
            at = f"{where}.tables[{_q(name)}]"
            if isinstance(name, str) and name.lower().startswith("sqlite_"):
                continue  # SQLite's own (sqlite_sequence...): kept by SQLite, never mapped
            table = self.table_of(rel, name, at)
            fields = self.fields(at, spec)
            if table is not None and fields is not None:
                self.decided[(rel, table)] = (at, fields)

    def table_of(self, rel: str, name: object, at: str) -> str | None:
        """The inventory's spelling of `name` in `rel` (SQLite names ignore case)."""
        if not isinstance(name, str):
            self.problems.append(f"{at}: a table name must be text (quote it)")
            return None
        tables = self.inventory[rel]
        found = next((t for t in tables if t.name.lower() == name.lower()), None)
        if found is None:
            near = _near(name, [t.name for t in tables])
            self.problems.append(f"{at}: no table {_q(name)} in {rel}{near}")
            return None
        if found.kind == "shadow":
            self.problems.append(f"{at}: a shadow table; it goes with its virtual table")
            return None
        return found.name

    def fields(self, at: str, spec: object) -> dict | None:
        if isinstance(spec, str):
            return {"target": spec}
        if not isinstance(spec, dict):
            self.problems.append(f"{at}: expected a target or a mapping, got {spec!r}")
            return None
        self.keys(at, spec, STR_FIELDS + BOOL_FIELDS)
        out: dict = {}
        for k, v in spec.items():
            if k in STR_FIELDS and (s := self.text(f"{at}.{k}", v)) is not None:
                out[k] = s
            elif k in BOOL_FIELDS:
                if isinstance(v, bool):
                    out[k] = v
                else:
                    self.problems.append(f"{at}.{k}: expected true or false, got {v!r}")
        return out

    def bare_tables(self, value: object) -> None:
        """`tables:` names a table without its database: only where that is unambiguous."""
        if value is None:
            return
        if not isinstance(value, dict):
            self.problems.append("tables: expected a mapping of table -> target")
            return
        for name, spec in value.items():
            at = f"tables[{_q(name)}]"
            if not isinstance(name, str):
                self.problems.append(f"{at}: a table name must be text (quote it)")
                continue
            homes = [
                rel
                for rel, tables in self.inventory.items()
                if any(t.name.lower() == name.lower() and t.kind != "shadow" for t in tables)
            ]
            if len(homes) != 1:
                self.problems.append(
                    f"{at}: in {len(homes)} databases ({', '.join(homes)}): give it under "
                    "`databases` instead"
                    if homes
                    else f"{at}: in no database of the inventory"
                )
                continue
            table = self.table_of(homes[0], name, at)
            fields = self.fields(at, spec)
            if table is None or fields is None:
                continue
            if (homes[0], table) in self.decided:
                self.problems.append(f"{at}: also given at {self.decided[(homes[0], table)][0]}")
                continue
            self.decided[(homes[0], table)] = (at, fields)

    def rows(self, sources: dict[str, str]) -> list[MappingRow]:
        out = []
        for rel, tables in self.inventory.items():
            for t in tables:
                if t.kind == "shadow":
                    continue
                f = self.decided.get((rel, t.name), (None, {}))[1]
                out.append(
                    MappingRow(
                        database=rel,
                        source=sources[rel],
                        table=t.name,
                        kind="table" if t.kind == "table" else "virtual",
                        target=f.get("target", self.default.get(rel, "")),
                        as_=f.get("as", ""),
                        merge=f.get("merge", False),
                        tag_column=f.get("tag_column", ""),
                        tag=f.get("tag", ""),
                        drop_foreign_keys=f.get("drop_foreign_keys", False),
                        note=f.get("note", ""),
                    )
                )
        return out
