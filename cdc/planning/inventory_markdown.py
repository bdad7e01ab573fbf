"""`database_inventory.md`: the inventory as people read it.

The markdown is the longest of the inventory's outputs and the only one written for eyes,
not scripts: its wording, escaping (backticks, pipes in GitHub tables) and layout change
for reasons of their own, unlike the JSON, CSV and graph beside it in `inventory_report`.
"""

from __future__ import annotations

from cdc.planning.inventory_format import (
    JSON,
    MAPPING,
    DatabaseReport,
    Inventory,
    TableReport,
)


def md_name(name: str) -> str:
    """A name as inline code that survives backticks and newlines (`_cell` for pipes)."""
    name = name.replace("\n", "\\n")
    fence = "``" if "`" in name else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{name}{pad}{fence}"


def _cell(text: str) -> str:
    """GitHub tables split cells on `|`, even inside code spans, unless it is escaped."""
    return text.replace("|", "\\|")


def size_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_markdown(inv: Inventory) -> str:
    parts = [
        "# Database inventory",
        "",
        f"Taken {inv.taken_at} under {md_name(inv.base)} (SQLite {inv.sqlite_version}). "
        f"Machine-readable: `{JSON}`. Mapping to fill in: `{MAPPING}`.",
        "",
        *_md_summary(inv),
        *_md_collisions(inv),
        *_md_mapping(inv),
        "## Databases",
        "",
    ]
    for db in inv.databases:
        parts += _md_database(db)
    parts += _md_skipped(inv)
    return "\n".join(parts).rstrip() + "\n"


def _md_summary(inv: Inventory) -> list[str]:
    tables = [t for db in inv.databases for t in db.tables]
    plain = [t for t in tables if t.kind == "table"]
    count = sum(t.rows or 0 for t in plain)
    differing = sum(1 for c in inv.table_collisions if not c.agree)
    rows = [
        ("databases", len(inv.databases)),
        ("size", size_text(sum(db.size for db in inv.databases))),
        ("tables", len(plain)),
        ("virtual tables", sum(1 for t in tables if t.kind == "virtual")),
        ("shadow tables (not mapped)", sum(1 for t in tables if t.kind == "shadow")),
        ("rows (tables)", count),
        ("tables without a declared key", sum(1 for t in plain if not t.key)),
        ("views", sum(len(db.views) for db in inv.databases)),
        ("triggers", sum(len(db.triggers) for db in inv.databases)),
        ("indexes", sum(len(db.indexes) for db in inv.databases)),
        ("table names in several files", f"{len(inv.table_collisions)} ({differing} differ)"),
        ("index names in several files", len(inv.index_collisions)),
        ("unreadable", len(inv.unreadable)),
        ("skipped files", len(inv.skipped)),
    ]
    return ["## Summary", "", "| | |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _md_database(db: DatabaseReport) -> list[str]:
    facts = [
        db.journal_mode,
        size_text(db.size),
        f"page {db.page_size} x {db.page_count}",
        db.encoding,
        f"user_version {db.user_version}",
    ]
    if db.wal_file:
        facts.append(f"-wal {size_text(db.wal_size or 0)}")
    if db.sqlite_cdc_installed:
        facts.append("sqlite-cdc capture installed")
    out = [f"### {md_name(db.relpath)}", "", " · ".join(facts), ""]
    if db.mappable():
        out += ["| table | rows | key | notes |", "|---|---:|---|---|"]
        for t in db.mappable():
            rows = "?" if t.rows is None else str(t.rows)
            cells = (md_name(t.name), rows, _md_key(t), _md_flags(t))
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    else:
        out += ["No tables.", ""]
    extra = [f"Not checked: {problem}" for problem in db.problems if ": rows not" not in problem]
    if db.reserved:
        extra.append(
            "Named like sqlite-cdc's own objects (rename them before `cdc install`): "
            + ", ".join(md_name(r) for r in db.reserved)
        )
    named = [i for i in db.indexes if i.sql]
    if named:
        extra.append(
            "Indexes: "
            + ", ".join(
                f"{md_name(i.name)} on {md_name(i.table)}" + (" (unique)" if i.unique else "")
                for i in named
            )
        )
    if db.triggers:
        extra.append(
            "Triggers: "
            + ", ".join(
                f"{md_name(tr.name)} on {md_name(tr.table)}"
                + (f" writes {', '.join(md_name(w) for w in tr.writes)}" if tr.writes else "")
                for tr in db.triggers
            )
        )
    if db.views:
        extra.append(
            "Views: "
            + ", ".join(
                md_name(v.name)
                + (f" reads {', '.join(md_name(r) for r in v.reads)}" if v.reads else "")
                for v in db.views
            )
        )
    return out + [f"- {e}" for e in extra] + ([""] if extra else [])


def _md_key(t: TableReport) -> str:
    if t.kind != "table":
        return "—"
    return ", ".join(md_name(k) for k in t.key) if t.key else "none (rowid)"


def _md_flags(t: TableReport) -> str:
    flags = []
    if t.kind == "virtual":
        flags.append(t.module or "virtual")
        if t.content_table:
            flags.append(f"content {md_name(t.content_table)}")
        if t.shadow_tables:
            flags.append(f"{len(t.shadow_tables)} shadow tables")
    if t.autoincrement:
        flags.append("AUTOINCREMENT")
    if t.without_rowid:
        flags.append("WITHOUT ROWID")
    flags += ["UNIQUE(" + ", ".join(md_name(c) for c in u) + ")" for u in t.unique]
    flags += [
        "FK " + ", ".join(md_name(c) for c in fk.columns) + f" → {md_name(fk.ref_table)}"
        for fk in t.foreign_keys
    ]
    generated = [c.name for c in t.columns if c.generated]
    if generated:
        flags.append("generated " + ", ".join(md_name(c) for c in generated))
    if t.problem:
        flags.append(t.problem)
    return "; ".join(flags)


def _md_collisions(inv: Inventory) -> list[str]:
    out = ["## Collisions", ""]
    if not inv.table_collisions and not inv.index_collisions:
        return out + ["No table or index name is used in more than one file.", ""]
    if inv.table_collisions:
        out += ["### Table names in several files", ""]
    for c in inv.table_collisions:
        where = ", ".join(
            f"{md_name(p.database)} ({p.rows if p.rows is not None else '?'} rows)"
            for p in c.places
        )
        verdict = "columns agree" if c.agree else "**columns differ**"
        out.append(f"- {md_name(c.table)}: {verdict}; in {where}")
        for rel, cols in c.missing_columns.items():
            out.append(f"  - {md_name(rel)} lacks {', '.join(md_name(x) for x in cols)}")
        for d in c.type_differences:
            types = ", ".join(
                f"{md_name(t or '(none)')} in {md_name(r)}" for r, t in d.types.items()
            )
            out.append(f"  - {md_name(d.column)} is declared {types}")
        if c.order_differs:
            out.append("  - the same columns in a different order")
        if c.key_differs:
            keys = ", ".join(
                f"({', '.join(p.key) or 'rowid'}) in {md_name(p.database)}" for p in c.places
            )
            out.append(f"  - keys differ: {keys}")
    if inv.index_collisions:
        out += ["", "### Index names in several files", ""]
        for ix in inv.index_collisions:
            where = ", ".join(f"{md_name(p.database)} on {md_name(p.table)}" for p in ix.places)
            out.append(f"- {md_name(ix.index)}: {where}")
    return out + [""]


def _md_mapping(inv: Inventory) -> list[str]:
    if inv.mapping is None:
        return []
    out = ["## Checked against the mapping", "", f"Mapping read: {md_name(inv.mapping)}.", ""]
    out += ["### In the mapping, no longer on disk", ""]
    out += [
        f"- {md_name(v.database)} {md_name(v.table)} (target {v.target or 'empty'})"
        for v in inv.mapping_vanished
    ] or ["None."]
    out += ["", "### Foreign keys across targets", ""]
    for fk in inv.cross_target_foreign_keys:
        cols = ", ".join(md_name(c) for c in fk.columns)
        done = " (drop_foreign_keys: yes)" if fk.dropped else ""
        out.append(
            f"- {md_name(fk.database)} {md_name(fk.table)}({cols}) → "
            f"{md_name(fk.parent)}: {fk.reason}; the child goes to {fk.target}{done}"
        )
    if not inv.cross_target_foreign_keys:
        out.append("None.")
    return out + [""]


def _md_skipped(inv: Inventory) -> list[str]:
    out = ["## Unreadable and skipped files", ""]
    if inv.unreadable:
        out += [f"- **{md_name(u.relpath)}**: {u.kind}: {u.reason}" for u in inv.unreadable]
        out.append("")
    else:
        out += ["Every database was read.", ""]
    counts: dict[str, int] = {}
    for s in inv.skipped:
        reason = "side files (-wal, -shm, -journal)" if s.kind == "side_file" else s.reason
        counts[reason] = counts.get(reason, 0) + 1
    out += [f"Skipped {len(inv.skipped)} files (each listed in `{JSON}`):", ""]
    out += [f"- {reason}: {n}" for reason, n in sorted(counts.items())]
    return out + [""]
