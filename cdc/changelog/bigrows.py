"""Rows bigger than one SQL statement or one log frame: wide tables and huge BLOBs.

Wide tables. SQLite refuses a SELECT with more result columns than its column limit (2000
by default), and the harvester, the snapshot and the verifier all select a table's key
next to all of its columns. `select_wide` reads such a row in slices of the select list,
one query per slice over the same rows in the same read transaction, and puts the slices
back together. What a target cannot hold at all (a merged table whose tag column makes
2001 columns, a keyless table whose rows carry their rowid as a 2001st value) is refused
at plan time by `width_problems`.

Huge BLOBs are streamed instead of carried inside their row (docs/log-format.md):

- Reading a row never loads a BLOB above `STREAM_ABOVE` bytes. The read runs with
  SQLITE_LIMIT_LENGTH lowered to that size, which costs nothing per row: SQLite refuses
  to load a bigger value (`TooBigError`). Only then is the read done again, in the same
  read transaction, with every column guarded (`length()` and `typeof()` of a BLOB read
  the record header, never the content). A big TEXT, or any value of a WITHOUT ROWID
  table (which has no incremental BLOB I/O), is still read whole.
- Still inside the harvest's read transaction, each such BLOB is copied with one
  `blob_open` handle into an unlinked spool file (so the bytes are those of the row the
  batch carries, and the bots wait no longer than for reading the row whole).
- The log gets the row with nil in place of the value (`StreamedRowBatch`), then the
  value in `ValueChunk` frames of `CHUNK` bytes read from the spool, each a batch of its
  own whose mark keeps the source's old position; only the last batch moves the
  position, so a crash before it re-sends everything.
- The apply side binds `apsw.zeroblob(size)` for the value and writes each chunk with
  `blob_open` (replicator/target.py). The verifier compares a big BLOB by size and digest,
  read the same way (`read_digested`).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Sequence

import apsw
import msgspec

from cdc import exact_text
from cdc.changelog.segments import MAX_FRAME
from cdc.errors import LogCorruptError, SourceError
from cdc.events import (
    Frame,
    RowBatch,
    RowEvent,
    SourceMark,
    SourcePosition,
    StreamedRowBatch,
    StreamedValue,
    ValueChunk,
)
from cdc.inventory import TableInfo
from cdc.sqlident import q

log = logging.getLogger(__name__)

STREAM_ABOVE = 8 << 20  # a BLOB longer than this many bytes is streamed, not carried
CHUNK = 8 << 20  # bytes per ValueChunk frame
DIGEST_EXT = 1  # msgpack ext code of a digested big BLOB (verifier): size (8 bytes LE) + blake2b
# (exact_text.TEXT_EXT, 2, is a TEXT that is not valid UTF-8)


# -- wide tables ---------------------------------------------------------------------------
def column_limit(conn: apsw.Connection) -> int:
    return conn.limit(apsw.SQLITE_LIMIT_COLUMN, -1)


def select_wide(
    conn: apsw.Connection, exprs: Sequence[str], tail: str, args: Sequence = ()
) -> list[tuple]:
    """`SELECT exprs tail`, fetched. A select list longer than SQLite's column limit is
    read in slices, one query each, and zipped: `tail` must order the rows totally (by a
    unique key) and the caller must hold a read transaction, so every slice reads the
    same rows in the same order. A TEXT that is not valid UTF-8 reads as a `RawText`
    (`cdc.exact_text`)."""
    return exact_text.select(conn, exprs, tail, args)


def width_problems(plan) -> list[str]:  # noqa: ANN001 - cdc.plan.Plan (imports us)
    """Tables whose target rows SQLite cannot hold or write: one line each, naming the
    legacy file and table."""
    mem = apsw.Connection(":memory:")
    try:
        limit = column_limit(mem)
    finally:
        mem.close()
    problems = []
    merged: dict[tuple[str, str], list] = {}
    for sp in plan.sources:
        for m in sp.tables:
            info = sp.info(m.table)
            if info is None or info.kind != "table":
                continue
            if m.tag_column is not None:
                merged.setdefault((m.target, m.target_table.lower()), []).append((sp, m, info))
            elif not info.key and len(info.columns) + 1 > limit:
                problems.append(
                    f"{sp.path}: table {m.table!r} of source {sp.name!r} has "
                    f"{len(info.columns)} columns and no declared primary key: each row is "
                    f"written to {m.target}.{m.target_table} with its rowid, "
                    f"{len(info.columns) + 1} values, and SQLite takes at most {limit}: "
                    "declare a primary key, or exclude the table"
                )
    for (target, _), members in sorted(merged.items()):
        names: dict[str, str] = {}
        for _, _, info in members:
            for c in info.column_names:
                names.setdefault(c.lower(), c)
        width = len(names) + 1
        if width > limit:
            m = members[0][1]
            who = ", ".join(
                f"{s.path} (table {mm.table!r} of source {s.name!r})" for s, mm, _ in members
            )
            problems.append(
                f"{who}: merged into {target}.{m.target_table} with the tag column "
                f"{m.tag_column!r}, the table would have {width} columns and SQLite allows "
                f"at most {limit}: map it without `merge` (its own table, `as`), or exclude it"
            )
    return problems


# -- reading rows without loading huge BLOBs -----------------------------------------------
class _LengthLimit:
    """SQLITE_LIMIT_LENGTH lowered on `conn` for a while: no bigger value gets loaded."""

    def __init__(self, conn: apsw.Connection, n: int) -> None:
        self.conn, self.n = conn, n

    def __enter__(self) -> None:
        self.old = self.conn.limit(apsw.SQLITE_LIMIT_LENGTH, self.n)

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.conn.limit(apsw.SQLITE_LIMIT_LENGTH, self.old)


def big_blob(expr: str) -> str:
    """SQL: `expr` is a BLOB this module streams (neither function reads its bytes)."""
    return f"typeof({expr}) = 'blob' AND length({expr}) > {STREAM_ABOVE}"


def read_rows(
    conn: apsw.Connection,
    lead: Sequence[str],
    cols: Sequence[str],
    tail: str,
    args: Sequence = (),
    table: str = "",
    names: Sequence[str] = (),
    rowid: str | None = None,
    big: Callable[[int, str, int], object] | None = None,
) -> tuple[list[tuple], list[tuple[int, int, int, object]]]:
    """`SELECT lead, cols tail` inside the caller's read transaction, except that a BLOB
    longer than `STREAM_ABOVE` in `cols` (the columns `names` of `table`, whose rowid is
    the expression `rowid`) is never loaded: it reads as NULL, and `big(rowid, name, size)`
    is called for it (inside the same transaction: it may read the value incrementally).
    Returns the rows and, for each such value, (row index, column index, size, what `big`
    returned). Without `big` or `rowid` (a WITHOUT ROWID table) values are read whole."""
    exprs = [*lead, *cols]
    if big is None or rowid is None:
        return select_wide(conn, exprs, tail, args), []
    try:
        with _LengthLimit(conn, STREAM_ABOVE):
            return select_wide(conn, exprs, tail, args), []
    except apsw.TooBigError:
        pass  # some value is too big to load: read again, guarded
    guarded = [f"CASE WHEN {big_blob(c)} THEN NULL ELSE {c} END" for c in cols]
    sizes = [f"CASE WHEN {big_blob(c)} THEN length({c}) END" for c in cols]
    rows = select_wide(conn, [rowid, *lead, *guarded, *sizes], tail, args)
    n = len(cols)
    out, found = [], []
    for i, r in enumerate(rows):
        out.append(r[1:-n])
        found += [(i, j, s, big(r[0], names[j], s)) for j, s in enumerate(r[-n:]) if s is not None]
    return out, found


def spooler(conn: apsw.Connection, table: str, spool_dir: str) -> Callable[[int, str, int], object]:
    """A `read_rows` callback that copies each big BLOB of `table` into a spool file of its
    own (unlinked: nothing is left behind, even by a crash) with one incremental-I/O handle,
    `CHUNK` bytes at a time. One handle matters: a new handle walks the value's overflow
    pages from its start, so reading 1 GB a handle per chunk took 62 s instead of 1.6 s."""

    def spool(rowid: int, column: str, size: int):  # noqa: ANN202 - a binary file
        f = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - the caller closes it
        buf = bytearray(min(CHUNK, size))
        view = memoryview(buf)
        try:
            with conn.blob_open("main", table, column, rowid, False) as b:
                for off in range(0, size, CHUNK):
                    n = min(CHUNK, size - off)
                    b.read_into(buf, 0, n)
                    f.write(view[:n])
            f.flush()
        except OSError as e:
            f.close()
            raise SourceError(
                f"{conn.filename}: table {table!r}, rowid {rowid}: cannot spool its {size}-byte "
                f"BLOB {column!r} into {spool_dir}: {e}",
                hint="a streamed value needs its size in free space there for a moment",
            ) from e
        except BaseException:
            f.close()
            raise
        return f

    return spool


def table_rows(
    conn: apsw.Connection,
    info: TableInfo,
    lead: Sequence[str],
    tail: str,
    args: Sequence = (),
    spool_dir: str | None = None,
) -> tuple[list[tuple], list[tuple[int, int, int, object]]]:
    """`read_rows` of `lead` and every column of `info` (the snapshot's read), spooling
    big BLOBs into `spool_dir` (None: read them whole)."""
    cols = [q(c) for c in info.column_names]
    if spool_dir is None or info.without_rowid:
        return read_rows(conn, lead, cols, tail, args)
    return read_rows(
        conn,
        lead,
        cols,
        tail,
        args,
        info.name,
        info.column_names,
        info.rowid_alias(),
        spooler(conn, info.name, spool_dir),
    )


# Spooled values waiting for their batch to be logged, by source, then by
# (table, encoded key, column index): filled by `batches`, emptied by `append_batch`.
_SPOOLED: dict[str, dict[tuple[str, bytes, int], tuple[str, object]]] = {}


def batches(
    source: str,
    table: str,
    observed_at: float,
    events: list[RowEvent],
    streamed: list[tuple[int, int, int, object]],
    names: Sequence[str] = (),
) -> list[RowBatch]:
    """The frames of one table's events: one `RowBatch`, and the events with spooled
    values (`read_rows`' second list, `names`: the table's columns) apart in one
    `StreamedRowBatch`, whose values `append_batch` streams."""
    if not streamed:
        return [RowBatch(source, table, observed_at, events)] if events else []
    which: dict[int, int] = {}
    values = []
    waiting = _SPOOLED.setdefault(source, {})
    for i, col, size, spool in streamed:
        values.append(StreamedValue(which.setdefault(i, len(which)), col, size))
        waiting[(table, exact_text.pack(events[i].key), col)] = (names[col], spool)
    plain = [e for i, e in enumerate(events) if i not in which]
    out: list[RowBatch] = [RowBatch(source, table, observed_at, plain)] if plain else []
    out.append(StreamedRowBatch(source, table, observed_at, [events[i] for i in which], values))
    return out


# -- the harvester's side: writing a batch with its streamed values ------------------------
def append_batch(
    writer,  # noqa: ANN001 - cdc.changelog.LogWriter (or the daemon's TimedWriter)
    path: str,
    frames: list[Frame],
    mark: SourceMark,
    before: SourcePosition | None,
) -> None:
    """`writer.append_batch(frames, mark)`, then the values `frames` left out, in chunks
    (see the module's doc); `before` is the source's position before this batch."""
    waiting = _SPOOLED.pop(mark.source, {})  # and spools of a harvest that failed: closed
    try:
        streamed = [f for f in frames if isinstance(f, StreamedRowBatch)]
        if not streamed:
            _append(writer, path, frames, mark)
            return
        todo = []
        for b in streamed:
            for sv in b.streamed:
                key = b.events[sv.event].key
                got = waiting.get((b.table, exact_text.pack(key), sv.column))
                if got is None:  # cannot happen; if it did, harvest it again
                    raise SourceError(f"{path}: {b.table} key {key!r}: its spooled value is gone")
                todo.append((b, key, sv.size, *got))
        if before is None:
            raise SourceError(f"{path}: streamed values before the source was opened")
        hold = before
        _append(writer, path, frames, SourceMark(mark.source, hold, time.time()))
        for b, key, size, column, spool in todo:
            spool.seek(0)
            for offset in range(0, size, CHUNK):
                chunk = ValueChunk(b.source, b.table, key, column, offset, spool.read(CHUNK))
                _append(writer, path, [chunk], SourceMark(mark.source, hold, time.time()))
                del chunk
        _append(writer, path, [], SourceMark(mark.source, mark.position, time.time()))
    finally:
        for _, spool in waiting.values():
            spool.close()


def _append(writer, path: str, frames: list[Frame], mark: SourceMark) -> None:  # noqa: ANN001
    """`writer.append_batch`; a row batch too big for one frame (many big-ish rows in one
    harvest) is cut into several instead of stopping the daemon."""
    try:
        writer.append_batch(frames, mark)
        return
    except LogCorruptError as e:
        if "frame limit" not in e.message or not any(isinstance(f, RowBatch) for f in frames):
            raise
    writer.append_batch([p for f in frames for p in _cut(f, path)], mark)


def _cut(f: Frame, path: str) -> list[Frame]:
    """`f` as frames of at most a quarter of `MAX_FRAME` each (a row batch), by the
    encoded size of its events."""
    if not isinstance(f, RowBatch):
        return [f]
    budget = MAX_FRAME // 4
    if isinstance(f, StreamedRowBatch):  # rare: one row per frame keeps the indexes simple
        by_event: dict[int, list[StreamedValue]] = {}
        for sv in f.streamed:
            by_event.setdefault(sv.event, []).append(sv)
        out: list[Frame] = []
        for i, e in enumerate(f.events):
            _fits(e, path, f)
            vals = [StreamedValue(0, sv.column, sv.size) for sv in by_event.get(i, [])]
            if vals:
                out.append(StreamedRowBatch(f.source, f.table, f.observed_at, [e], vals))
            else:
                out.append(RowBatch(f.source, f.table, f.observed_at, [e]))
        return out
    out, cur, used = [], [], 0
    for e in f.events:
        n = _fits(e, path, f)
        if cur and used + n > budget:
            out.append(RowBatch(f.source, f.table, f.observed_at, cur))
            cur, used = [], 0
        cur.append(e)
        used += n
    if cur:
        out.append(RowBatch(f.source, f.table, f.observed_at, cur))
    log.warning(
        "source %s: %d rows of %s did not fit one log frame: written as %d frames",
        f.source,
        len(f.events),
        f.table,
        len(out),
        extra={"source": f.source, "table": f.table},
    )
    return out


def _fits(e: RowEvent, path: str, f: RowBatch) -> int:
    n = len(exact_text.pack(e))
    if n > MAX_FRAME - 4096:
        raise LogCorruptError(
            f"{path}: table {f.table!r}, key {e.key!r}: a row of {n} bytes exceeds the "
            f"{MAX_FRAME}-byte log frame limit",
            hint="values this big are streamed only when they are BLOBs of a rowid table; "
            "exclude the table or shrink the row",
        )
    return n


# -- the verifier's side: big BLOBs compared by size and digest ----------------------------
def digest_value(conn: apsw.Connection, table: str, column: str, rowid: int, size: int):  # noqa: ANN201
    """A big BLOB as the verifier compares it: a msgpack Ext holding its size and BLAKE2b
    digest, read in `CHUNK` pieces (inside the caller's read transaction)."""
    h = hashlib.blake2b(digest_size=16)
    with conn.blob_open("main", table, column, rowid, False) as b:
        for _ in range(0, size, CHUNK):
            h.update(b.read(CHUNK))
    return msgspec.msgpack.Ext(DIGEST_EXT, size.to_bytes(8, "little") + h.digest())


def read_digested(
    conn: apsw.Connection,
    table: str,
    rowid: str | None,
    lead: Sequence[str],
    cols: Sequence[str],
    names: Sequence[str],
    tail: str,
    args: Sequence = (),
) -> list[tuple]:
    """Rows `lead + cols` of `table` (inside a read transaction) with every BLOB above
    `STREAM_ABOVE` replaced by `digest_value` (`names`: the columns `cols` read). Without
    a `rowid` (a WITHOUT ROWID table) values are read whole."""

    def digest(r: int, column: str, size: int):  # noqa: ANN202
        return digest_value(conn, table, column, r, size)

    rows, big = read_rows(conn, lead, cols, tail, args, table, names, rowid, digest)
    if not big:
        return rows
    rows = [list(r) for r in rows]
    w = len(lead)
    for i, j, _, v in big:
        rows[i][w + j] = v
    return [tuple(r) for r in rows]


def render_digest(v: msgspec.msgpack.Ext) -> str:
    size = int.from_bytes(v.data[:8], "little")
    return f"<BLOB of {size} bytes, blake2b {v.data[8:].hex()}>"
