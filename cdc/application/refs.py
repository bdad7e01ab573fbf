"""Every reference to a legacy database in Python code, and what the plan makes of it.

`path_refs` and `sql_refs` say what a module writes; this module says what it means for
the consolidation: which legacy file or table it names (or the candidates, when code does
not say enough to tell), where that goes, and what has to change. A reference blocks a
stage until it is fixed or reviewed: a comment `# cdc-refs: reviewed` (a reason may
follow) on its line, on the first line of its statement, or on the line just above,
says a person looked and it is right as it is. What cannot be traced (a path from an
untraceable variable, SQL whose table is interpolated, unparsed SQL, a file that does not
parse) could touch any stage, so it blocks every one until reviewed.
"""

from __future__ import annotations

import io
import os
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import msgspec

from cdc.application import refs_fix
from cdc.application.names import LegacyFile, LegacyNames, TableMove, legacy_names
from cdc.application.path_refs import PathSite, find_paths
from cdc.application.pyscope import Folded, Module, tail_parts
from cdc.application.sql_refs import SqlSite, SqlTable, find_sql
from cdc.config import Config
from cdc.errors import ConfigError, UnreviewedReferences

REVIEWED = re.compile(r"#\s*cdc-refs:\s*reviewed\b")
SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "site-packages", "node_modules", ".tox"}
SKIP_DIRS |= {".mypy_cache", ".ruff_cache", ".pytest_cache", ".eggs"}
CREATE_IF_NOT_EXISTS = (
    "CREATE TABLE IF NOT EXISTS of a moved table: after cutover it would recreate an empty "
    "legacy table"
)
PATH_FROM_VARIABLE = "needs review: path from a variable"


class Becomes(msgspec.Struct, frozen=True):
    """Where a legacy file or table goes."""

    source: str
    target: str | None = None
    path: str | None = None  # the consolidated file
    table: str | None = None  # the table's name there
    tag_column: str | None = None  # a merged table: its rows are told apart by this
    tag: str | None = None


class Reference(msgspec.Struct, frozen=True):
    file: str
    line: int
    end_line: int
    col: int
    kind: str  # "path", "connect", "sql", "python" (a file that does not parse)
    shape: str  # how it is written: "join", "getenv default", "constant", "statement"...
    text: str
    action: str
    root: str | None = None  # a path's root: file, home, cwd, env default, absolute
    written: str | None = None  # a path's folded tail, `data/trading.db`
    table: str | None = None  # the table a SQL reference names
    source: str | None = None  # the legacy source it names, when exactly one
    candidates: list[str] = []  # the sources it may name, when it cannot be told
    becomes: list[Becomes] = []
    origin: str | None = None  # for a path from a variable: where its value comes from
    stages: list[str] = []  # the targets it touches
    blocking: bool = True  # whether, unreviewed, it holds its stages back
    reviewed: bool = False
    fixable: bool = False
    edit: refs_fix.Edit | None = None


class StageSummary(msgspec.Struct, frozen=True):
    target: str
    path: str
    legacy_files: list[str]  # the stage's legacy sources that code references
    references: int
    unreviewed: int  # references that hold the stage back


class RefsReport(msgspec.Struct, frozen=True):
    references: list[Reference]
    stages: list[StageSummary]
    files_scanned: int
    stage: str | None = None

    def ok_for(self, stage: str | None = None) -> bool:
        """No unreviewed reference holds `stage` (every stage, without one) back."""
        return not any(_holds(r, stage) for r in self.references)

    def unreviewed(self, stage: str | None = None) -> list[Reference]:
        return [r for r in self.references if _holds(r, stage)]


def _holds(r: Reference, stage: str | None) -> bool:
    return r.blocking and not r.reviewed and (stage is None or stage in r.stages)


def refs_gate(paths: list[str], cfg: Config, stage: str | None) -> RefsReport:
    """For a cutover: the references the stage would leave pointing at moved data."""
    return find_refs(paths, legacy_names(cfg), stage)


def require_reviewed(paths: list[str], cfg: Config, stage: str) -> int:
    """The cutover's gate (`cdc cutover --refs`), before any fence: the code the stage's
    bots run must not still name what moves. Returns the files read."""
    report = refs_gate(paths, cfg, stage)
    left = report.unreviewed(stage)
    if left:
        first, src = left[0], " ".join(paths)
        raise UnreviewedReferences(
            f"{stage}: {len(left)} unreviewed reference(s) to its legacy files or tables in "
            f"{src} (first: {first.file}:{first.line}: {first.action}); nothing was fenced",
            hint=f"`cdc refs {src} --stage {stage}` lists them: change the code, or mark a "
            "line `# cdc-refs: reviewed` once it is right",
        )
    return report.files_scanned


def find_refs(paths: list[str], names: LegacyNames, stage: str | None = None) -> RefsReport:
    if stage is not None and stage not in names.targets:
        raise ConfigError(
            f"--stage {stage}: no such target (targets: {', '.join(sorted(names.targets))})"
        )
    files = list(python_files(paths))
    if not files:  # a mistyped folder must not pass a gate as "no reference"
        raise ConfigError(f"{' '.join(paths)}: no Python file there; nothing would be checked")
    refs: list[Reference] = []
    creates: list[tuple[Reference, list[str]]] = []
    for path in files:
        refs.extend(_file_refs(path, names, creates))
    refs.extend(_schema_conflicts(creates, names))
    if stage is not None:
        refs = [r for r in refs if stage in r.stages]
    refs.sort(key=lambda r: (r.file, r.line, r.col, r.kind, r.table or "", r.action))
    return RefsReport(refs, _summary(refs, names), len(files), stage)


def python_files(paths: list[str]) -> Iterator[str]:
    """The .py files under the given files and folders, virtualenvs and caches skipped."""
    for p in paths:
        if os.path.isfile(p):
            yield p
            continue
        if not os.path.isdir(p):
            raise ConfigError(f"{p}: no such file or folder")
        for root, dirs, names in os.walk(p):
            dirs[:] = sorted(
                d
                for d in dirs
                if d not in SKIP_DIRS and not os.path.exists(os.path.join(root, d, "pyvenv.cfg"))
            )
            yield from (os.path.join(root, n) for n in sorted(names) if n.endswith(".py"))


def _file_refs(
    path: str, names: LegacyNames, creates: list[tuple[Reference, list[str]]]
) -> list[Reference]:
    try:
        with tokenize.open(path) as f:  # honours a `# -*- coding: ... -*-` line
            source = f.read()
        mod = Module(source, path)
    except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError) as e:
        line = getattr(e, "lineno", None) or 1
        return [
            Reference(
                path,
                line,
                line,
                0,
                "python",
                "file",
                "",
                f"unparsed Python: {e}",
                stages=sorted(names.targets),
            )
        ]
    marked = _reviewed_lines(source)
    out = []
    for site in find_paths(mod):
        ref = _path_ref(path, site, names)
        if ref is not None:
            out.append(_review(ref, marked, {site.line, site.stmt_line}))
    for site in find_sql(mod):
        for ref in _sql_refs(path, site, names):
            ref = _review(ref, marked, {site.line, site.call_line})
            out.append(ref)
            table = next((t for t in site.tables if t.name == ref.table), None)
            if table is not None and table.op.startswith("create") and ref.candidates == []:
                creates.append((ref, table.columns))
    return out


def _reviewed_lines(source: str) -> set[int]:
    lines = set()
    try:
        for tk in tokenize.generate_tokens(io.StringIO(source).readline):
            if tk.type == tokenize.COMMENT and REVIEWED.search(tk.string):
                lines.add(tk.start[0])
    except (tokenize.TokenError, SyntaxError):
        pass
    return lines


def _review(ref: Reference, marked: set[int], lines: set[int]) -> Reference:
    seen = lines | {n - 1 for n in lines}
    return msgspec.structs.replace(ref, reviewed=bool(seen & marked))


# -- paths ------------------------------------------------------------------------------
def _match(names: LegacyNames, tail: str) -> tuple[LegacyFile | list[LegacyFile] | None, bool]:
    """(what the written tail names, whether only its file name matched). The part of the
    path only known at run time is left out; a file name known only at run time names
    nothing."""
    parts = tail_parts(tail)
    known = []
    for p in reversed(parts):
        if "{" in p:
            break
        known.insert(0, p)
    if not known or len(known) < 1 or (parts and "{" in parts[-1]):
        return None, False
    found = names.file_named("/".join(known))
    if found is None and len(known) > 1:
        weak = names.file_named(known[-1])
        return weak, weak is not None
    return found, False


def _path_ref(path: str, site: PathSite, names: LegacyNames) -> Reference | None:
    found, weak = _match(names, site.tail)
    base = dict(
        file=path,
        line=site.line,
        end_line=site.end_line,
        col=site.col,
        kind=site.kind,
        shape=site.shape,
        text=site.text,
        root=site.root,
        written=site.tail,
        origin=site.origin,
    )
    every = sorted(names.targets)
    if found is None:
        if site.review and not site.dynamic and site.root != "unknown":
            return None  # traced to a path that is no legacy file
        if not site.review and not (site.dynamic and "{" in (site.tail.rsplit("/", 1)[-1])):
            return None
        action = PATH_FROM_VARIABLE if site.review else "needs review: file name built at run time"
        return Reference(**base, action=action, stages=every)
    if isinstance(found, list):
        srcs = [f.source for f in found]
        return Reference(
            **base,
            action=f"ambiguous: {len(found)} legacy files are named like this "
            f"({', '.join(f.path for f in found)}); write more of the path or review",
            candidates=srcs,
            becomes=[b for f in found for b in _file_becomes(f, names)],
            stages=sorted({t for f in found for t in f.targets}),
        )
    action, blocking, edit = _file_action(found, names, site, weak)
    return Reference(
        **base,
        action=action,
        source=found.source,
        becomes=_file_becomes(found, names),
        stages=list(found.targets),
        blocking=blocking,
        fixable=edit is not None,
        edit=edit,
    )


def _file_becomes(f: LegacyFile, names: LegacyNames) -> list[Becomes]:
    """Each target the file's tables go to (none: it stays, every table excluded)."""
    return [Becomes(f.source, t, names.targets.get(t)) for t in f.targets] or [Becomes(f.source)]


def _file_action(
    f: LegacyFile, names: LegacyNames, site: PathSite, weak: bool
) -> tuple[str, bool, refs_fix.Edit | None]:
    if site.review:
        return PATH_FROM_VARIABLE, True, None
    if not f.targets:
        return "stays: every table of this file is excluded", False, None
    if len(f.targets) > 1:
        return f"split across targets {', '.join(f.targets)}: open each for its tables", True, None
    target_path = names.targets.get(f.targets[0], "")
    if f.excluded:
        return (
            f"moves to {f.targets[0]} but excluded tables stay on the legacy file "
            f"({', '.join(f.excluded)}): change by hand",
            True,
            None,
        )
    if weak:
        return f"needs review: only the file name matches {f.path}", True, None
    env = f" (if ${site.env} is set, it still wins)" if site.env else ""
    edit = None
    if site.literal is not None and not site.dynamic:
        edit = refs_fix.path_edit(site.literal, f.path, target_path)
    if edit is None:
        return f"rewrite path to {target_path}{env} (by hand)", True, None
    return f"rewrite path{env}", True, edit


# -- SQL --------------------------------------------------------------------------------
def _conn_file(names: LegacyNames, conn: Folded | None) -> LegacyFile | None:
    if conn is None:
        return None
    found, weak = _match(names, conn.text)
    return found if isinstance(found, LegacyFile) and not weak else None


def _elsewhere(names: LegacyNames, conn: Folded | None) -> bool:
    """Whether the statement provably runs on a file that is no legacy file."""
    if conn is None or conn.dynamic or conn.root == "unknown":
        return False
    if _match(names, conn.text)[0] is not None:
        return False
    parts = tail_parts(conn.text)  # a target: its tables are matched by name, as untraced
    return not any(Path(t).parts[-len(parts) :] == tuple(parts) for t in names.targets.values())


def _sql_refs(path: str, site: SqlSite, names: LegacyNames) -> list[Reference]:
    conn = _conn_file(names, site.conn)
    if conn is None and _elsewhere(names, site.conn):
        return []  # runs on a database that is no legacy file (`:memory:`, a target)
    every = sorted(names.targets)
    base = dict(
        file=path,
        line=site.line,
        end_line=site.end_line,
        col=site.col,
        kind="sql",
        shape="statement",
        text=site.text,
    )
    near = list(conn.targets) if conn else every
    out = []
    if site.unparsed is not None:
        out.append(
            Reference(
                **base,
                action=f"unparsed SQL: {site.unparsed}",
                source=conn.source if conn else None,
                stages=near,
            )
        )
    if site.runtime:
        out.append(
            Reference(
                **base,
                action="needs review: SQL built at run time (a table name is interpolated)",
                source=conn.source if conn else None,
                stages=near,
            )
        )
    for table in site.tables:
        ref = _table_ref(base, site, table, conn, names)
        if ref is not None:
            out.append(ref)
    return out


def _table_ref(
    base: dict, site: SqlSite, table: SqlTable, conn: LegacyFile | None, names: LegacyNames
) -> Reference | None:
    low = table.name.lower()
    if conn is not None:
        move = names.table(conn.source, table.name)
        moves = [move] if move else []
        stays = [conn] if move is None and low in {x.lower() for x in conn.excluded} else []
    else:
        moves = names.tables_named(table.name)
        stays = [f for f in names.files if low in {x.lower() for x in f.excluded}]
    if not moves and not stays:
        return None
    said = [(m.source, _table_action(m, table)) for m in moves]
    said += [(f.source, ("stays on the legacy file (excluded)", False)) for f in stays]
    becomes = [
        Becomes(m.source, m.target, m.target_path, m.target_table, m.tag_column, m.tag)
        for m in moves
    ] + [Becomes(f.source) for f in stays]
    candidates = [s for s, _ in said]
    if len({a for _, a in said}) == 1:
        action, blocking = said[0][1]
    else:
        action = "ambiguous table: " + "; ".join(f"{s}: {a}" for s, (a, _) in said)
        blocking = True
    edit = _rename_edit(site, table, moves) if not stays else None
    return Reference(
        **base,
        table=table.name,
        action=action,
        source=candidates[0] if len(candidates) == 1 else None,
        candidates=candidates if len(candidates) > 1 else [],
        becomes=becomes,
        stages=sorted({m.target for m in moves}),
        blocking=blocking,
        fixable=edit is not None,
        edit=edit,
    )


def _table_action(m: TableMove, table: SqlTable) -> tuple[str, bool]:
    if table.op == "create if not exists":
        return CREATE_IF_NOT_EXISTS, True
    if m.merged:
        return (
            f"merged: reads need `WHERE {m.tag_column} = '{m.tag}'`, inserts need the tag column",
            True,
        )
    if m.renamed:
        return f"rename table to {m.target_table}", True
    return f"keeps its name in {m.target}: no SQL change", False


def _rename_edit(site: SqlSite, table: SqlTable, moves: list[TableMove]) -> refs_fix.Edit | None:
    new = {m.target_table for m in moves}
    if (
        site.literal is None
        or site.runtime
        or len(new) != 1
        or any(m.merged or not m.renamed for m in moves)
        or table.op == "create if not exists"
    ):
        return None
    return refs_fix.sql_edit(site.literal, site.offset, site.length, table.name, new.pop())


def _schema_conflicts(
    creates: list[tuple[Reference, list[str]]], names: LegacyNames
) -> list[Reference]:
    """A legacy table two modules create with different columns: whichever runs first
    decides its shape, and after the move only one of them can be right. One table: the
    same name in the same legacy file (or the same candidates); two files' tables of one
    name (merged or renamed apart) are two tables."""
    by_table: dict[tuple, list[tuple[Reference, list[str]]]] = {}
    for ref, cols in creates:
        where = (ref.source,) if ref.source else tuple(ref.candidates)
        by_table.setdefault((where, (ref.table or "").lower()), []).append((ref, cols))
    out = []
    for group in by_table.values():
        shapes = {(r.file, tuple(c)) for r, c in group}
        if len({f for f, _ in shapes}) < 2 or len({c for _, c in shapes}) < 2:
            continue
        said = "; ".join(f"{r.file}:{r.line} ({', '.join(c)})" for r, c in group)
        for ref, _ in group:
            out.append(
                msgspec.structs.replace(
                    ref,
                    action=f"table created in two modules with different schemas: {said}",
                    blocking=True,
                    fixable=False,
                    edit=None,
                )
            )
    return out


def _summary(refs: list[Reference], names: LegacyNames) -> list[StageSummary]:
    out = []
    for target, tpath in sorted(names.targets.items()):
        mine = [r for r in refs if target in r.stages]
        stage_files = {f.source for f in names.stage(target)}
        used = sorted({s for r in mine for s in [r.source, *r.candidates] if s in stage_files})
        held = sum(1 for r in mine if _holds(r, target))
        out.append(StageSummary(target, tpath, used, len(mine), held))
    return out
