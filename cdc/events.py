"""The change log's vocabulary: typed frames that live for months on disk.

Evolution rule (msgspec schema evolution): frames are tagged, array-like structs (compact
msgpack arrays whose first element is the tag). A new field is only ever appended at the
end and must have a default; a field is never reordered, renamed, retyped or removed; a new
frame kind gets a new tag. A test decodes frames written by the first format
version (`tests/changelog/test_changelog.py`, GOLDEN) to hold us to this.

Values keep their SQLite storage class through msgpack: int <-> INTEGER, float (always
encoded as float64, so bit-exact including -0.0) <-> REAL, str <-> TEXT, bytes (msgpack
bin) <-> BLOB, None <-> NULL, and a TEXT whose bytes are not valid UTF-8 <-> msgpack Ext
`cdc.exact_text.TEXT_EXT` holding those bytes (`RawText`).
"""

from __future__ import annotations

import enum
from typing import Any, Union

import msgspec

from cdc import exact_text

# int | float | str | bytes | RawText | None; msgspec cannot decode a union holding both
# str and bytes, so values are typed Any (msgpack bin still decodes to bytes, str to str,
# ext 2 to RawText through the decoder's ext_hook).
Value = Any


class Op(enum.IntEnum):
    """What a row event does to the target. Snapshot rows are upserts too."""

    UPSERT = 1
    DELETE = 2


class ColumnDef(msgspec.Struct, frozen=True, array_like=True):
    """A column as declared; `default` is the SQL text of its DEFAULT clause, if any.

    The default matters when a bot adds a column with ALTER TABLE: rows that existed
    before read the default without any trigger firing, so the target column needs it too.
    """

    name: str
    decl_type: str = ""
    default: str | None = None


class TableSchema(msgspec.Struct, frozen=True, tag="schema", array_like=True):
    """A captured table's shape; precedes any row of that shape in the log.

    `key` names the identity columns; an empty key means the table is identified by its
    rowid (no declared primary key). `create_sql` and `index_sql` are the source's own
    definitions, used to create a faithful target table (defaults, AUTOINCREMENT, UNIQUE).
    """

    source: str
    table: str
    columns: list[ColumnDef]
    key: list[str]
    without_rowid: bool = False
    create_sql: str = ""
    index_sql: list[str] = []


class RowEvent(msgspec.Struct, frozen=True, array_like=True):
    """The state of one source row: its new image (upsert) or its absence (delete).

    `seq` is the source capture sequence of the newest change to this key covered by the
    event (0 for snapshot rows).
    """

    op: Op
    seq: int
    key: list[Value]
    # A delete's row is nil, or an empty list for a delete of every spelling (below): a
    # field of its own would have changed every event's bytes in the log.
    row: list[Value] | None = None

    @property
    def every_spelling(self) -> bool:
        """A delete whose key had no equal under the legacy table's own comparison
        (collation, numbers of either class) when it was read: the target deletes every
        such spelling, not only this exact key (`replicator.apply.every_spelling_sql`).
        Otherwise a row spelled differently is there, and it has its own event."""
        return self.op == Op.DELETE and self.row is not None and not self.row


class RowBatch(msgspec.Struct, frozen=True, tag="rows", array_like=True):
    """The rows of one table from one harvest (or one snapshot chunk), read at `observed_at`.

    Capture triggers record only which key changed; the harvester reads each row's current
    image in the same read transaction. So a batch is a consistent cut, holds each key at
    most once, and applying batches in log order can never revert a row to an older image.
    Inside a batch the order of events therefore does not matter. One frame per batch (not
    per row) keeps the per-frame cost (checksum, header, decode dispatch) off each row.
    """

    source: str
    table: str
    observed_at: float
    events: list[RowEvent]


class StreamedValue(msgspec.Struct, frozen=True, array_like=True):
    """A BLOB too big to carry inside its row (`cdc.bigrows`): `events[event].row[column]`
    holds nil, and `ValueChunk` frames after the batch carry its `size` bytes."""

    event: int
    column: int
    size: int


class StreamedRowBatch(RowBatch, frozen=True, tag="streamed"):
    """A `RowBatch` some of whose values are sent apart, in `ValueChunk` frames
    (`streamed`). A kind of its own, so that an ordinary batch stays byte for byte what it
    always was; a subclass, so that whoever reads keys and rows from `RowBatch` frames
    (cutover, history, status) sees these rows too, with nil for each streamed value."""

    streamed: list[StreamedValue]


class CopyRange(msgspec.Struct, frozen=True, tag="copy", array_like=True):
    """A snapshot chunk copied by reference: not its rows, but the key range they are in.

    The apply side reads the rows from the legacy file itself when it reaches this frame
    (`replicator.copy_range`), inside SQLite, with `INSERT ... SELECT`. Its images are
    then newer than the frame, never older: a change committed in between was harvested
    after the frame (its capture row is newer than the harvest's read), so its batch
    follows in the log and ends at the newest image, like any later batch. Until then a
    batch read between the frame and the copy may hold an older image of a copied key;
    the key has a capture row newer than that batch, so it is in flight, not lost.

    `after` (exclusive; None: from the first key) and `until` (inclusive) bound the range
    in `order`, the key expressions the snapshot orders by (`cdc.capture.snapshot`);
    `columns` are the row image's columns and `key` its key expressions, as a `RowBatch`
    of this table would carry them; `shape` is the table's shape mark
    (`cdc.shapes.mark`) when the range was read, which the apply compares with the table
    it finds; `rows` the number of rows the range held then (for counts only)."""

    source: str
    table: str
    observed_at: float
    key: list[str]
    order: list[str]
    columns: list[str]
    after: list[Value] | None
    until: list[Value]
    shape: str
    rows: int


class SnapshotCursor(msgspec.Struct, frozen=True, array_like=True):
    """How far the initial copy of one table has got.

    `after` is the last key copied; `until` the highest key when the copy began. Rows above
    it were written after capture started, so the trigger stream carries them: bounding
    the copy keeps a bot that rewrites a whole table (new ids each time) from making the
    snapshot chase its tail forever.
    """

    table: str
    done: bool = False
    after: list[Value] | None = None
    until: list[Value] | None = None
    # the shape of the table's newest schema frame (`cdc.shapes.mark`): a restarted
    # harvester compares it with the table as it is, to see a change made while it was away
    shape: str = ""
    # the rows whose key holds a NULL, copied last and by rowid (`after`/`until` are
    # rowids then): no key range reaches them, since NULL compares with nothing
    nulls: bool = False


class SourcePosition(msgspec.Struct, frozen=True):
    """Everything needed to resume harvesting a source exactly where the log ends.

    `install_id` ties the position to one installation of the capture tables: a
    reinstalled source restarts its sequence and must not be confused with the old one.
    """

    install_id: str
    through_seq: int = 0
    snapshots: list[SnapshotCursor] = []
    events: int = 0


class SourceMark(msgspec.Struct, frozen=True, tag="mark", array_like=True):
    """Closes one harvest batch. Frames after the last mark are an unfinished batch."""

    source: str
    position: SourcePosition
    written_at: float = 0.0


class SegmentStart(msgspec.Struct, frozen=True, tag="segment", array_like=True):
    """First frame of every segment: carries all positions so old segments can be deleted."""

    base_offset: int
    positions: dict[str, SourcePosition] = {}
    created_at: float = 0.0


class TableReset(msgspec.Struct, frozen=True, tag="reset", array_like=True):
    """A captured table was dropped and created again under its name (a bot's DROP +
    CREATE rewrite), which fires no trigger: the target forgets every row it holds from
    this source's table, and a fresh snapshot of it follows in the log."""

    source: str
    table: str
    reason: str = ""


class ValueChunk(msgspec.Struct, frozen=True, tag="chunk", array_like=True):
    """`data` is the piece at byte `offset` of a streamed value (`RowBatch.streamed`): the
    BLOB in `column` of the row whose key is `key`. Chunks follow their `StreamedRowBatch`
    in the log, in offset order, before the mark that closes the harvest."""

    source: str
    table: str
    key: list[Value]
    column: str
    offset: int
    data: bytes


Frame = Union[  # noqa: UP007
    TableSchema,
    RowBatch,
    SourceMark,
    SegmentStart,
    TableReset,
    StreamedRowBatch,
    ValueChunk,
    CopyRange,
]

_encoder = exact_text.ENCODER
_decoder = exact_text.decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode_frame(payload: bytes) -> Frame:
    return _decoder.decode(payload)
