"""How the verifier sees a value: its storage class and exact content, nothing else.

Rows are compared and summed up as msgpack bytes (msgspec, in C): an INTEGER encodes as a
msgpack int, a REAL always as a float64 with its exact bits (so -0.0 differs from 0.0 and
1.0 from 1), TEXT as str (UTF-8), BLOB as bin and NULL as nil. Two rows are equal exactly
when their encodings are, which is the meaning of equality a migration needs: Python's
`==` would call 1, 1.0 and True equal. SQLite never stores NaN (binding one stores NULL),
so NaN needs no rule.

For people, values are rendered as SQL literals, which show the storage class too:
`1`, `1.0`, `'1'`, `X'31'`, `NULL`.
"""

from __future__ import annotations

import hashlib

import msgspec

_encode = msgspec.msgpack.Encoder().encode


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
    return "X'" + bytes(v).hex().upper() + "'"


def render_row(values) -> list[str]:  # noqa: ANN001
    return [render(v) for v in values]
