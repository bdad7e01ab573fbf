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

import logging

import apsw
import msgspec

from cdc import ddl
from cdc.errors import TargetError
from cdc.events import ColumnDef, TableSchema
from cdc.plan import Plan, TableMapping
from cdc.sqlconn import open_target, write_transaction
from cdc.sqlident import q
from checkpoints import CheckpointStore

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

    def key_columns(self) -> list[str]:
        return list(self.key) if self.key else [self.rowid_alias]


_shape_decoder = msgspec.msgpack.Decoder(AppliedShape)


class TargetDB:
    def __init__(
        self, name: str, path: str, busy_timeout_ms: int = 5000, consumer: str = "replicator"
    ) -> None:
        self.name = name
        self.path = path
        self.conn = open_target(path, busy_timeout_ms)
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
            raise TargetError(f"{path}: cannot prepare target: {e}") from e
        self.statements: dict[tuple[str, str], tuple[str, str]] = {}  # see apply.statements
        self.shapes: dict[tuple[str, str], AppliedShape] = {
            (s, t): _shape_decoder.decode(b)
            for s, t, b in self.conn.execute(f"SELECT source, tbl, shape FROM {SCHEMAS}")
        }

    def close(self) -> None:
        self.conn.close()

    def table_columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]

    def apply_schema(self, schema: TableSchema, m: TableMapping, plan: Plan) -> None:
        """Create or widen the target table for `schema`; call inside the apply transaction."""
        have = self.table_columns(m.target_table)
        if not have:
            self._create(schema, m, plan)
        else:
            self._widen(schema, m, have)
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
        )
        self.conn.execute(
            f"INSERT OR REPLACE INTO {SCHEMAS} VALUES (?, ?, ?)",
            (m.source, m.table, msgspec.msgpack.encode(shape)),
        )
        self.shapes[(m.source, m.table)] = shape
        self.statements.pop((m.source, m.table), None)

    def _create(self, schema: TableSchema, m: TableMapping, plan: Plan) -> None:
        if m.tag_column is None and not schema.create_sql:
            raise TargetError(f"{self.path}: no definition for {m.source}.{m.table}")
        taken = {r[0].lower() for r in self.conn.execute("SELECT name FROM sqlite_schema")}
        for sql in ddl.table_statements(plan, m, schema, taken):
            self.conn.execute(sql)
        log.info(
            "target %s: created %s from %s.%s",
            self.name,
            m.target_table,
            m.source,
            m.table,
            extra={"target": self.name, "source": m.source, "table": m.table},
        )

    def _widen(self, schema: TableSchema, m: TableMapping, have: list[str]) -> None:
        present = {h.lower() for h in have}
        for c in schema.columns:
            if c.name.lower() in present:
                continue
            decl = _decl(c) if m.tag_column is None else ""
            if c.default is not None:
                decl += f" DEFAULT {c.default}"  # SQL text from the source's own schema
            self.conn.execute(f"ALTER TABLE {q(m.target_table)} ADD COLUMN {q(c.name)} {decl}")
            log.info(
                "target %s: added column %s.%s",
                self.name,
                m.target_table,
                c.name,
                extra={"target": self.name, "table": m.target_table},
            )


def _decl(c: ColumnDef) -> str:
    # Only the type: a column added later by a bot's ALTER keeps its affinity here.
    return c.decl_type.replace('"', "") if c.decl_type else ""
