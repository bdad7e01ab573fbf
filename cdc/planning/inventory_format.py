"""The typed shape of `inventory.json`, apart from the code that reads the databases.

Scripts read `inventory.json`, and the report, the planner and the tests read these types
without opening a database: the format is a contract of its own, with its own rule.
Evolution rule: new fields get defaults, nothing is renamed or removed without bumping
`FORMAT_VERSION`.
"""

from __future__ import annotations

import msgspec

from cdc.inventory import ForeignKey
from cdc.planning.discover import Skipped, Unreadable

FORMAT_VERSION = 1

# The files `cdc inventory` writes, one folder; the report and its readers name them.
MARKDOWN = "database_inventory.md"
JSON = "inventory.json"
MAPPING = "migration_mapping.csv"
DOT = "dependencies.dot"
SVG = "dependencies.svg"


class ColumnReport(msgspec.Struct, frozen=True):
    name: str
    type: str = ""  # as declared
    notnull: bool = False
    default: str | None = None  # SQL text of the DEFAULT clause
    pk: int = 0  # position in the primary key (1-based); 0: not part of it
    hidden: bool = False  # a virtual table's hidden column
    generated: str = ""  # "virtual" or "stored" for generated columns


class TableReport(msgspec.Struct, frozen=True):
    name: str
    kind: str  # table, virtual or shadow
    rows: int | None = None  # None: could not be counted (see `problem`)
    columns: list[ColumnReport] = []
    key: list[str] = []  # declared primary key; empty: rows are identified by rowid
    without_rowid: bool = False
    autoincrement: bool = False
    unique: list[list[str]] = []  # non-key UNIQUE column sets (constraints and indexes)
    foreign_keys: list[ForeignKey] = []
    module: str = ""  # virtual tables: fts5, rtree, ...
    content_table: str | None = None  # external-content FTS: the table it indexes
    shadow_tables: list[str] = []  # virtual tables: their shadow tables
    shadow_of: str | None = None  # shadow tables: their virtual table
    sql: str = ""
    problem: str | None = None
    refused: bool = False  # the plan refuses to capture it as it is (`problem` says why)


class IndexReport(msgspec.Struct, frozen=True):
    name: str
    table: str
    unique: bool
    origin: str  # c: CREATE INDEX, u: UNIQUE constraint, pk: PRIMARY KEY
    columns: list[str]  # an expression is shown as "(expression)"
    partial: bool = False
    sql: str | None = None  # None for indexes SQLite made for a constraint


class TriggerReport(msgspec.Struct, frozen=True):
    name: str
    table: str
    sql: str
    writes: list[str] = []  # tables its body inserts into, updates or deletes from


class ViewReport(msgspec.Struct, frozen=True):
    name: str
    sql: str
    reads: list[str] = []  # tables and views of this database named in its SQL


class DatabaseReport(msgspec.Struct, frozen=True):
    path: str
    relpath: str
    size: int
    page_size: int
    page_count: int
    freelist_count: int
    journal_mode: str  # "wal" or "delete" (rollback journal), from the file header
    wal_file: bool
    wal_size: int | None
    encoding: str
    user_version: int
    application_id: int = 0
    sqlite_cdc_installed: bool = False  # our capture tables exist (see `cdc install`)
    tables: list[TableReport] = []
    indexes: list[IndexReport] = []
    triggers: list[TriggerReport] = []
    views: list[ViewReport] = []
    problems: list[str] = []  # what this SQLite could not check or count here
    # "<type> <name>" of the bot's objects named like sqlite-cdc's own (cdc.own_objects):
    # the plan refuses the file until they are renamed
    reserved: list[str] = []

    def mappable(self) -> list[TableReport]:
        """The tables an operator maps: shadow tables travel with their virtual table."""
        return [t for t in self.tables if t.kind != "shadow"]


class TablePlace(msgspec.Struct, frozen=True):
    database: str  # relpath
    name: str  # as spelled in that database
    kind: str
    rows: int | None
    columns: list[str]
    key: list[str]


class TypeDifference(msgspec.Struct, frozen=True):
    column: str
    types: dict[str, str]  # relpath -> declared type, for the files that have the column


class TableCollision(msgspec.Struct, frozen=True):
    """One table name in several files: can they share a target table as they are?"""

    table: str
    places: list[TablePlace]
    agree: bool  # same column names, order, declared types and key everywhere
    missing_columns: dict[str, list[str]] = {}  # relpath -> columns others have, it lacks
    type_differences: list[TypeDifference] = []
    order_differs: bool = False
    key_differs: bool = False


class IndexPlace(msgspec.Struct, frozen=True):
    database: str
    table: str


class IndexCollision(msgspec.Struct, frozen=True):
    index: str
    places: list[IndexPlace]


class CrossTargetForeignKey(msgspec.Struct, frozen=True):
    """A foreign key the mapping would split: child and parent go to different places."""

    database: str
    table: str
    columns: list[str]
    parent: str
    parent_columns: list[str]
    target: str
    parent_target: str  # "" when the parent is unmapped or missing
    reason: str
    dropped: bool = False  # the operator already chose `drop_foreign_keys`


class VanishedTable(msgspec.Struct, frozen=True):
    database: str
    table: str
    target: str


class Inventory(msgspec.Struct, frozen=True):
    format_version: int
    base: str
    roots: list[str]
    taken_at: str
    sqlite_version: str
    databases: list[DatabaseReport] = []
    skipped: list[Skipped] = []
    unreadable: list[Unreadable] = []
    table_collisions: list[TableCollision] = []
    index_collisions: list[IndexCollision] = []
    mapping: str | None = None  # the operator's mapping CSV read with --mapping
    cross_target_foreign_keys: list[CrossTargetForeignKey] = []
    mapping_vanished: list[VanishedTable] = []
    # the targets named with `cdc inventory --target` (added in format 1 with a default, as
    # the evolution rule allows): `cdc plan` checks every target of the mapping against them
    targets: list[str] = []
