"""One consolidated database: its tables, created and widened from the source schemas.

A table that keeps its own name and source gets the source's own CREATE statement (renamed),
so defaults, AUTOINCREMENT, CHECKs and UNIQUE constraints carry over and the bots find the
same table after cutover. A UNIQUE constraint matters for correctness too: a legacy
`INSERT OR REPLACE` that silently deletes a row through a UNIQUE conflict does the same
here when we apply the row with OR REPLACE.

A merged table is built instead: the tag column, the union of the sources' columns
*without declared types* (so no affinity can change a value's storage class, whichever
source it came from) and PRIMARY KEY(tag, source key).

Which positional row image means which columns is state of this database too
(`_cdc_schemas`), written in the apply transaction like the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import re

import apsw
import msgspec

from cdc import exact_text
from cdc.errors import TargetError
from cdc.events import ColumnDef, TableSchema, ValueChunk
from cdc.inventory import is_strict, key_collations, stored_type
from cdc.planning import ddl
from cdc.planning.plan import Plan, TableMapping
from cdc.sqlconn import open_target, write_transaction
from cdc.sqlident import q, tokens
from cdc.status_file import full_disk_note
from checkpoints import CheckpointStore
from replicator import reshape
from replicator.reshape import AppliedIndex

log = logging.getLogger(__name__)

SCHEMAS = "_cdc_schemas"
ROWID_NAMES = ("rowid", "_rowid_", "oid")


class AppliedShape(msgspec.Struct, frozen=True):
    """How rows of one source table are written into this target."""

    columns: list[str]
    key: list[str]
    target_table: str
    tag_column: str | None = None
    tag: str | None = None
    rowid_alias: str = "rowid"
    other_unique: bool = True  # a UNIQUE besides the key: upserts must REPLACE through it
    create_sql: str = ""  # the source's definition this shape came with
    indexes: list[AppliedIndex] | None = None  # created for it here; None: not recorded
    # the key is the rowid alias: equal keys are identical, so an upsert need not rewrite it
    rowid_key: bool = False
    # a merged member's key collations in its legacy table (None: not merged, or BINARY
    # throughout): the merged target's key has none of its own (`apply.respell_sql`)
    key_collations: list[str] | None = None

    def key_columns(self) -> list[str]:
        return list(self.key) if self.key else [self.rowid_alias]


_shape_decoder = msgspec.msgpack.Decoder(AppliedShape)


def legacy_key_collations(schema: TableSchema) -> list[str] | None:
    """The collation of each key column in the legacy table, read from its definition
    made again in a scratch in-memory database (a COLLATE may sit on the column or in the
    PRIMARY KEY clause); None when all are BINARY, or the definition cannot be made here
    (a collation only the application registers: the merged target then compares keys
    byte for byte, docs/architecture.md, Limits)."""
    if not schema.key or not schema.create_sql:
        return None
    scratch = apsw.Connection(":memory:")
    try:
        scratch.execute(schema.create_sql)
        (name,) = scratch.execute("SELECT name FROM sqlite_schema WHERE type='table'").fetchone()
        out = key_collations(scratch, name, list(schema.key))
    except apsw.Error:
        return None
    finally:
        scratch.close()
    return None if out is None or all(c == "BINARY" for c in out) else out


def is_rowid_key(schema: TableSchema) -> bool:
    """Whether the source's key is its rowid alias (a lone `INTEGER PRIMARY KEY`): its
    values are integers, so two equal keys are the same key. Any other key may be equal
    but not identical ('Alpha' and 'ALPHA' under NOCASE, 1 and 1.0 untyped), and the
    upsert must write the key too. `DESC` (which makes the column no alias) or a COLLATE
    anywhere makes the answer no: the slower upsert is exact either way."""
    if schema.without_rowid or len(schema.key) != 1:
        return False
    col = next((c for c in schema.columns if c.name == schema.key[0]), None)
    words = {w.upper() for w in tokens(schema.create_sql)}
    return (
        col is not None and col.decl_type.upper() == "INTEGER" and not words & {"DESC", "COLLATE"}
    )


class TargetDB:
    def __init__(
        self, name: str, path: str, busy_timeout_ms: int = 5000, consumer: str = "replicator"
    ) -> None:
        self.name = name
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        # the legacy files copied ranges are read from: a `replicator.copy_range.
        # LegacyFiles` the apply makes at the first range (that module imports this one)
        self.legacy = None
        try:
            self.conn = open_target(path, busy_timeout_ms)
        except TargetError as e:
            note = full_disk_note(path)  # SQLite says "disk I/O error": no room for -shm
            if not note:
                raise
            raise TargetError(
                f"{e.message}{note}", hint="free space on its disk, then start the daemon again"
            ) from e
        # A REPLACE that deletes a row through a UNIQUE conflict then fires the DELETE
        # triggers of the FTS tables we re-create (cdc.ddl), as an explicit delete would.
        self.conn.execute("PRAGMA recursive_triggers = ON")
        try:
            with write_transaction(self.conn):
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {SCHEMAS}(source TEXT NOT NULL, "
                    "tbl TEXT NOT NULL, shape BLOB NOT NULL, PRIMARY KEY(source, tbl))"
                )
                self.checkpoints = CheckpointStore(self.conn, consumer, path)
        except apsw.Error as e:
            raise TargetError(f"{path}: cannot prepare target: {e}{full_disk_note(path)}") from e
        self.statements: dict[tuple[str, str], tuple[str, str]] = {}  # see apply.statements
        self._value: tuple | None = None  # (ident, blob, next offset, size): `write_chunk`
        self.shapes: dict[tuple[str, str], AppliedShape] = {
            (s, t): _shape_decoder.decode(b)
            for s, t, b in self.conn.execute(f"SELECT source, tbl, shape FROM {SCHEMAS}")
        }

    def close(self) -> None:
        self.close_value()
        if self.legacy is not None:
            self.legacy.close()
        self.conn.close()

    def write_chunk(self, c: ValueChunk) -> None:
        """Write one piece of a streamed BLOB into the row its batch created (with a
        zeroblob of the value's size, `replicator.apply`); inside the apply transaction.

        The handle stays open for the value's next piece (`value_open`): a new handle
        walks the value's overflow pages from its start, so a handle per piece makes
        writing a big value quadratic. `close_value` must come before anything else
        writes that row, and before the transaction ends."""
        ident = (c.source, c.table, exact_text.pack(c.key), c.column)
        if self._value is None or self._value[0] != ident or self._value[2] != c.offset:
            self.close_value()
            self._value = (ident, *self._open_value(c))
        _, blob, _, size = self._value
        end = c.offset + len(c.data)
        if end > size:
            self.close_value()
            raise TargetError(
                f"{self._what(c)}: bytes {c.offset}..{end} do not fit its {size} bytes",
                hint="the log and this target disagree; rebuild the target from a fresh snapshot",
            )
        blob.seek(c.offset)
        blob.write(c.data)
        if end == size:
            self.close_value()
        else:
            self._value = (ident, blob, end, size)

    def value_open(self) -> bool:
        """Whether a streamed value is written only in part (its handle is open)."""
        return self._value is not None

    def close_value(self) -> None:
        if self._value is not None:
            blob, self._value = self._value[1], None
            # its row changed, or the transaction ended: nothing to keep either way
            with contextlib.suppress(apsw.Error):
                blob.close()

    def _what(self, c: ValueChunk) -> str:
        return (
            f"{self.path}: streamed value of {c.source}.{c.table} column {c.column!r}, "
            f"key {c.key!r}"
        )

    def _open_value(self, c: ValueChunk) -> tuple[apsw.Blob, int, int]:
        shape = self.shapes.get((c.source, c.table))
        if shape is None:
            raise TargetError(f"{self._what(c)}: arrived before the table's schema")
        conds, args = [], []
        if shape.tag_column is not None:
            conds.append(f"{q(shape.tag_column)} IS ?")
            args.append(shape.tag)
        marks = [exact_text.mark(v) for v in c.key]  # a TEXT key that is not UTF-8: CAST
        if shape.key and len(c.key) > len(shape.key):  # a NULL key: its rowid names the row
            conds.append(f"{shape.rowid_alias} = ?")
            args.append(c.key[-1])
        else:
            conds += (
                [f"{q(k)} IS {m}" for k, m in zip(shape.key, marks, strict=True)]
                if shape.key
                else [f"{shape.rowid_alias} = ?"]
            )
            args += exact_text.binds(c.key)
        row = self.conn.execute(
            f"SELECT {shape.rowid_alias}, length({q(c.column)}) FROM {q(shape.target_table)} "
            f"WHERE {' AND '.join(conds)}",
            args,
        ).fetchone()
        if row is None or row[1] is None:
            raise TargetError(
                f"{self._what(c)}: the target row {'is missing' if row is None else 'holds NULL'}",
                hint="the log and this target disagree; rebuild the target from a fresh snapshot",
            )
        blob = self.conn.blob_open("main", shape.target_table, c.column, row[0], True)
        return blob, c.offset, row[1]

    def table_columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]

    def apply_schema(self, schema: TableSchema, m: TableMapping, plan: Plan) -> None:
        """Create the target table for `schema`, or make it follow (`replicator.reshape`);
        call inside the apply transaction."""
        old = self.shapes.get((m.source, m.table))
        indexes = old.indexes if old else None
        have = self.table_columns(m.target_table)
        if not have:
            indexes = self._create(schema, m, plan)
        elif m.tag_column is not None:
            reshape.check_merged(self.conn, self.path, schema, m, old.columns if old else None)
            self._widen(schema, m, have)
            if old is not None:
                self._member_defaults(schema, m, old.columns)
        elif reshape.needs_rebuild(self.conn, self.path, schema, m, old.create_sql if old else ""):
            indexes = reshape.rebuild(self.conn, self.path, schema, m, plan, indexes)
        else:
            self._widen(schema, m, have)
            indexes = reshape.sync_indexes(self.conn, self.path, schema, m, plan, indexes)
        for fm in ddl.fts_of(plan, m.source, m.table):
            if fm.target == self.name and not self.table_columns(fm.target_table):
                for sql in ddl.fts_statements(plan, fm):
                    self.conn.execute(sql)
                self.conn.execute(ddl.fts_rebuild(fm))  # rows copied before it existed
                log.info("target %s: created FTS table %s", self.name, fm.target_table)
        alias = next(n for n in ROWID_NAMES if n not in {c.name.lower() for c in schema.columns})
        other_unique = (
            self.conn.execute(
                "SELECT count(*) FROM pragma_index_list(?) WHERE \"unique\" AND origin != 'pk'",
                (m.target_table,),
            ).fetchone()[0]
            > 0
        )
        shape = AppliedShape(
            columns=[c.name for c in schema.columns],
            key=list(schema.key),
            target_table=m.target_table,
            tag_column=m.tag_column,
            tag=m.tag,
            rowid_alias=alias,
            other_unique=other_unique,
            rowid_key=is_rowid_key(schema),
            create_sql=schema.create_sql,
            indexes=indexes if m.tag_column is None else None,
            key_collations=legacy_key_collations(schema) if m.tag_column is not None else None,
        )
        self.conn.execute(
            f"INSERT OR REPLACE INTO {SCHEMAS} VALUES (?, ?, ?)",
            (m.source, m.table, msgspec.msgpack.encode(shape)),
        )
        self.shapes[(m.source, m.table)] = shape
        self.statements.pop((m.source, m.table), None)

    def _create(self, schema: TableSchema, m: TableMapping, plan: Plan) -> list[AppliedIndex]:
        if m.tag_column is None and not schema.create_sql:
            raise TargetError(f"{self.path}: no definition for {m.source}.{m.table}")
        taken = {r[0].lower() for r in self.conn.execute("SELECT name FROM sqlite_schema")}
        if m.tag_column is not None:
            for sql in ddl.table_statements(plan, m, schema):
                self.conn.execute(sql)  # the members' indexes too: they share one table
            indexes = []
        else:
            self.conn.execute(ddl.create_table_statement(plan, m, schema))
            indexes = [AppliedIndex(*ix) for ix in ddl.index_statements(plan, m, schema, taken)]
            for ix in indexes:
                if _is_unique(ix.sql):  # a REPLACE deletes through it: needed from the start
                    self.conn.execute(ix.sql)
        log.info(
            "target %s: created %s from %s.%s",
            self.name,
            m.target_table,
            m.source,
            m.table,
            extra={"target": self.name, "source": m.source, "table": m.table},
        )
        return indexes

    def create_deferred_indexes(self, source: str, table: str) -> None:
        """Once a table's initial copy is complete (inside the apply transaction): the
        indexes `_create` left out. Built by one sort each instead of one b-tree insert
        per copied row, in random order: the copy of a 200k-row table with one index
        took twice as long with it in place (bench/README.md, Snapshot by reference)."""
        shape = self.shapes.get((source, table))
        if shape is None or not shape.indexes:
            return
        here = {
            r[0].lower()
            for r in self.conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")
        }
        for ix in shape.indexes:
            if ix.name.lower() not in here:
                self.conn.execute(ix.sql)
                log.info("target %s: created index %s", self.name, ix.name)

    def _widen(self, schema: TableSchema, m: TableMapping, have: list[str]) -> None:
        present = {h.lower() for h in have}
        for c in schema.columns:
            if c.name.lower() in present:
                continue
            # a merged member's too: its rows keep their affinity (`ddl.declared`)
            strict = m.tag_column is not None and is_strict(schema.create_sql)
            decl = ddl.declared(stored_type(c.decl_type, strict))
            if c.default is not None and m.tag_column is None:
                decl += f" DEFAULT {c.default}"  # SQL text from the source's own schema
            self.conn.execute(f"ALTER TABLE {q(m.target_table)} ADD COLUMN {q(c.name)} {decl}")
            log.info(
                "target %s: added column %s.%s",
                self.name,
                m.target_table,
                c.name,
                extra={"target": self.name, "table": m.target_table},
            )

    def _member_defaults(self, schema: TableSchema, m: TableMapping, had: list[str]) -> None:
        """A merged member added a column with a DEFAULT: its older rows read that DEFAULT
        in the legacy file, converted by the column's affinity there, while the union
        column has neither (another member may lack it or declare another DEFAULT). So
        they get the value itself, as SQLite stores it in a column of that declaration."""
        known = {c.lower() for c in had}
        options = schema.create_sql[schema.create_sql.rfind(")") + 1 :]  # after the columns
        strict = " STRICT" if re.search(r"\bSTRICT\b", options, re.IGNORECASE) else ""
        for c in schema.columns:
            if c.name.lower() in known or c.default is None:
                continue
            # The legacy rows read it through ADD COLUMN, so it is read here the same way:
            # a row made before the column, in a table as STRICT as theirs.
            self.conn.execute(f"CREATE TEMP TABLE _cdc_default(_ INTEGER){strict}")
            try:
                self.conn.execute("INSERT INTO temp._cdc_default VALUES (1)")
                self.conn.execute(
                    f"ALTER TABLE temp._cdc_default ADD COLUMN x {_decl(c)} DEFAULT {c.default}"
                )
                (value,) = self.conn.execute("SELECT x FROM temp._cdc_default").fetchone()
            except apsw.Error as e:  # left NULL: the verifier names the rows, repair fixes them
                log.error(
                    "target %s: cannot evaluate DEFAULT %s of %s.%s.%s here (%s); its older "
                    "rows keep NULL there until `cdc repair`",
                    self.name, c.default, m.source, m.table, c.name, e,
                    extra={"target": self.name, "source": m.source, "table": m.table},
                )  # fmt: skip
                continue
            finally:
                self.conn.execute("DROP TABLE temp._cdc_default")
            self.conn.execute(
                f"UPDATE {q(m.target_table)} SET {q(c.name)} = ? WHERE {q(m.tag_column)} IS ?",
                (value, m.tag),
            )


def _is_unique(index_sql: str) -> bool:
    words = [w.upper() for w in tokens(index_sql)[:3]]
    return "UNIQUE" in words


def _decl(c: ColumnDef) -> str:
    """Only the type: a column added later by a bot's ALTER keeps its affinity here.

    PRAGMA table_info gives the declared type unquoted (`x "INT; DROP TABLE t"` has type
    `INT; DROP TABLE t`), so it is quoted back as one identifier: SQLite keeps that text
    as the column's type, and its affinity comes from the same text."""
    return q(c.decl_type) if c.decl_type else ""
