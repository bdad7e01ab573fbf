"""`cdc schema`: the consolidated DDL per target, and the legacy -> target comparison.

The statements come from `cdc.ddl`, the functions the replicator creates the targets with,
so what the operator reviews here is what the target will hold (a test replays the file
into an empty database and compares it with a replicated target).
"""

from __future__ import annotations

import os
from pathlib import Path

from cdc.inventory import TableInfo, affinity
from cdc.planning import ddl, pg_ddl, pg_foreign_keys
from cdc.planning.plan import Plan, SourcePlan, TableMapping
from cdc.postgres.dsn import is_postgres, redacted
from cdc.sqlident import created_name


def write_schema(plan: Plan, out_dir: str | os.PathLike[str]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for target in sorted(plan.targets):
        if is_postgres(plan.targets[target]):
            path = out / f"{target}_schema.sql"
            _write(path, _postgres_schema(plan, target))
            written.append(path)
            continue
        lines = [
            f"-- {target}: {plan.targets[target]}",
            "-- Written by `cdc schema`; the replicator creates the target from these statements.",
            "",
        ]
        for what, stmts in ddl.target_statements(plan, target):
            lines.append(f"-- {what}")
            lines += [s.rstrip() + ";" for s in stmts]
            lines.append("")
        path = out / f"{target}_schema.sql"
        _write(path, "\n".join(lines))
        written.append(path)
    path = out / "schema_comparison.md"
    _write(path, comparison(plan))
    written.append(path)
    return written


def _postgres_schema(plan: Plan, target: str) -> str:
    """A PostgreSQL target's DDL (`cdc.planning.pg_ddl`), with what was left out or refused
    written above each table for review."""
    lines = [
        f"-- {target}: PostgreSQL {redacted(plan.targets[target])}",
        "-- Written by `cdc schema` for review (cdc docs postgres): the apply makes each",
        "-- table as written here; the foreign keys, last, are for after cutover.",
        "",
    ]
    fks = pg_foreign_keys.foreign_key_ddl(plan, target)
    extra = [fks] if fks.statements or fks.notes else []
    for t in [*pg_ddl.target_ddl(plan, target), *extra]:
        lines.append(f"-- {t.what}")
        lines += [f"-- REFUSED: {r}" for r in t.refused]
        lines += [f"-- NOTE: {n}" for n in t.notes]
        lines += [s.rstrip() + ";" for s in t.statements]
        lines.append("")
    return "\n".join(lines)


def comparison(plan: Plan) -> str:
    """Legacy table -> target table, column by column, with what changes on the way."""
    out = ["# Schema comparison: legacy -> consolidated", ""]
    for target in sorted(plan.targets):
        out += [f"## {target}", ""]
        for sp in plan.sources:
            for m in sp.tables:
                if m.target == target:
                    out += _table(plan, sp, m)
            for fm in sp.fts:
                if fm.target == target:
                    info = sp.info(fm.table)
                    content = info.content_table if info else "?"
                    out += [
                        f"### {sp.name}.{fm.table} -> {fm.target_table} (FTS, rebuilt)",
                        "",
                        f"Re-created from its declaration; rebuilt from `{content}` once that "
                        f"table's initial copy is in, then kept current by its "
                        f"{len(info.sync_triggers) if info else 0} trigger(s).",
                        "",
                    ]
    skipped = [
        (sp.name, t, why)
        for sp in plan.sources
        for t, why in [(t, "excluded") for t in sp.excluded]
        + [(t, "virtual, excluded") for t in sp.uncapturable]
    ]
    if skipped:
        out += ["## Not copied", "", "| source | table | why |", "|---|---|---|"]
        out += [f"| {s} | {_md(t)} | {w} |" for s, t, w in skipped]
        out.append("")
    return "\n".join(out)


def _table(plan: Plan, sp: SourcePlan, m: TableMapping) -> list[str]:
    info = sp.info(m.table)
    title = f"### {sp.name}.{m.table} -> {m.target_table}"
    notes = []
    if m.target_table != m.table:
        notes.append("renamed")
    if m.tag_column:
        notes.append(f"merged, tag `{m.tag_column}` = `{m.tag}`")
    out = [title + (f" ({'; '.join(notes)})" if notes else ""), ""]
    if info is None:
        return out + ["(not read)", ""]
    out += [
        "| legacy column | legacy type | key | target column | target type |",
        "|---|---|---|---|---|",
    ]
    if m.tag_column:
        out.append(f"| | | | {_md(m.tag_column)} | (tag, key) |")
    for c in info.columns:
        key = str(info.key.index(c.name) + 1) if c.name in info.key else ""
        ttype = "(untyped)" if m.tag_column else (c.decl_type or "(none)")
        out.append(
            f"| {_md(c.name)} | {_md(c.decl_type) or '(none)'} ({affinity(c.decl_type)}) | "
            f"{key} | {_md(c.name)} | {_md(ttype)} |"
        )
    out.append("")
    out += _constraints(plan, sp, m, info)
    return out


def _constraints(plan: Plan, sp: SourcePlan, m: TableMapping, info: TableInfo) -> list[str]:
    lines = []
    if m.tag_column:
        lines.append(
            "- merged: no declared types, defaults, CHECKs, UNIQUEs, foreign keys or indexes"
        )
    else:
        names = ddl.names(plan, m.target)
        for sql in info.index_sql:
            legacy = created_name(sql)
            new = names.indexes.get((sp.name, m.table, legacy), legacy)
            lines.append(f"- index `{legacy}`" + (f" -> `{new}`" if new != legacy else " (kept)"))
        for fk in info.foreign_keys:
            parent = sp.mapping_of(fk.ref_table)
            holds = parent is not None and parent.target == m.target and not parent.tag_column
            what = f"- foreign key ({', '.join(fk.columns)}) -> `{fk.ref_table}`"
            if holds and parent.target_table != fk.ref_table:
                lines.append(what + f" rewritten to `{parent.target_table}`")
            elif holds:
                lines.append(what + " (kept)")
            else:
                lines.append(
                    what
                    + (
                        " **dropped** (`drop_foreign_keys`)"
                        if m.drop_foreign_keys
                        else " (cannot hold)"
                    )
                )
        if info.autoincrement:
            lines.append("- AUTOINCREMENT: its counter is carried over at cutover")
    return lines + ([""] if lines else [])


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
