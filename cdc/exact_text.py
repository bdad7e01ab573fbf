"""TEXT that is not valid UTF-8, carried as its exact bytes from legacy file to target.

SQLite stores whatever bytes a writer hands it as TEXT (`CAST(x'41ff42' AS TEXT)`, any C
bot), and APSW raises `UnicodeDecodeError` when a row holding such a value is read. One
such value must neither stop replication nor change on the way, so:

- `RawText` stands for it: the value's bytes, storage class TEXT. It is not a `bytes`
  (that would be bound as a BLOB without anyone noticing) and not a `str` (Python cannot
  hold it). APSW refuses to bind it, so a writer that forgot it fails loudly.
- Reads (`select`) run as before; only when APSW raises `UnicodeDecodeError` is the read
  done again with every TEXT result read as its bytes next to its `typeof()`, and each
  value rebuilt: bytes that decode become `str` again, the others `RawText`. So a
  database whose text is all valid pays nothing per value.
- The msgpack encoders and decoders of row values (the log, repair requests, the
  verifier's row encodings) carry it as an Ext of code `TEXT_EXT`, apart from `str`
  (msgpack str) and BLOB (msgpack bin).
- Writes bind its bytes and turn them back into TEXT in SQL, `CAST(? AS TEXT)`, which in
  a UTF-8 database keeps the bytes as they are (`marks`, `binds`, `executemany`).

The database encoding must be UTF-8 wherever a `RawText` is read or written: in a UTF-16
file, `CAST` converts between encodings and the bytes would change, so that is refused
with an error naming the file.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import chain
from typing import Any

import apsw
import msgspec

from cdc.errors import CdcError

TEXT_EXT = 2  # msgpack ext code of a RawText (cdc.bigrows.DIGEST_EXT is 1)
CAST = "CAST(? AS TEXT)"


class RawText:
    """A TEXT value whose bytes are not valid UTF-8 (compares and hashes by its bytes)."""

    __slots__ = ("data",)
    made = False  # whether this process ever held one: writers skip the search until then

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = bytes(data)
        RawText.made = True

    def __eq__(self, other: object) -> bool:
        return type(other) is RawText and other.data == self.data

    def __hash__(self) -> int:
        return hash((RawText, self.data))

    def __repr__(self) -> str:
        return f"RawText({self.data!r})"


class TextEncodingError(CdcError):
    """A TEXT value that is not valid UTF-8 in a database whose encoding is not UTF-8."""

    exit_code = 4


def text_of(data: bytes) -> str | RawText:
    """The value a TEXT of these bytes is: a `str` when they are UTF-8, else a `RawText`."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return RawText(data)


def from_arg(text: str) -> str | RawText:
    """A command-line string: undecodable bytes arrive as surrogate escapes (PEP 383)."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text_of(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError as e:
        raise TextEncodingError(f"{text!r}: holds a character no TEXT can: {e}") from None


# -- msgpack ---------------------------------------------------------------------------------
def enc_hook(v: object) -> msgspec.msgpack.Ext:
    if type(v) is RawText:
        return msgspec.msgpack.Ext(TEXT_EXT, v.data)
    raise NotImplementedError(f"cannot encode a {type(v).__name__}")


def ext_hook(code: int, data: memoryview) -> object:
    if code == TEXT_EXT:
        return RawText(data)
    return msgspec.msgpack.Ext(code, bytes(data))


ENCODER = msgspec.msgpack.Encoder(enc_hook=enc_hook)
pack = ENCODER.encode  # row values as msgpack, a RawText as its Ext


def decoder(type: Any = Any) -> msgspec.msgpack.Decoder:  # noqa: A002 - msgspec's name
    return msgspec.msgpack.Decoder(type, ext_hook=ext_hook)


def builtins(v: object) -> object:
    """`msgspec.to_builtins` for values that may hold a RawText (shown by its repr)."""
    return msgspec.to_builtins(v, builtin_types=(bytes,), enc_hook=repr)


# -- reading ---------------------------------------------------------------------------------
def select(
    conn: apsw.Connection,
    exprs: Sequence[str],
    tail: str,
    args: Sequence = (),
    distinct: bool = False,
) -> list[tuple]:
    """`SELECT exprs tail`, fetched, whatever bytes a TEXT holds. A select list longer than
    SQLite's column limit is read in slices, one query each, and zipped: `tail` must then
    order the rows totally and the caller hold a read transaction, so that every slice
    (and the exact re-read) sees the same rows in the same order."""
    head = "SELECT DISTINCT" if distinct else "SELECT"
    try:
        return _sliced(conn, head, list(exprs), tail, args, 1)
    except UnicodeDecodeError:
        pass
    _need_utf8(conn)
    pairs = list(chain.from_iterable(_exact(e) for e in exprs))
    rows = _sliced(conn, head, pairs, tail, args, 2)
    return [
        tuple(text_of(v) if t == "text" else v for v, t in zip(r[::2], r[1::2], strict=True))
        for r in rows
    ]


def fetchone(
    conn: apsw.Connection, exprs: Sequence[str], tail: str, args: Sequence = ()
) -> tuple | None:
    rows = select(conn, exprs, tail, args)
    return rows[0] if rows else None


def _exact(expr: str) -> tuple[str, str]:
    return f"CASE WHEN typeof({expr}) = 'text' THEN CAST({expr} AS BLOB) ELSE {expr} END", (
        f"typeof({expr})"
    )


def _sliced(
    conn: apsw.Connection, head: str, exprs: list[str], tail: str, args: Sequence, group: int
) -> list[tuple]:
    """Slices keep groups of `group` result columns (a value and its type) together."""
    lim = conn.limit(apsw.SQLITE_LIMIT_COLUMN, -1) // group * group
    if len(exprs) <= lim:
        return conn.execute(f"{head} {', '.join(exprs)} {tail}", args).fetchall()
    parts = [
        conn.execute(f"{head} {', '.join(exprs[i : i + lim])} {tail}", args).fetchall()
        for i in range(0, len(exprs), lim)
    ]
    return [tuple(chain.from_iterable(r)) for r in zip(*parts, strict=True)]


def _need_utf8(conn: apsw.Connection) -> None:
    enc = conn.execute("PRAGMA encoding").fetchone()[0]
    if enc != "UTF-8":
        raise TextEncodingError(
            f"{conn.filename}: holds TEXT that is not valid Unicode, and its encoding is "
            f"{enc}: such values are carried exactly only in UTF-8 databases",
            hint="fix or remove the value, or convert the file to UTF-8 (`cdc docs architecture`, Limits)",
        )


# -- writing ---------------------------------------------------------------------------------
def mark(v: object) -> str:
    """The placeholder that stores `v` with its storage class."""
    return CAST if type(v) is RawText else "?"


def marks(values: Sequence) -> str:
    return ", ".join(mark(v) for v in values)


def binds(values: Sequence) -> list:
    """`values` as APSW binds them: a RawText as its bytes (for a `mark` placeholder)."""
    return [v.data if type(v) is RawText else v for v in values]


def has_raw(values: Sequence) -> bool:
    return RawText.made and any(type(v) is RawText for v in values)


def executemany(conn: apsw.Connection, sql: str, rows: list) -> None:
    """`conn.executemany(sql, rows)`, except that a row holding a RawText is written by a
    statement of its own, with `CAST(? AS TEXT)` at those places. Only for statements
    whose rows may go in any order (each key once: one consistent cut)."""
    if not RawText.made:
        conn.executemany(sql, rows)
        return
    plain, raw = [], []
    for r in rows:
        (raw if any(type(v) is RawText for v in r) else plain).append(r)
    if plain:
        conn.executemany(sql, plain)
    if raw:
        _need_utf8(conn)
    for r in raw:
        at = tuple(i for i, v in enumerate(r) if type(v) is RawText)
        conn.execute(cast_at(sql, at), binds(r))


@functools.lru_cache(maxsize=256)
def cast_at(sql: str, positions: tuple[int, ...]) -> str:
    """`sql` with the placeholders of bind positions `positions` (from 0) wrapped in
    `CAST(... AS TEXT)`. Numbered (`?3`, used more than once) and anonymous `?` are
    numbered as SQLite numbers them; quoted identifiers and literals are skipped."""
    out, largest, i, want = [], 0, 0, {p + 1 for p in positions}
    closing = {'"': '"', "'": "'", "`": "`", "[": "]"}
    while i < len(sql):
        ch = sql[i]
        if ch in closing:
            end = i + 1
            while end < len(sql):
                if sql[end] == closing[ch]:
                    if ch != "[" and end + 1 < len(sql) and sql[end + 1] == ch:
                        end += 2  # a doubled quote inside
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1])
            i = end + 1
            continue
        if ch != "?":
            out.append(ch)
            i += 1
            continue
        end = i + 1
        while end < len(sql) and sql[end].isdigit():
            end += 1
        n = int(sql[i + 1 : end]) if end > i + 1 else largest + 1
        largest = max(largest, n)
        out.append(f"CAST({sql[i:end]} AS TEXT)" if n in want else sql[i:end])
        i = end
    if want and largest < max(want):
        raise ValueError(f"{sql!r} has {largest} parameters, position {max(want)} asked")
    return "".join(out)
