"""A target table following its source's shape when that shape changes other than by
adding columns: a column renamed or dropped, a key or a declared type changed, an index
created or dropped.

Only indexes can change under rows. Every other change reaches a copied table only as a
rebuild from the source's new definition, and only while the target holds none of that
source table's rows: the harvester writes a `TableReset` before the schema of a re-copied
table, so the rows of the old shape are gone and the new copy follows. A schema that
narrows a table still holding rows (a log written before re-copies existed) is refused by
name: applying it would keep old values in a column the source no longer has.

A merged table is never rebuilt (other sources' rows live in it): a column one member
lost stays in the union, where that member's rows, re-copied after the reset, hold NULL;
a member whose column changes affinity is refused by name (the merged column's declared
type would store its values differently).
"""

from __future__ import annotations

import logging

import apsw
import msgspec

from cdc.capture import triggers as capture
from cdc.errors import TargetError
from cdc.events import TableSchema
from cdc.inventory import affinity, is_strict, stored_type, table_info
from cdc.planning import ddl
from cdc.planning.plan import Plan, TableMapping
from cdc.sqlident import created_name, q

log = logging.getLogger(__name__)

REFUSED_HINT = (
    "the change log was written before renamed and dropped columns were copied again: "
    "start over for this target (`cdc docs runbook`, Starting over)"
)


class AppliedIndex(msgspec.Struct, frozen=True, array_like=True):
    """An index we created for a copied table: its legacy name, its name here, the SQL."""

    legacy: str
    name: str
    sql: str


def holds_rows(conn: apsw.Connection, m: TableMapping) -> bool:
    """Whether the target holds any row of `m`'s source table."""
    where, args = "", ()
    if m.tag_column is not None:
        where, args = f" WHERE {q(m.tag_column)} IS ?", (m.tag,)
    sql = f"SELECT 1 FROM {q(m.target_table)}{where} LIMIT 1"
    return conn.execute(sql, args).fetchone() is not None


def columns_of(conn: apsw.Connection, table: str) -> list[tuple[str, str]]:
    """(name, declared type) of the stored columns (generated ones are computed here)."""
    return [(r[1], r[2]) for r in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]


def key_of(conn: apsw.Connection, table: str) -> list[str]:
    rows = conn.execute("SELECT name, pk FROM pragma_table_info(?) WHERE pk > 0", (table,))
    return [name for name, _ in sorted(rows, key=lambda r: r[1])]


def check_merged(
    conn: apsw.Connection, path: str, schema: TableSchema, m: TableMapping, old: list[str] | None
) -> None:
    """A merged table is never rebuilt: refuse a member whose key no longer is the table's
    (`PRIMARY KEY(tag, key)`), or that lost columns while its rows are still here."""
    key = key_of(conn, m.target_table)
    if [k.lower() for k in key] != [k.lower() for k in [m.tag_column, *schema.key]]:
        raise TargetError(
            f"{path}: the key of {m.source}.{m.table} is now ({', '.join(schema.key)}), "
            f"{m.target_table} is keyed ({', '.join(key)})",
            hint="a merged table keeps its members' key: map this table elsewhere",
        )
    declared = {n.lower(): d for n, d in columns_of(conn, m.target_table)}
    strict = is_strict(schema.create_sql)
    for c in schema.columns:
        have = declared.get(c.name.lower())
        if have and affinity(have) != affinity(stored_type(c.decl_type, strict)):
            raise TargetError(
                f"{path}: column {c.name} of {m.source}.{m.table} is now declared "
                f"{c.decl_type or '(no type)'} ({affinity(c.decl_type)} affinity), the merged "
                f"{m.target_table}.{c.name} is {have} ({affinity(have)}): its values would "
                "be stored differently",
                hint="a merged table keeps its members' column types: map this table elsewhere",
            )
    now = {c.name.lower() for c in schema.columns}
    gone = [c for c in old or [] if c.lower() not in now]
    if gone and holds_rows(conn, m):
        raise TargetError(_narrowed(path, m, gone, "no longer has"), hint=REFUSED_HINT)


def _narrowed(path: str, m: TableMapping, gone: list[str], what: str) -> str:
    cols = ", ".join(repr(c) for c in gone)
    return (
        f"{path}: {m.source}.{m.table} {what} column(s) {cols} of {m.target_table}, and "
        f"{m.target_table} still holds its rows (no reset came before this schema)"
    )


def needs_rebuild(
    conn: apsw.Connection, path: str, schema: TableSchema, m: TableMapping, old_sql: str
) -> bool:
    """Whether an existing copied table must be built again for `schema`; raises when it
    must but still holds rows. Adding columns at the end is not a rebuild (`ADD COLUMN`).

    `old_sql`: the source definition the previous schema carried. While the table holds
    none of the source's rows (right after a reset), a definition that moved in any way
    (a constraint, a key, WITHOUT ROWID) is rebuilt too: it costs nothing then, and the
    table is the source's again."""
    t = m.target_table
    have = columns_of(conn, t)
    want = [(c.name, c.decl_type) for c in schema.columns]
    same_key = key_of(conn, t) == list(schema.key)
    additive = same_key and want[: len(have)] == have
    moved = bool(old_sql and schema.create_sql and old_sql != schema.create_sql)
    if additive and not moved:
        return False
    if holds_rows(conn, m):
        if additive:  # only the definition's text moved (a constraint): kept as it was
            return False
        raise TargetError(_shape_refusal(path, m, have, want, same_key), hint=REFUSED_HINT)
    if not schema.create_sql:
        raise TargetError(f"{path}: no definition to rebuild {t} from {m.source}.{m.table}")
    return True


def _shape_refusal(
    path: str, m: TableMapping, have: list[tuple[str, str]], want: list, same_key: bool
) -> str:
    names = {n for n, _ in want}
    gone = [n for n, _ in have if n not in names]
    if gone:
        return _narrowed(path, m, gone, "no longer has")
    if not same_key:
        return (
            f"{path}: the key of {m.source}.{m.table} changed, and {m.target_table} holds its rows"
        )
    return (
        f"{path}: columns of {m.source}.{m.table} changed type or order "
        f"({', '.join(f'{n} {d}'.strip() for n, d in want)}), and {m.target_table} holds its rows"
    )


def rebuild(
    conn: apsw.Connection,
    path: str,
    schema: TableSchema,
    m: TableMapping,
    plan: Plan,
    recorded: list[AppliedIndex] | None,
) -> list[AppliedIndex]:
    """Drop the (empty) target table and create it from `schema`, with its indexes, the
    triggers it had (an FTS index's, kept current by them) and, in a cut-over stage, the
    way back's capture triggers, made for the new shape."""
    t = m.target_table
    triggers = conn.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type='trigger' AND tbl_name=? COLLATE NOCASE",
        (t,),
    ).fetchall()
    tid = _captured(conn, t)
    ours = set(capture.trigger_names(tid)) if tid is not None else set()
    conn.execute(f"DROP TABLE {q(t)}")
    conn.execute(ddl.create_table_statement(plan, m, schema))
    named = {i.legacy.lower(): i.name for i in recorded or []}
    indexes = _create_indexes(conn, path, schema, m, plan, named)
    for name, sql in triggers:
        if name in ours:
            continue
        try:
            conn.execute(sql)
        except apsw.SQLError as e:
            raise TargetError(
                f"{path}: trigger {name!r} of {t} cannot be created again after "
                f"{m.source}.{m.table} changed shape: {e}",
                hint="its statement names a column the table no longer has; fix or drop it",
            ) from e
    if tid is not None:  # the way back (cdc.backflow) reads what the bots write here
        for sql in capture.trigger_sql(tid, table_info(conn, t)):
            conn.execute(sql)
    log.warning(
        "target: rebuilt %s for the new shape of %s.%s",
        t,
        m.source,
        m.table,
        extra={"source": m.source, "table": m.table, "path": path},
    )
    return indexes


def _captured(conn: apsw.Connection, table: str) -> int | None:
    """The way back's tid of `table`, when this target is captured (a cut-over stage)."""
    low = table.lower()
    return next(
        (tid for n, tid in capture.installed_tables(conn).items() if n.lower() == low), None
    )


def _index_names(conn: apsw.Connection) -> dict[str, str]:
    """Lowercased index name -> its table, for every index the target holds."""
    return {
        n.lower(): tbl
        for n, tbl in conn.execute("SELECT name, tbl_name FROM sqlite_schema WHERE type='index'")
    }


def _taken(conn: apsw.Connection, mine: set[str]) -> set[str]:
    names = {r[0].lower() for r in conn.execute("SELECT name FROM sqlite_schema")}
    return names - mine


def _create_indexes(
    conn: apsw.Connection,
    path: str,
    schema: TableSchema,
    m: TableMapping,
    plan: Plan,
    named: dict[str, str],
) -> list[AppliedIndex]:
    taken = _taken(conn, {n.lower() for n in named.values()})
    out = []
    for legacy, name, sql in ddl.index_statements(plan, m, schema, taken, named):
        _create_index(conn, path, m, name, sql)
        out.append(AppliedIndex(legacy, name, sql))
    return out


def _create_index(conn: apsw.Connection, path: str, m: TableMapping, name: str, sql: str) -> None:
    try:
        conn.execute(sql)
    except apsw.ConstraintError as e:
        raise TargetError(
            f"{path}: unique index {name!r} of {m.target_table} ({m.source}.{m.table}) cannot "
            f"be created: the target holds rows the legacy index does not allow: {e}",
            hint="something else wrote this target; `cdc verify` names the rows",
        ) from e


def sync_indexes(
    conn: apsw.Connection,
    path: str,
    schema: TableSchema,
    m: TableMapping,
    plan: Plan,
    recorded: list[AppliedIndex] | None,
) -> list[AppliedIndex]:
    """Create the indexes the source gained, drop the ones it lost (only those we created,
    by their recorded name), re-create one whose definition changed.

    `recorded` is None for a table an older replicator created: its indexes are the ones
    on this table under the legacy name or `<table>__<legacy>`; none is dropped then."""
    t = m.target_table
    here = {n: tbl for n, tbl in _index_names(conn).items() if tbl.lower() == t.lower()}
    if recorded is None:
        named = {}
        for isql in schema.index_sql:
            legacy = created_name(isql)
            for cand in (legacy, f"{t}__{legacy}"):
                if cand.lower() in here:
                    named[legacy.lower()] = cand
        known = {}
    else:
        named = {i.legacy.lower(): i.name for i in recorded}
        known = {i.name.lower(): i for i in recorded}
    taken = _taken(conn, {v.lower() for v in named.values()} | set(known))
    want = ddl.index_statements(plan, m, schema, taken, named)
    keep = {(name.lower(), sql) for _, name, sql in want}
    for low, i in known.items():
        if (low, i.sql) not in keep:
            conn.execute(f"DROP INDEX IF EXISTS {q(i.name)}")
            here.pop(low, None)
            log.info("target: dropped index %s of %s", i.name, t, extra={"path": path})
    out = []
    for legacy, name, sql in want:
        if name.lower() not in here:
            _create_index(conn, path, m, name, sql)
            log.info("target: created index %s of %s", name, t, extra={"path": path})
        out.append(AppliedIndex(legacy, name, sql))
    return out
