"""Values and their SQL text: every generated statement is plain SQL with literals, so the
script printed for a failure replays in the `sqlite3` shell exactly as it ran."""

from __future__ import annotations

import math
import struct

from hypothesis import strategies as st


class BadText:
    """TEXT whose bytes are not valid UTF-8: only SQL can make one (`CAST(x'..' AS TEXT)`)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return f"CAST(x'{self.raw.hex()}' AS TEXT)"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(v: object) -> str:
    """The SQL literal that stores exactly `v` (storage class and bits)."""
    if v is None:
        return "NULL"
    if isinstance(v, BadText):
        return repr(v)
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "1e999" if v > 0 else "-1e999"
        if v == 0:
            return "-0.0" if struct.pack(">d", v)[0] & 0x80 else "0.0"
        text = repr(v)
        return text if ("." in text or "e" in text or "inf" in text) else text + ".0"
    if isinstance(v, str):
        if "\x00" in v or not v.isprintable():  # NULs and controls survive only via hex
            return f"CAST(x'{v.encode().hex()}' AS TEXT)"
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, bytes):
        return f"x'{v.hex()}'"
    raise TypeError(type(v))


# -- values ---------------------------------------------------------------------------------

SMALL_INTS = st.integers(-3, 5)
EDGE_INTS = st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), -(2**63) + 1])
EDGE_REALS = st.sampled_from(
    [0.0, -0.0, 1.0, 0.5, -1.5, 1e-300, 5e-324, -1e308, 1.7976931348623157e308, 0.1 + 0.2]
)
INFINITIES = st.sampled_from([math.inf, -math.inf])
TEXTS = st.sampled_from(["", "a", "A", "b", "1", "é", "😀 x", "it's", "a\x00b", "x\ny"])
BLOBS = st.sampled_from([b"", b"\x00", b"1", b"\xff\x00\xfe", b"a"])


def bad_text() -> st.SearchStrategy[BadText]:
    return st.sampled_from([b"\xff", b"a\x80b", b"\xc3", b"\xed\xa0\x80", b"\x00\xfe"]).map(BadText)


def values(features: frozenset[str]) -> st.SearchStrategy[object]:
    """Any value, of every storage class, for a non-key column."""
    parts = [
        st.none(),
        SMALL_INTS,
        EDGE_INTS,
        EDGE_REALS,
        st.floats(allow_nan=False, allow_infinity=False),
        TEXTS,
        st.text(max_size=8),
        BLOBS,
        st.binary(max_size=8),
    ]
    if "big_values" in features:
        parts += [
            INFINITIES,
            st.sampled_from(["x" * 70_000, "é" * 5000]),
            st.sampled_from([b"\x00" * 70_000, bytes(range(256)) * 300]),
        ]
    if "utf8" in features:
        parts.append(bad_text())
    return st.one_of(*parts)


def key_values(kind: str, collate: str, features: frozenset[str]) -> st.SearchStrategy:
    """A small key domain, so inserts collide, replace and update each other's rows."""
    if kind in ("ipk", "ipk_desc", "int"):
        base = st.integers(-2, 6)
    elif kind == "text":
        words = ["a", "b", "k1", "", "é"]
        if "collation" in features and collate != "BINARY":
            words += ["A", "a ", "B", "K1", "k1  "]
        base = st.sampled_from(words)
    else:  # untyped: every storage class is a different key
        base = st.one_of(st.integers(-2, 4), st.sampled_from(["a", "1", "b"]), BLOBS)
        if "numeric_keys" in features:
            base = st.one_of(base, st.sampled_from([1.0, 2.0, -0.0, 0.0, 2.5]))
        if "collation" in features and collate != "BINARY":
            base = st.one_of(base, st.sampled_from(["A", "a ", "B"]))
    if "utf8" in features and kind in ("text", "untyped"):
        base = st.one_of(base, bad_text())
    if "null_keys" in features and kind != "ipk":
        base = st.one_of(base, st.none())
    return base
