"""How a PostgreSQL target table follows its legacy table's schema (the apply's
`TableSchema` frames; `replicator.pg_apply` runs them in its transaction).

- The table is made from the DDL (`cdc.planning.pg_ddl`, from the plan) the first time.
- A column a member or a bot adds later is added with its mapped type and, for a copied
  table, its DEFAULT (SQLite's rows already there read it; no event comes for them); a
  merged table's column gets none, and the member's own older rows get the value SQLite
  reads for them (`_member_defaults`, as the SQLite apply does for F2).
- A copied table follows a column renamed, dropped or retyped once the harvester's reset
  emptied it (`_narrow`), a unique index the legacy table dropped (`_drop_lost_uniques`)
  and a NOT NULL it no longer declares (`_loosen`).
- The shape the apply writes rows by (`PgShape`) is read from the frame: its UNIQUE sets
  by SQLite itself from the frame's SQL (`legacy_uniques`), not from the plan made at
  install. A changed key is refused by name.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from cdc.errors import TargetError
from cdc.events import ColumnDef, TableSchema
from cdc.inventory import is_strict
from cdc.planning import pg_ddl
from cdc.planning.plan import Plan, TableMapping
from cdc.postgres import way_back
from cdc.postgres.types import misfit, to_pg
from cdc.sqlident import q


class Session(Protocol):
    """What these steps need of the apply's target (`replicator.pg_apply.PgTarget`): its
    connection, inside the apply's transaction, and its name for messages."""

    conn: Any  # a psycopg connection
    where: str


class PgShape(msgspec.Struct, frozen=True):
    """How rows of one source table are written into its PostgreSQL table."""

    target_table: str
    columns: list[str]
    types: list[str]  # the PostgreSQL type of each column
    key: list[str]  # the identity columns; [rowid alias] for a keyless table
    keyless: bool = False  # the key is the rowid: the event's key, not a column of the row
    tag_column: str | None = None
    tag: str | None = None
    uniques: list[list[str]] = []  # other UNIQUE column sets (the tag leading, if merged)


def follow_schema(
    t: Session, plan: Plan, m: TableMapping, f: TableSchema, old: PgShape | None
) -> PgShape:
    made = pg_ddl.table_ddl(plan, m)
    if made.refused:
        raise TargetError(f"{t.where}: {'; '.join(made.refused)}: does not translate")
    exists = t.conn.execute("SELECT to_regclass(%s)", (q(m.target_table),)).fetchone()[0]
    if exists is None:
        for sql in made.statements:
            t.conn.execute(sql)
    strict = is_strict(f.create_sql)
    have = {
        r[0]: r[1]
        for r in t.conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (m.target_table,),
        )
    }
    if m.tag_column is None:
        _narrow(t, m, f, strict, have)
        _drop_lost_uniques(t, m, f)
    _loosen(t, m, f)
    for c in f.columns:
        want = m.pg_type(c.name, c.decl_type, strict)
        if c.name not in have:
            _add_column(t, m, c, want)
        elif have[c.name] != want:
            raise TargetError(
                f"{t.where}: {m.source}.{m.table}.{c.name} is now {want}, "
                f"{m.target_table}.{c.name} is {have[c.name]}: a merged table keeps its "
                "members' column types"
            )
    if m.tag_column is not None and old is not None:
        _member_defaults(t, m, f, old, strict)
    shape = _shape(plan, m, f, strict)
    if old is not None and old.key != shape.key:
        raise TargetError(f"{t.where}: the key of {m.source}.{m.table} changed: not followed yet")
    t.conn.execute(
        "INSERT INTO _cdc_pg_shapes VALUES (%s, %s, %s) ON CONFLICT (source, tbl) "
        "DO UPDATE SET shape = EXCLUDED.shape",
        (m.source, m.table, msgspec.msgpack.encode(shape)),
    )
    return shape


def _narrow(t: Session, m: TableMapping, f: TableSchema, strict: bool, have: dict) -> None:
    """A copied table whose legacy side renamed, dropped or retyped a column: the
    harvester resets the table before such a schema, so it holds no rows now, and follows
    it: the columns the legacy table no longer has are dropped, a retyped one changes type
    (in `have`, which is updated). One that still holds rows is refused by name, rather
    than keeping values in a column the legacy table no longer has."""
    names = {c.name for c in f.columns}
    keep = names | ({pg_ddl.rowid_alias(list(names))} if not f.key else set())
    gone = [n for n in have if n not in keep]
    retyped = [
        (c.name, m.pg_type(c.name, c.decl_type, strict))
        for c in f.columns
        if c.name in have and have[c.name] != m.pg_type(c.name, c.decl_type, strict)
    ]
    if not gone and not retyped:
        return
    table = q(m.target_table)
    if t.conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
        raise TargetError(
            f"{t.where}: {m.source}.{m.table} changed its columns "
            f"({', '.join(gone + [n for n, _ in retyped])}) while {m.target_table} still "
            "holds its rows: not followed",
            hint="the harvester resets a table before such a change; start this target over",
        )
    for n in gone:
        t.conn.execute(f"ALTER TABLE {table} DROP COLUMN {q(n)}")
        del have[n]
    for n, ty in retyped:
        t.conn.execute(f"ALTER TABLE {table} ALTER COLUMN {q(n)} TYPE {ty} USING NULL")
        have[n] = ty


def _add_column(t: Session, m: TableMapping, c: ColumnDef, want: str) -> None:
    """A column the legacy table gained, with its DEFAULT: SQLite's rows already there
    read the default without any write (no event comes for them), so PostgreSQL's must
    hold it too. One that does not translate is refused by name while rows are there.
    A merged table's column gets no DEFAULT: the other members' rows hold NULL there
    (the member's own rows get theirs: `_member_defaults`)."""
    table = q(m.target_table)
    if m.tag_column is not None:
        t.conn.execute(f"ALTER TABLE {table} ADD COLUMN {q(c.name)} {want}")
        return
    d = pg_ddl.default_sql(c.default, want) if c.default is not None else None
    rows = t.conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None
    if c.default is not None and d is None and rows:
        raise TargetError(
            f"{t.where}: {m.source}.{m.table} gained column {c.name} DEFAULT {c.default}, "
            f"which PostgreSQL's {want} cannot take: the rows already there would differ"
        )
    extra = f" DEFAULT {d}" if d is not None else ""
    t.conn.execute(f"ALTER TABLE {table} ADD COLUMN {q(c.name)} {want}{extra}")


def _member_defaults(t: Session, m: TableMapping, f: TableSchema, old: PgShape, strict: bool):
    """P6/P7 (docs/fuzzing.md), as the SQLite apply does for F2: a merged member gained
    a column with a DEFAULT: its older rows read that DEFAULT in its legacy file (no event
    comes for them), the other members' rows do not. The union column has no DEFAULT;
    the member's rows get the value SQLite gives them, read the way they read it (a row
    made before the column, in a table as STRICT as theirs)."""
    import apsw

    for c in f.columns:
        if c.name in old.columns or c.default is None:
            continue
        lite = apsw.Connection(":memory:")
        try:
            lite.execute(f"CREATE TABLE d(_ INTEGER){' STRICT' if strict else ''}")
            lite.execute("INSERT INTO d VALUES (1)")
            decl = q(c.decl_type) if c.decl_type else ""
            lite.execute(f"ALTER TABLE d ADD COLUMN x {decl} DEFAULT {c.default}")
            (value,) = lite.execute("SELECT x FROM d").fetchone()
        except apsw.Error as e:
            raise TargetError(
                f"{t.where}: DEFAULT {c.default} of {m.source}.{m.table}.{c.name} cannot be "
                f"read here ({e}): its older rows would differ"
            ) from e
        finally:
            lite.close()
        ty = m.pg_type(c.name, c.decl_type, strict)
        why = misfit(value, ty)
        if why:
            raise TargetError(f"{t.where}: DEFAULT of {m.source}.{m.table}.{c.name}: {why}")
        t.conn.execute(
            f"UPDATE {q(m.target_table)} SET {q(c.name)} = %s WHERE {q(m.tag_column)} = %s",
            (to_pg(value, ty), m.tag),
        )


def _drop_lost_uniques(t: Session, m: TableMapping, f: TableSchema) -> None:
    """P5 (docs/fuzzing.md): a unique index the legacy table no longer has (dropped after
    install) would refuse in PostgreSQL the duplicates SQLite now takes: dropped here
    too. Only plain ones: the DDL makes no other kind for a copied table."""
    want = legacy_uniques(f) if f.create_sql else None
    if want is None:
        return
    keep = {frozenset(c.lower() for c in u) for u in want}
    rows = t.conn.execute(
        "SELECT c.relname, array_agg(a.attname) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND NOT i.indisprimary "
        "AND i.indpred IS NULL AND i.indexprs IS NULL GROUP BY c.relname",
        (q(m.target_table),),
    ).fetchall()
    for name, cols in rows:
        if frozenset(c.lower() for c in cols) not in keep:
            t.conn.execute(f"DROP INDEX {q(name)}")


def _loosen(t: Session, m: TableMapping, f: TableSchema) -> None:
    """A NOT NULL the legacy table no longer declares (a bot rebuilt it without) is
    dropped here too: its next NULL would stop the apply. The key's stays (no key holds
    NULL in PostgreSQL: `cdc check` counts such rows)."""
    if not f.create_sql:
        return
    keep = pg_ddl.not_null_columns(f.create_sql) | {k.lower() for k in f.key}
    mine = {c.name.lower() for c in f.columns}
    declared = t.conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s AND is_nullable = 'NO'",
        (m.target_table,),
    )
    key = set(way_back.key_columns(t.conn, m.target_table))
    for (name,) in list(declared):
        if name.lower() in mine and name.lower() not in keep and name not in key:
            t.conn.execute(f"ALTER TABLE {q(m.target_table)} ALTER COLUMN {q(name)} DROP NOT NULL")


def legacy_uniques(f: TableSchema) -> list[list[str]] | None:
    """The legacy table's UNIQUE column sets (key excluded) at this schema, read by SQLite
    itself from the frame's own SQL in a private in-memory database: a column renamed or
    an index dropped since the plan was made is seen (P2, P5 in docs/fuzzing.md)."""
    import apsw

    from cdc.inventory import unique_indexes

    lite = apsw.Connection(":memory:")
    try:
        lite.execute(f.create_sql)
        for sql in f.index_sql:
            lite.execute(sql)
        return [cols for cols, _colls in unique_indexes(lite, f.table)]
    except apsw.Error:
        return None  # not SQL this SQLite reads: the plan's sets instead
    finally:
        lite.close()


def _shape(plan: Plan, m: TableMapping, f: TableSchema, strict: bool) -> PgShape:
    info = plan.source(m.source).info(m.table)
    lead = [m.tag_column] if m.tag_column else []
    uniques = legacy_uniques(f) if f.create_sql else None
    if uniques is None:
        uniques = info.unique_sets if info else []
    return PgShape(
        target_table=m.target_table,
        columns=[c.name for c in f.columns],
        types=[m.pg_type(c.name, c.decl_type, strict) for c in f.columns],
        key=lead + (list(f.key) or [pg_ddl.rowid_alias([c.name for c in f.columns])]),
        keyless=not f.key,
        tag_column=m.tag_column,
        tag=m.tag,
        uniques=[lead + list(u) for u in uniques],
    )
