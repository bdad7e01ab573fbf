"""How the verifier sees a value: its storage class and exact content, nothing else.

Rows are compared and summed up as msgpack bytes (msgspec, in C): an INTEGER encodes as a
msgpack int, a REAL always as a float64 with its exact bits (so -0.0 differs from 0.0 and
1.0 from 1), TEXT as str (UTF-8), BLOB as bin and NULL as nil; a TEXT whose bytes are not
valid UTF-8 (`cdc.exact_text.RawText`) as a msgpack Ext of its own code holding those
bytes, so it equals neither a BLOB of the same bytes nor any str. Two rows are equal exactly
when their encodings are, which is the meaning of equality a migration needs: Python's
`==` would call 1, 1.0 and True equal. SQLite never stores NaN (binding one stores NULL),
so NaN needs no rule.

A BLOB longer than `cdc.bigrows.STREAM_ABOVE` is never read whole: both sides read it as a
msgpack Ext holding its size and BLAKE2b digest (`bigrows.read_digested`), so it compares
equal exactly when size and digest agree.

For people, values are rendered as SQL literals, which show the storage class too:
`1`, `1.0`, `'1'`, `X'31'`, `NULL`, a TEXT that is not UTF-8 as `CAST(X'41FF42' AS TEXT)`
(what the verifier shows can be pasted into SQL), and a big BLOB as `<BLOB of n bytes, blake2b ...>`.
"""

from __future__ import annotations

import hashlib

import msgspec

from cdc import exact_text
from cdc.changelog.bigrows import render_digest

_encode = exact_text.ENCODER.encode


def encode(values) -> bytes:  # noqa: ANN001 - a tuple or list of SQLite values
    return _encode(values)


def chunk_digest(encoded: bytes) -> bytes:
    return hashlib.blake2b(encoded, digest_size=16).digest()


def digest(chunk_digests: list[bytes]) -> str:
    """A table's digest: the hash of its chunks' digests, in key order (hex)."""
    return hashlib.blake2b(b"".join(chunk_digests), digest_size=16).hexdigest()


def render(v: object) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        return r if any(c in r for c in ".en") else r + ".0"  # inf/-inf keep their name
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, exact_text.RawText):
        return f"CAST(X'{v.data.hex().upper()}' AS TEXT)"
    if isinstance(v, msgspec.msgpack.Ext):  # a BLOB too big to read whole (cdc.bigrows)
        return render_digest(v)
    return "X'" + bytes(v).hex().upper() + "'"


def render_row(values) -> list[str]:  # noqa: ANN001
    return [render(v) for v in values]
