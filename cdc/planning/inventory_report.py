"""`cdc inventory`: the files an operator plans a migration with, from one survey.

Outputs, all in one folder and each written atomically (temporary file, then rename), so a
crash or a full disk never leaves half a mapping behind, even when `--mapping` names the
file being rewritten:

- `database_inventory.md`: for people (summary, per-database tables, collisions, what was
  skipped or unreadable; `inventory_markdown`);
- `inventory.json`: for scripts (`cdc.planning.inventory_format`, `format_version`);
- `migration_mapping.csv`: one row per mappable table for the operator to fill in
  (`cdc.mapping`); an earlier mapping's decisions are carried over;
- `dependencies.dot` and `dependencies.svg`: what depends on what inside each database,
  which is what a mapping must not tear apart. Graphviz draws the SVG when `dot` is
  installed; without it the tool draws a plainer one itself (`cdc.planning.graph_svg`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from cdc.errors import ConfigError
from cdc.planning.collisions import annotate_rows
from cdc.planning.dependency_graph import dependency_graph
from cdc.planning.dependency_graph import render_dot as graph_dot
from cdc.planning.graph_svg import render_svg
from cdc.planning.inventory_format import (
    DOT,
    JSON,
    MAPPING,
    MARKDOWN,
    SVG,
    CrossTargetForeignKey,
    Inventory,
    TableReport,
    VanishedTable,
)
from cdc.planning.inventory_markdown import render_markdown
from cdc.planning.mapping import EXCLUDE, MappingRow, read_mapping, source_names, write_mapping
from cdc.planning.survey import Progress, take_inventory
from cdc.planning.targets import apply_defaults, check_target_names, parse_defaults, split_targets

DOT_TIMEOUT_S = 120


class MappingMerge(msgspec.Struct, frozen=True):
    rows: list[MappingRow]
    vanished: list[VanishedTable] = []
    kept_unread: list[str] = []  # databases not read this time whose old rows were kept


class InventoryRun(msgspec.Struct, frozen=True):
    inventory: Inventory
    out_dir: str
    written: list[str]  # file names inside out_dir
    notes: list[str] = []  # things the operator should know that are not errors


def run_inventory(
    roots: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] = ".",
    mapping: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    busy_timeout_ms: int = 5000,
    targets: Iterable[str] | None = None,
    defaults: Iterable[str] | None = None,
) -> InventoryRun:
    """Survey `roots` and write every output into `out_dir`. `targets` are recorded for
    `cdc plan` (without them, an earlier inventory.json's in `out_dir` are kept); `defaults`
    (`GLOB=TARGET`) prefill the sheet's empty target cells for the operator to review."""
    if mapping is None:
        refuse_to_clobber(Path(out_dir) / MAPPING)
    notes: list[str] = []
    names = split_targets(targets) or _previous_targets(Path(out_dir) / JSON, notes)
    rules = parse_defaults(defaults, check_target_names(names, "--target"))
    old = read_mapping(mapping) if mapping is not None else None  # before anything is written
    inv = take_inventory(roots, progress, busy_timeout_ms)
    merged = merge_mapping(inv, old)
    rows = annotate_rows(inv.databases, merged.rows)
    if rules:
        filled = apply_defaults(rows, rules)
        rows = filled.rows
        notes += filled.notes
        notes.append(
            f"--default-target filled {filled.filled} empty target cell(s): review them "
            f"in {MAPPING}"
        )
    inv = msgspec.structs.replace(inv, targets=names)
    if mapping is not None:
        inv = msgspec.structs.replace(
            inv,
            mapping=os.path.abspath(mapping),
            mapping_vanished=merged.vanished,
            cross_target_foreign_keys=cross_target_foreign_keys(inv, rows),
        )
    out = Path(out_dir).resolve()
    notes += [
        f"{rel}: not read this time; its rows of the old mapping are kept as they were"
        for rel in merged.kept_unread
    ]
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = _write_all(inv, rows, out, notes)
    except OSError as e:
        raise ConfigError(f"{out}: cannot write the inventory: {e}") from e
    return InventoryRun(inventory=inv, out_dir=str(out), written=written, notes=notes)


class _Targets(msgspec.Struct):
    targets: list[str] = []


def _previous_targets(path: Path, notes: list[str]) -> list[str]:
    """A re-run without --target keeps the targets named before: they are decided once,
    and dropping them would make the next `cdc plan` refuse for no reason."""
    try:
        names = msgspec.json.decode(path.read_bytes(), type=_Targets).targets
    except (OSError, msgspec.DecodeError):
        return []
    if names:
        notes.append(f"targets {', '.join(names)} kept from {path} (--target changes them)")
    return names


def refuse_to_clobber(path: Path) -> None:
    """A mapping the operator has started filling in is never replaced by a blank one."""
    if not path.exists():
        return
    hint = f"pass --mapping {path} to carry its decisions over, or move it away"
    try:
        rows = read_mapping(path)
    except ConfigError as e:
        raise ConfigError(f"{path} exists and is not a mapping: {e}", hint=hint) from e
    names = source_names(sorted({r.database for r in rows}))
    decided = [r for r in rows if _decided(r) or r.source != names[r.database]]
    if decided:
        raise ConfigError(f"{path} exists and holds {len(decided)} filled-in rows", hint=hint)


def _decided(r: MappingRow) -> bool:
    return bool(
        r.target or r.as_ or r.merge or r.tag_column or r.tag or r.drop_foreign_keys or r.note
    )


def _write_all(inv: Inventory, rows: list[MappingRow], out: Path, notes: list[str]) -> list[str]:
    atomic_write(out / MARKDOWN, lambda p: p.write_text(render_markdown(inv), encoding="utf-8"))
    atomic_write(out / JSON, lambda p: p.write_bytes(render_json(inv)))
    atomic_write(out / MAPPING, lambda p: write_mapping(rows, p))
    atomic_write(out / DOT, lambda p: p.write_text(render_dot(inv), encoding="utf-8"))
    written = [MARKDOWN, JSON, MAPPING, DOT]
    problem = write_svg(out / DOT, out / SVG)
    if problem:  # no Graphviz, or it failed: draw it ourselves, plainer but always there
        atomic_write(out / SVG, lambda p: p.write_text(render_svg(dependency_graph(inv))))
        notes.append(f"{problem}; drew {SVG} without Graphviz (a plainer layout)")
    written.append(SVG)
    return written


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder and rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render_json(inv: Inventory) -> bytes:
    return msgspec.json.format(msgspec.json.encode(inv), indent=2) + b"\n"


def write_svg(dot_file: Path, svg: Path) -> str | None:
    """Render the graph with Graphviz; the reason it was not rendered, or None."""
    exe = shutil.which("dot")
    if exe is None:
        return (
            f"{SVG} not written: Graphviz `dot` is not on PATH (Debian: apt-get install graphviz)"
        )

    def run(tmp: Path) -> None:
        subprocess.run(
            [exe, "-Tsvg", "-o", str(tmp), str(dot_file)],
            check=True,
            capture_output=True,
            timeout=DOT_TIMEOUT_S,
        )

    try:
        atomic_write(svg, run)
    except subprocess.CalledProcessError as e:
        first = (e.stderr or b"").decode(errors="replace").strip().splitlines()[:1]
        return f"{SVG} not written: dot failed: {' '.join(first) or e.returncode}"
    except subprocess.TimeoutExpired:
        return f"{SVG} not written: dot took over {DOT_TIMEOUT_S} s"
    return None


# -- the mapping ----------------------------------------------------------------------------


def table_kind(t: TableReport) -> str:
    if t.kind == "virtual":
        return "fts5" if t.module.lower() == "fts5" else "virtual"
    return "table"


def merge_mapping(inv: Inventory, old: list[MappingRow] | None) -> MappingMerge:
    """The new mapping: a row per mappable table, keeping every decision an operator made
    in `old` for tables still there. Rows of databases that could not be read this time
    are kept unchanged (an unreadable file must not erase the operator's work)."""
    old = old or []
    previous = {(r.database, r.table.lower()): r for r in old}
    names = source_names([db.relpath for db in inv.databases])
    old_source: dict[str, str] = {}  # per database: a source the operator chose wins
    for r in old:
        chosen = old_source.get(r.database)
        if chosen is None or (chosen == names.get(r.database) and r.source != chosen):
            old_source[r.database] = r.source
    rows: list[MappingRow] = []
    present = set()
    for db in inv.databases:
        for t in db.mappable():
            key = (db.relpath, t.name.lower())
            present.add(key)
            fresh = MappingRow(
                database=db.relpath,
                source=old_source.get(db.relpath, names[db.relpath]),
                table=t.name,
                kind=table_kind(t),
                rows=t.rows,
            )
            before = previous.get(key)
            if before is not None:
                fresh = msgspec.structs.replace(before, table=t.name, kind=fresh.kind, rows=t.rows)
            rows.append(fresh)
    unread = {u.relpath for u in inv.unreadable}
    kept = [r for r in old if r.database in unread]
    vanished = [
        VanishedTable(database=r.database, table=r.table, target=r.target)
        for r in old
        if (r.database, r.table.lower()) not in present and r.database not in unread
    ]
    rows = sorted(rows + kept, key=lambda r: r.database)  # stable: table order kept
    return MappingMerge(
        rows=rows, vanished=vanished, kept_unread=sorted({r.database for r in kept})
    )


def cross_target_foreign_keys(
    inv: Inventory, rows: list[MappingRow]
) -> list[CrossTargetForeignKey]:
    """Foreign keys whose child is mapped somewhere its parent will not be."""
    target = {(r.database, r.table.lower()): r for r in rows}
    out = []
    for db in inv.databases:
        tables = {t.name.lower() for t in db.tables}
        for t in db.mappable():
            child = target.get((db.relpath, t.name.lower()))
            if child is None or child.target in ("", EXCLUDE):
                continue
            for fk in t.foreign_keys:
                parent = target.get((db.relpath, fk.ref_table.lower()))
                parent_target = parent.target if parent else ""
                if fk.ref_table.lower() not in tables:
                    reason = "the parent table does not exist in this file"
                elif parent_target == "":
                    reason = "the parent table is not mapped"
                elif parent_target == EXCLUDE:
                    reason = "the parent table is excluded"
                elif parent_target != child.target:
                    reason = f"the parent table goes to {parent_target}"
                else:
                    continue
                out.append(
                    CrossTargetForeignKey(
                        database=db.relpath,
                        table=t.name,
                        columns=list(fk.columns),
                        parent=fk.ref_table,
                        parent_columns=list(fk.ref_columns),
                        target=child.target,
                        parent_target=parent_target,
                        reason=reason,
                        dropped=child.drop_foreign_keys,
                    )
                )
    return out


# -- dependencies.dot -----------------------------------------------------------------------


def render_dot(inv: Inventory) -> str:
    return graph_dot(dependency_graph(inv))


def summary_lines(run: InventoryRun) -> list[str]:
    """What `cdc inventory` prints on stdout."""
    inv = run.inventory
    tables = [t for db in inv.databases for t in db.mappable()]
    lines = [
        f"inventory: {len(inv.databases)} databases, {len(tables)} tables, "
        f"{sum(t.rows or 0 for t in tables if t.kind == 'table')} rows; "
        f"{len(inv.unreadable)} unreadable, {len(inv.skipped)} files skipped",
        f"collisions: {len(inv.table_collisions)} table names "
        f"({sum(1 for c in inv.table_collisions if not c.agree)} with different columns), "
        f"{len(inv.index_collisions)} index names",
    ]
    lines += [f"unreadable: {u.relpath}: {u.kind}: {u.reason}" for u in inv.unreadable]
    if inv.mapping is not None:
        lines.append(f"in the mapping, no longer on disk: {len(inv.mapping_vanished)}")
        lines += [f"  {v.database}: {v.table}" for v in inv.mapping_vanished]
        lines.append(f"foreign keys across targets: {len(inv.cross_target_foreign_keys)}")
    if inv.targets:
        lines.append(f"targets: {', '.join(inv.targets)}")
    else:
        lines.append("targets: none named (`cdc plan` needs them: --target core,analytics,...)")
    lines.append(f"wrote {', '.join(run.written)} in {run.out_dir}")
    return lines
