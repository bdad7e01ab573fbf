"""The editable table mapping (`migration_mapping.csv`): one row per legacy table.

The inventory writes it with every table and an empty `target`; the operator fills it in a
spreadsheet; `cdc plan` reads it back. CSV rather than TOML because the people deciding
where 100 tables go want to sort and filter them. A row is never dropped on the way: a
table the CSV does not mention, or mentions with an empty target, is reported by the plan
as unmapped, so the sheet cannot silently lose a table.

Columns (fixed names; order does not matter when reading; unknown columns are refused; the
informational ones may be missing, as in sheets written before they existed):

- `database`: the file's path relative to the inventory's base folder (`/` separators)
- `source`: the source name the plan gives that file (unique; editable)
- `table`: the legacy table name, exactly
- `kind`: `table`, `fts5`, `virtual` (informational)
- `rows`: row count at inventory time (informational)
- `key`: the declared primary key columns joined by `,`, or `rowid` (informational)
- `collides_with`: the other `database:table` entries with this table name, `;`-separated
  (informational)
- `suggested_as`: for a table in a name collision, a unique `<source>_<table>` name to copy
  into `as` when the colliding tables go to one target (informational)
- `target`: a target name, `exclude`, or empty (= not decided: refused by `cdc plan`)
- `as`: target table name (empty: same name)
- `merge`: `yes` when several tables share the target table, told apart by a tag
- `tag_column`, `tag`: the merge's tag column and this table's tag value
- `drop_foreign_keys`: `yes` to drop foreign keys that cannot hold in the target
- `note`: free text, kept
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path, PurePosixPath

import msgspec

from cdc.errors import ConfigError

EXCLUDE = "exclude"
COLUMNS = (
    "database",
    "source",
    "table",
    "kind",
    "rows",
    "key",
    "collides_with",
    "target",
    "as",
    "suggested_as",
    "merge",
    "tag_column",
    "tag",
    "drop_foreign_keys",
    "note",
)
_YES = {"yes", "y", "true", "1", "x"}
_NO = {"", "no", "n", "false", "0"}


class MappingRow(msgspec.Struct, frozen=True):
    database: str
    source: str
    table: str
    kind: str = "table"
    rows: int | None = None
    target: str = ""
    as_: str = ""
    # informational, written by the inventory and ignored by the plan
    key: str = ""
    collides_with: str = ""
    suggested_as: str = ""
    merge: bool = False
    tag_column: str = ""
    tag: str = ""
    drop_foreign_keys: bool = False
    note: str = ""


def write_mapping(rows: list[MappingRow], path: str | os.PathLike[str]) -> None:
    """Write the CSV (UTF-8 with a BOM, so spreadsheet programs read unicode names right)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(
            [
                r.database,
                r.source,
                r.table,
                r.kind,
                "" if r.rows is None else r.rows,
                r.key,
                r.collides_with,
                r.target,
                r.as_,
                r.suggested_as,
                "yes" if r.merge else "",
                r.tag_column,
                r.tag,
                "yes" if r.drop_foreign_keys else "",
                r.note,
            ]
        )
    Path(path).write_text(buf.getvalue(), encoding="utf-8-sig")


def read_mapping(path: str | os.PathLike[str]) -> list[MappingRow]:
    """Read the CSV back; every bad cell is reported at once with its line number."""
    reader = csv.DictReader(io.StringIO(_read_text(path)))
    _check_header(path, reader)
    rows, problems = [], []
    seen: dict[tuple[str, str], int] = {}
    for line, raw in enumerate(reader, start=2):
        cell = {k.strip(): (v or "") for k, v in raw.items() if k is not None}
        if not any(v.strip() for v in cell.values()):
            continue
        where = f"line {line}"
        database = cell.get("database", "").strip()
        table = cell.get("table", "")  # names are exact: no strip
        if not database or not table:
            problems.append(f"{where}: `database` and `table` are required")
            continue
        key = (database, table)
        if key in seen:
            problems.append(
                f"{where}: {database} table {table!r} is listed again (line {seen[key]})"
            )
            continue
        seen[key] = line
        rows.append(_row(cell, database, table, where, problems))
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return rows


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: mapping file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the mapping: {e}") from e


def _check_header(path: str | os.PathLike[str], reader: csv.DictReader) -> None:
    """A misspelt column would otherwise read as empty cells in every row: refused."""
    head = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("database", "table", "target") if c not in head]
    unknown = [h for h in head if h not in COLUMNS]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown column(s) {', '.join(unknown)}")
        raise ConfigError(f"{path}: " + "; ".join(parts) + f" (expected: {', '.join(COLUMNS)})")


def _row(
    cell: dict[str, str], database: str, table: str, where: str, problems: list[str]
) -> MappingRow:
    """A bad yes/no cell is added to `problems` and the row still returned, so that the
    rest of the sheet is checked in the same pass."""
    flags = {}
    for f in ("merge", "drop_foreign_keys"):
        v = cell.get(f, "").strip().lower()
        if v not in _YES | _NO:
            problems.append(f"{where}: `{f}` is {v!r}: use yes or leave it empty")
        flags[f] = v in _YES
    count = cell.get("rows", "").strip()
    return MappingRow(
        database=database,
        source=cell.get("source", "").strip() or source_name(database),
        table=table,
        kind=cell.get("kind", "").strip() or "table",
        rows=int(count) if count.isdigit() else None,
        target=cell.get("target", "").strip(),
        as_=cell.get("as", ""),
        key=cell.get("key", "").strip(),
        collides_with=cell.get("collides_with", "").strip(),
        suggested_as=cell.get("suggested_as", ""),
        merge=flags["merge"],
        tag_column=cell.get("tag_column", ""),
        tag=cell.get("tag", ""),
        drop_foreign_keys=flags["drop_foreign_keys"],
        note=cell.get("note", ""),
    )


_NOT_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


def source_name(relpath: str) -> str:
    """A source name from a relative path: its stem, with characters a name cannot hold
    replaced (`data/jarvis_admin.db` -> `jarvis_admin`)."""
    return _clean(PurePosixPath(relpath).stem or PurePosixPath(relpath).name)


def source_names(relpaths: list[str]) -> dict[str, str]:
    """A unique source name per path: the stem, or, where stems collide, as many parent
    folders as it takes (`bots/a/x.db`, `bots/b/x.db` -> `a_x`, `b_x`)."""
    out: dict[str, str] = {}
    depth = {p: 1 for p in relpaths}
    while True:
        names = {p: _name_at(p, depth[p]) for p in relpaths}
        counts: dict[str, int] = {}
        for n in names.values():
            counts[n] = counts.get(n, 0) + 1
        clash = [p for p in relpaths if counts[names[p]] > 1]
        grow = [p for p in clash if depth[p] < len(PurePosixPath(p).parts)]
        if not grow:
            out = names
            break
        for p in grow:
            depth[p] += 1
    seen: dict[str, int] = {}
    for p in relpaths:  # still equal (e.g. `a.db` and `a.sqlite`): number them
        n = out[p]
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            out[p] = f"{n}_{seen[n]}"
    return out


def _name_at(relpath: str, depth: int) -> str:
    parts = list(PurePosixPath(relpath).parts)
    parts[-1] = PurePosixPath(parts[-1]).stem or parts[-1]
    return _clean("_".join(parts[-depth:]))


def _clean(name: str) -> str:
    name = _NOT_NAME.sub("_", name)
    return name if name and re.match(r"[A-Za-z0-9_]", name) else "_" + name
