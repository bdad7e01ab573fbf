"""The consolidated databases' DDL: one function per object, used both by `cdc schema` (which
writes it for review) and by the replicator (which creates the targets from it), so the file
an operator approved is what the target holds.

Decisions (docs/config.md, "Target tables"):

- A table keeping its own definition gets the legacy CREATE statement, renamed, with each
  FOREIGN KEY pointed at its parent's new name. A key that cannot hold in the target (its
  parent goes elsewhere, is not copied, or is merged) is refused by the plan, or dropped from
  the statement when the rule says `drop_foreign_keys`.
- An index keeps its legacy name when nothing else in the target claims it (a bot that runs
  `CREATE INDEX IF NOT EXISTS` at start-up then finds it, instead of building a second copy);
  otherwise it becomes `<target table>__<index>`. The choice is made over the whole plan of
  the target, so it does not depend on which table the replicator happens to create first.
- A merged table is built: the tag column, the union of every member's columns with
  their declared types (and the DEFAULT its members agree on), PRIMARY KEY(tag, key),
  and the members' indexes and UNIQUE constraints with the tag column leading
  (`merged_index_statements`).
- An external-content FTS table is re-created from its declaration (its `content` option
  following a renamed content table), with the application's triggers that keep it current,
  and rebuilt from its content once that table's initial copy is in (`fts_rebuild`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from cdc.events import ColumnDef, TableSchema
from cdc.inventory import TableInfo, is_strict, stored_type
from cdc.sqlident import (
    created_name,
    fts_options,
    index_terms,
    lit,
    q,
    rename_create_index,
    rename_create_table,
    rename_trigger,
    rename_virtual_table,
    rewrite_foreign_keys,
    tokens,
    unquote,
)

if TYPE_CHECKING:
    from cdc.planning.plan import Plan, SourcePlan, TableMapping

FTS_SHADOWS = ("_data", "_idx", "_docsize", "_config", "_content")


class _Names:
    """Every object name a target will hold, decided once per plan."""

    def __init__(self, plan: Plan, target: str) -> None:
        self.tables: dict[str, str] = {}  # lower name -> what it is
        self.indexes: dict[tuple[str, str, str], str] = {}  # (source, table, index) -> name
        self.triggers: dict[tuple[str, str, str], str] = {}  # (source, fts, trigger) -> name
        idx_claims: dict[str, list[tuple[str, str, str]]] = {}
        trg_claims: dict[str, list[tuple[str, str, str]]] = {}
        for sp in plan.sources:
            for m in sp.tables:
                if m.target != target:
                    continue
                self.tables.setdefault(m.target_table.lower(), f"table {m.target_table}")
                info = sp.info(m.table)
                if m.tag_column is None and info is not None:
                    for sql in info.index_sql:
                        k = (sp.name, m.table, created_name(sql))
                        idx_claims.setdefault(k[2].lower(), []).append(k)
            for fm in sp.fts:
                if fm.target != target:
                    continue
                self.tables[fm.target_table.lower()] = f"FTS table {fm.target_table}"
                for suffix in FTS_SHADOWS:
                    self.tables.setdefault(
                        (fm.target_table + suffix).lower(), f"FTS table {fm.target_table}"
                    )
                info = sp.info(fm.table)
                for sql in info.sync_triggers if info else []:
                    k = (sp.name, fm.table, created_name(sql))
                    trg_claims.setdefault(k[2].lower(), []).append(k)
        owner = {k: _owner(plan, k[0], k[1]) for ks in idx_claims.values() for k in ks}
        for low, ks in idx_claims.items():
            for k in ks:
                keep = len(ks) == 1 and low not in self.tables and low not in trg_claims
                self.indexes[k] = k[2] if keep else f"{owner[k]}__{k[2]}"
        for low, ks in trg_claims.items():
            for k in ks:
                keep = len(ks) == 1 and low not in self.tables and low not in idx_claims
                fts_name = _fts_target(plan, k[0], k[1])
                self.triggers[k] = k[2] if keep else f"{fts_name}__{k[2]}"

    def clashes(self, target: str) -> list[str]:
        seen: dict[str, list[str]] = {}
        for low, what in self.tables.items():
            seen.setdefault(low, []).append(what)
        for (source, table, idx), name in self.indexes.items():
            seen.setdefault(name.lower(), []).append(f"index {idx} of {source}.{table}")
        for (source, table, trg), name in self.triggers.items():
            seen.setdefault(name.lower(), []).append(f"trigger {trg} of {source}.{table}")
        return [
            f"{target}: the name {low!r} is taken by {' and by '.join(whats)}; rename a "
            "table (`as`) so the target's names stay unique"
            for low, whats in sorted(seen.items())
            if len(whats) > 1
        ]


def _owner(plan: Plan, source: str, table: str) -> str:
    m = plan.mapping(source, table)
    return m.target_table if m else table


def _fts_target(plan: Plan, source: str, fts: str) -> str:
    sp = plan.source(source)
    return next((m.target_table for m in sp.fts if m.table == fts), fts)


def names(plan: Plan, target: str) -> _Names:
    cache = plan.__dict__.setdefault("_ddl_names", {})
    if target not in cache:
        cache[target] = _Names(plan, target)
    return cache[target]


def check_names(plan: Plan) -> list[str]:
    """Index and trigger names that would clash in a target even after renaming."""
    return [p for t in sorted(plan.targets) for p in names(plan, t).clashes(t)]


def table_statements(
    plan: Plan, m: TableMapping, schema: TableSchema, taken: set[str] = frozenset()
) -> list[str]:
    """The statements that create `m`'s target table from `schema` (the table as the log
    last described it) and its indexes. `taken`: lowercased names the target already holds,
    for an index the plan did not know about (a bot created it after the plan)."""
    if m.tag_column is not None:
        return [merged_table_statement(plan, m, schema), *merged_index_statements(plan, m)]
    return [create_table_statement(plan, m, schema)] + [
        sql for _, _, sql in index_statements(plan, m, schema, taken)
    ]


def create_table_statement(plan: Plan, m: TableMapping, schema: TableSchema) -> str:
    """A copied table's own CREATE statement, renamed, its foreign keys re-pointed."""
    sql = rewrite_foreign_keys(schema.create_sql, _parent_name(plan.source(m.source), m))
    return rename_create_table(sql, m.target_table)


def index_statements(
    plan: Plan,
    m: TableMapping,
    schema: TableSchema,
    taken: set[str] = frozenset(),
    named: dict[str, str] | None = None,
) -> list[tuple[str, str, str]]:
    """(legacy name, target name, CREATE INDEX) for each index of a copied table.

    `named`: lowercased legacy name -> the name the target already gave that index (an
    index created earlier keeps its name, even where the rule would pick another now that
    the name is taken: by itself)."""
    n = names(plan, m.target)
    out = []
    for isql in schema.index_sql:
        legacy = created_name(isql)
        new = (named or {}).get(legacy.lower()) or n.indexes.get((m.source, m.table, legacy))
        if new is None:
            low = legacy.lower()
            free = low not in taken and low not in n.tables and not _claimed(n, low)
            new = legacy if free else f"{m.target_table}__{legacy}"
        out.append((legacy, new, rename_create_index(isql, new, m.target_table)))
    return out


def _claimed(n: _Names, low: str) -> bool:
    return any(v.lower() == low for v in n.indexes.values()) or any(
        v.lower() == low for v in n.triggers.values()
    )


def _parent_name(sp: SourcePlan, m: TableMapping):  # noqa: ANN202
    def parent(name: str) -> str | None:
        p = sp.mapping_of(name)
        if p is not None and p.target == m.target and p.tag_column is None:
            return p.target_table
        return None if m.drop_foreign_keys else name

    return parent


def _members(plan: Plan, m: TableMapping) -> list[tuple[TableMapping, TableInfo | None]]:
    return [
        (mm, sp.info(mm.table))
        for sp in plan.sources
        for mm in sp.tables
        if mm.target == m.target and mm.target_table.lower() == m.target_table.lower()
    ]


def merged_table_statement(plan: Plan, m: TableMapping, schema: TableSchema | None) -> str:
    """Every member's columns at once (members in source order, then any column the live
    schema has that the plan did not), so the table does not depend on arrival order.

    Each column keeps its declared type (members of a merge agree on affinity, the plan
    checks it), so a bot writing after cutover stores what the legacy table would have
    stored; and the DEFAULT every member that has the column declares alike (members
    that disagree get none: no one value is right for both)."""
    key = list(schema.key) if schema else []
    members = _members(plan, m)
    for _, info in members:
        if info is not None and not key:
            key = list(info.key)
    cols: dict[str, ColumnDef] = {}
    defaults: dict[str, set[str | None]] = {}
    every = [(c, is_strict(i.create_sql)) for _, i in members if i for c in i.columns]
    if schema:
        every += [(c, is_strict(schema.create_sql)) for c in schema.columns]
    for c, strict in every:
        low = c.name.lower()
        cols.setdefault(low, ColumnDef(c.name, stored_type(c.decl_type, strict), c.default))
        defaults.setdefault(low, set()).add(c.default)
    defs = [q(m.tag_column) + " NOT NULL"]
    for low, c in cols.items():
        (default,) = defaults[low] if len(defaults[low]) == 1 else (None,)
        words = (q(c.name), declared(c.decl_type), f"DEFAULT {default}" if default else "")
        defs.append(" ".join(w for w in words if w))
    pk = ", ".join(q(k) for k in [m.tag_column, *key])
    return f"CREATE TABLE IF NOT EXISTS {q(m.target_table)} ({', '.join(defs)}, PRIMARY KEY ({pk}))"


_PLAIN_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]*(\(\s*[+-]?\d+(\s*,\s*[+-]?\d+)?\s*\))?")
_CLAUSE_WORDS = {
    "PRIMARY", "KEY", "NOT", "NULL", "UNIQUE", "CHECK", "DEFAULT", "COLLATE", "REFERENCES",
    "GENERATED", "AS", "CONSTRAINT", "ON", "CONFLICT", "AUTOINCREMENT", "ALWAYS", "STORED",
    "VIRTUAL", "ASC", "DESC",
}  # fmt: skip


def declared(decl_type: str) -> str:
    """A declared type as a column definition writes it. PRAGMA table_info gives it
    unquoted (`x "INT; DROP TABLE t"` has the type `INT; DROP TABLE t`), so anything but
    plain words (`VARCHAR(20)`, `UNSIGNED BIG INT`) is quoted back as one identifier:
    SQLite keeps that text as the type, and takes the affinity from it."""
    if not decl_type:
        return ""
    plain = _PLAIN_TYPE.fullmatch(decl_type) and not (
        {w.upper() for w in re.findall(r"\w+", decl_type)} & _CLAUSE_WORDS
    )
    return decl_type if plain else q(decl_type)


def merged_index_statements(plan: Plan, m: TableMapping) -> list[str]:
    """The members' indexes on the merged table, the tag column leading (a member's
    query then reads its own slice of the index, as it read its own table's).

    A UNIQUE constraint (declared inline or as an index) every member has becomes one
    UNIQUE index: with the tag leading it binds each member's rows among themselves, as
    in the legacy files. One only some members have binds only their rows (a partial
    index on their tags): the others' legacy rows may repeat those values, and a REPLACE
    through a constraint they never had would delete their rows. A partial UNIQUE index
    of a member becomes a plain index here (its predicate is the member's own). The same
    terms from several members make one index."""
    members = [(mm, i) for mm, i in _members(plan, m) if i is not None and i.kind == "table"]
    tags = {mm.tag for mm, _ in members}
    tt, tag = m.target_table, q(m.tag_column)
    uniques: dict[str, tuple[str, list[str], list[str]]] = {}  # terms -> (name, terms, tags)
    plain: dict[str, str] = {}  # what follows ON, lowercased -> statement
    for mm, info in members:
        for name, terms in _unique_terms(info):
            k = ",".join(" ".join(tokens(t)).lower() for t in terms)
            uniques.setdefault(k, (name, terms, []))[2].append(mm.tag)
        for isql in info.index_sql:
            if _unique_index(isql) and not _partial(isql):
                continue
            sql = rename_create_index(isql, f"{tt}__{created_name(isql)}", tt)
            sql = sql.replace("CREATE UNIQUE INDEX", "CREATE INDEX", 1)
            on = sql.index(f" ON {q(tt)}") + len(f" ON {q(tt)}")
            sql = sql[:on] + sql[on:].replace("(", f"({tag}, ", 1)
            plain.setdefault(sql[on:].lower(), sql)
    out = []
    for name, terms, having in uniques.values():
        where = "" if set(having) == tags else f" WHERE {tag} IN ({', '.join(map(lit, having))})"
        out.append(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {q(f'{tt}__{name}')} ON {q(tt)} "
            f"({', '.join([tag, *terms])}){where}"
        )
    return out + list(plain.values())


def _unique_terms(info: TableInfo) -> list[tuple[str, list[str]]]:
    """(name, terms as written) of each UNIQUE that binds all of a table's rows: its
    non-partial unique indexes, then its inline constraints (`unique_sets` has both;
    a set whose columns an index names is that index's)."""
    out: list[tuple[str, list[str]]] = []
    named: set[tuple[str, ...]] = set()
    for isql in info.index_sql:
        if _unique_index(isql):
            terms = index_terms(isql)
            named.add(tuple(unquote(tokens(t)[0]).lower() for t in terms if tokens(t)))
            if not _partial(isql):
                out.append((created_name(isql), terms))
    colls = info.unique_collations or [["BINARY"] * len(c) for c in info.unique_sets]
    for cols, cs in zip(info.unique_sets, colls, strict=False):
        if tuple(c.lower() for c in cols) in named:
            continue
        terms = [
            q(c) + ("" if k.upper() == "BINARY" else f" COLLATE {k}")
            for c, k in zip(cols, cs, strict=False)
        ]
        out.append(("unique_" + "_".join(cols), terms))
    return out


def _unique_index(sql: str) -> bool:
    return "UNIQUE" in (w.upper() for w in tokens(sql)[:3])


def _partial(sql: str) -> bool:
    return any(w.upper() == "WHERE" for w in tokens(sql))


def fts_statements(plan: Plan, fm: TableMapping) -> list[str]:
    """The FTS table and the application's triggers that keep it current, re-homed."""
    sp = plan.source(fm.source)
    info = sp.info(fm.table)
    if info is None or info.content_table is None:
        return []
    content = sp.mapping_of(info.content_table)
    content_name = content.target_table if content else info.content_table
    opts = {"content": content_name} if "content" in fts_options(info.create_sql) else {}
    out = [rename_virtual_table(info.create_sql, fm.target_table, opts)]
    renames = {info.content_table: content_name, info.name: fm.target_table}
    n = names(plan, fm.target)
    for tsql in info.sync_triggers:
        legacy = created_name(tsql)
        out.append(
            rename_trigger(tsql, n.triggers.get((fm.source, fm.table, legacy), legacy), renames)
        )
    return out


def fts_rebuild(fm: TableMapping) -> str:
    return f"INSERT INTO {q(fm.target_table)}({q(fm.target_table)}) VALUES('rebuild')"


def fts_of(plan: Plan, source: str, table: str) -> list[TableMapping]:
    """FTS tables of `source` whose content is `table`."""
    try:
        sp = plan.source(source)
    except KeyError:
        return []
    out = []
    for fm in sp.fts:
        info = sp.info(fm.table)
        if info and info.content_table and info.content_table.lower() == table.lower():
            out.append(fm)
    return out


def target_statements(plan: Plan, target: str) -> list[tuple[str, list[str]]]:
    """(object described, statements) for every object of one target, as `cdc schema`
    writes them: from the legacy files as the plan read them."""
    out: list[tuple[str, list[str]]] = []
    done: set[str] = set()
    for sp in plan.sources:
        for m in sp.tables:
            if m.target != target:
                continue
            info = sp.info(m.table)
            if info is None:
                continue
            if m.tag_column is not None:
                if m.target_table.lower() in done:
                    continue
                done.add(m.target_table.lower())
                statements = [merged_table_statement(plan, m, None)]
                out.append(
                    (
                        f"merged table {m.target_table}",
                        statements + merged_index_statements(plan, m),
                    )
                )
                continue
            out.append((f"{sp.name}.{m.table}", table_statements(plan, m, _schema(sp.name, info))))
        for fm in sp.fts:
            if fm.target == target:
                out.append((f"{sp.name}.{fm.table} (FTS)", fts_statements(plan, fm)))
    return out


def _schema(source: str, info: TableInfo) -> TableSchema:
    return info.to_schema(source)
