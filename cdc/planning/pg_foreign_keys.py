"""A PostgreSQL target's foreign keys, for after cutover (`cdc schema`, `cdc check`).

Foreign keys are not in the tables: SQLite enforces none unless a connection asks for it,
so legacy rows may reference nothing (`cdc check` counts them, `pg_fit.pg_orphans`), and
the apply writes tables in log order, not parents first. They come after every table, in
a part of their own (`foreign_key_ddl`), to run after cutover: each added NOT VALID (the
rows already there are not checked, new ones are), then validated, which names any orphan
left. Only a key whose parent is in the same target and that no tag column would have to
join is carried; the others are a NOTE. The apply gets a table's statements only
(`table_ddl`), never these.
"""

from __future__ import annotations

import msgspec

from cdc.inventory import ForeignKey, TableInfo, is_strict
from cdc.planning.pg_ddl import PgTableDDL
from cdc.planning.plan import Plan, SourcePlan, TableMapping
from cdc.sqlident import q, tokens

_ACTIONS = {a: a for a in ("CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT")}  # NO ACTION: unsaid


class PgForeignKey(msgspec.Struct, frozen=True):
    """A legacy foreign key carried into a PostgreSQL target, for after cutover."""

    source: str
    table: str  # the legacy child and parent, and their columns as each table spells them
    columns: list[str]
    ref_table: str
    ref_columns: list[str]
    name: str  # the constraint's
    child: str  # the target tables
    parent: str
    on_update: str = "NO ACTION"
    on_delete: str = "NO ACTION"
    deferred: bool = False  # DEFERRABLE INITIALLY DEFERRED: a bot may write the parent second

    def statements(self) -> list[str]:
        """Added NOT VALID, so the rows already there (orphans included) do not stop it,
        then validated, which names them if any are left."""
        cols = ", ".join(q(c) for c in self.columns)
        refs = ", ".join(q(c) for c in self.ref_columns)
        return [
            f"ALTER TABLE {q(self.child)} ADD CONSTRAINT {q(self.name)} FOREIGN KEY ({cols}) "
            f"REFERENCES {q(self.parent)} ({refs}){self._actions()} NOT VALID",
            f"ALTER TABLE {q(self.child)} VALIDATE CONSTRAINT {q(self.name)}",
        ]

    def _actions(self) -> str:
        out = ""
        if self.on_delete in _ACTIONS:
            out += " ON DELETE " + _ACTIONS[self.on_delete]
        if self.on_update in _ACTIONS:
            out += " ON UPDATE " + _ACTIONS[self.on_update]
        if self.deferred:
            out += " DEFERRABLE INITIALLY DEFERRED"
        return out


def foreign_key_ddl(plan: Plan, target: str) -> PgTableDDL:
    """The target's foreign keys as statements to run after cutover, with a NOTE for each
    one not carried. Never the apply's: the tables are written in log order."""
    carried, notes = foreign_keys(plan, target)
    return PgTableDDL(
        "foreign keys, to run after cutover (NOT VALID, then VALIDATE: SQLite did not "
        "enforce them, legacy rows may be orphans)",
        [sql for fk in carried for sql in fk.statements()],
        notes,
    )


def foreign_keys(plan: Plan, target: str) -> tuple[list[PgForeignKey], list[str]]:
    """The legacy foreign keys of the target's tables that it can hold, and why each of
    the others cannot (`cdc check` counts the carried ones' orphans: `pg_fit`)."""
    carried: list[PgForeignKey] = []
    notes: list[str] = []
    for sp in plan.sources:
        for m in sp.tables:
            info = sp.info(m.table)
            if m.target != target or info is None or info.kind != "table":
                continue
            deferred = _deferred(info.create_sql, len(info.foreign_keys))
            for fk, later in zip(info.foreign_keys, deferred, strict=True):
                got = _foreign_key(sp, m, info, fk)
                if isinstance(got, str):
                    notes.append(got)
                    continue
                name, n = got.name, 1
                while any(c.name == name for c in carried):
                    n += 1
                    name = f"{got.name}_{n}"
                carried.append(msgspec.structs.replace(got, name=name, deferred=later))
    return carried, notes


def _foreign_key(
    sp: SourcePlan, m: TableMapping, info: TableInfo, fk: ForeignKey
) -> PgForeignKey | str:
    """The key as the target holds it, or why it cannot (a NOTE)."""
    head = f"{sp.name}.{m.table}({', '.join(fk.columns)}) -> {fk.ref_table}"
    parent = sp.mapping_of(fk.ref_table)
    pinfo = sp.info(fk.ref_table)
    if m.drop_foreign_keys:
        return f"{head}: dropped by its rule (drop_foreign_keys)"
    if parent is None or pinfo is None or pinfo.kind != "table":
        return f"{head}: {fk.ref_table} is in no target: not carried"
    if parent.target != m.target:
        return f"{head}: {fk.ref_table} goes to target {parent.target}: not carried"
    merged = [t.target_table for t in (m, parent) if t.tag_column is not None]
    if merged:
        return (
            f"{head}: {merged[0]} is merged (its key leads with its tag column, which the "
            "key would have to join): not carried"
        )
    cols = _spelled(info, fk.columns)
    refs = _spelled(pinfo, fk.ref_columns or pinfo.key)
    if cols is None or refs is None or len(refs) != len(cols):
        return (
            f"{head}: names no columns {fk.ref_table} has as a key (SQLite calls that a "
            "foreign key mismatch): not carried"
        )
    if not _unique_on(pinfo, refs):
        return (
            f"{head}: {fk.ref_table} has no PRIMARY KEY or UNIQUE on ({', '.join(refs)}) "
            "that PostgreSQL makes: not carried"
        )
    for c, r in zip(cols, refs, strict=True):
        ct, rt = _pg_type(m, info, c), _pg_type(parent, pinfo, r)
        if ct != rt:
            return (
                f"{head}: {sp.name}.{m.table}.{c} is {ct}, {fk.ref_table}.{r} is {rt} "
                "(PostgreSQL compares a key with one type): not carried"
            )
    name = f"{m.target_table}__fk_{'_'.join(cols)}"
    return PgForeignKey(
        sp.name, m.table, cols, fk.ref_table, refs, name, m.target_table,
        parent.target_table, fk.on_update.upper(), fk.on_delete.upper(),
    )  # fmt: skip


def _spelled(info: TableInfo, names: list[str]) -> list[str] | None:
    """Columns as the table spells them (SQLite matches names in any case; a quoted
    PostgreSQL name does not); None if one is not there."""
    by = {c.name.lower(): c.name for c in info.columns}
    got = [by.get(n.lower()) for n in names]
    return None if not names or None in got else [g for g in got if g is not None]


def _unique_on(info: TableInfo, cols: list[str]) -> bool:
    """A PostgreSQL key must reference the columns of a PRIMARY KEY or UNIQUE; one that
    compares otherwise than bytes is not made (refused above)."""
    want = {c.lower() for c in cols}
    if want == {k.lower() for k in info.key}:
        return True
    for u, colls in zip(info.unique_sets, info.unique_collations or [], strict=False):
        if want == {c.lower() for c in u} and all(c.upper() == "BINARY" for c in colls):
            return True
    return False


def _pg_type(m: TableMapping, info: TableInfo, column: str) -> str:
    c = next(c for c in info.columns if c.name == column)
    return m.pg_type(c.name, c.decl_type, is_strict(info.create_sql))


def _deferred(create_sql: str, n: int) -> list[bool]:
    """Per foreign key, in `PRAGMA foreign_key_list` order, whether its clause says
    DEFERRABLE INITIALLY DEFERRED (the pragma does not; a bot may rely on it to write a
    child before its parent within a transaction). SQLite numbers the keys from the last
    clause written; all False when the clauses are not the pragma's `n`."""
    up = [w.upper() for w in tokens(create_sql)]
    found: list[bool] = []
    for j, w in enumerate(up):
        if w != "REFERENCES":
            continue
        depth, k, deferred = 0, j + 2, False
        while k < len(up) and not (depth == 0 and up[k] in (",", ")", "REFERENCES")):
            depth += {"(": 1, ")": -1}.get(up[k], 0)
            if up[k - 2 : k + 1] == ["DEFERRABLE", "INITIALLY", "DEFERRED"] and up[k - 3] != "NOT":
                deferred = True
            k += 1
        found.append(deferred)
    return found[::-1] if len(found) == n else [False] * n
