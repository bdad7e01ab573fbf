"""How a SQLite value crosses to PostgreSQL and back, exactly, or is refused.

SQLite stores any value in any column; PostgreSQL stores one type per column. So a
column's PostgreSQL type comes from its affinity (the same rule that decides how SQLite
itself stores a value there), and equality across engines is defined by that mapping: a
value is carried when `from_pg(to_pg(v, t), t)` gives back `v` with its storage class and
its bytes, and every value for which that cannot hold is named by `misfit`, so the plan
refuses its column before anything is copied (docs/postgres.md writes it down value
class by value class).

| affinity | PostgreSQL | carries | refuses |
|---|---|---|---|
| INTEGER | bigint | INTEGER (all of int64) | REAL, TEXT, BLOB |
| REAL | double precision | REAL (bit for bit: NaN, ±inf, subnormals; -0.0 as 0.0, as SQLite) | TEXT, BLOB |
| TEXT | text | valid UTF-8 without NUL | NUL, invalid UTF-8, BLOB |
| BLOB (no type) | bytea | BLOB (empty included) | INTEGER, REAL, TEXT |
| NUMERIC | numeric | INTEGER; a REAL that is not a whole number, ±inf, NaN | a whole-number REAL, TEXT, BLOB |

NULL is NULL everywhere. A whole-number REAL in a NUMERIC column (SQLite keeps 1e300 as a
REAL there: no int64 holds it) would come back as an INTEGER: `numeric` keeps no storage
class, so which one it was is told by the fraction alone. A REAL in a REAL column comes
back from `double precision` bit for bit, including NaN's payload? No: PostgreSQL keeps
one NaN, so only the canonical quiet NaN (the one SQLite itself produces) is carried.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal

from cdc.exact_text import RawText
from cdc.inventory import affinity, stored_type

BY_AFFINITY = {
    "INTEGER": "bigint",
    "REAL": "double precision",
    "TEXT": "text",
    "BLOB": "bytea",
    "NUMERIC": "numeric",
}
_CANONICAL_NAN = struct.pack("<d", math.nan)


def pg_type(decl_type: str, strict: bool = False) -> str:
    """The PostgreSQL type of a SQLite column, from its affinity."""
    return BY_AFFINITY[affinity(stored_type(decl_type, strict))]


def storage_class(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool | int):
        return "integer"
    if isinstance(v, float):
        return "real"
    if isinstance(v, str | RawText):
        return "text"
    return "blob"


def misfit(v: object, pg: str) -> str | None:
    """Why `v` cannot be carried exactly in a column of PostgreSQL type `pg` (None: it
    can). The reason names the value class, so refusals group by it."""
    cls = storage_class(v)
    if cls == "null":
        return None
    allowed = {
        "bigint": ("integer",),
        "double precision": ("real",),
        "text": ("text",),
        "bytea": ("blob",),
        "numeric": ("integer", "real"),
    }[pg]
    if cls not in allowed:
        return f"{cls.upper()} in a {pg} column"
    if isinstance(v, RawText):
        return "TEXT that is not valid UTF-8"
    if isinstance(v, str) and "\x00" in v:
        return "TEXT holding NUL"
    if isinstance(v, float):
        if math.isnan(v) and struct.pack("<d", v) != _CANONICAL_NAN:
            return "a NaN with a payload"
        if pg == "numeric" and math.isfinite(v) and v == int(v):
            return "a whole-number REAL in a numeric column (it would come back INTEGER)"
    return None


def to_pg(v: object, pg: str) -> object:
    """The Python value psycopg binds for `v` in a column of type `pg` (after `misfit`)."""
    if v is None or pg != "numeric":
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return Decimal("NaN")
        return Decimal(v)  # a double's exact value: finitely many decimal digits
    return Decimal(int(v))


def from_pg(v: object, pg: str) -> object:
    """The SQLite value a PostgreSQL value of type `pg` stands for."""
    if v is None:
        return None
    if pg == "bytea":
        return bytes(v)
    if pg == "double precision" and v == 0.0:
        # A REAL column of SQLite cannot hold -0.0 (it stores 0.0): a bot that writes
        # -0.0 into PostgreSQL wrote the value a SQLite REAL column keeps as 0.0.
        return 0.0
    if pg == "numeric":
        d = v if isinstance(v, Decimal) else Decimal(v)
        if d.is_finite() and d == d.to_integral_value():
            return int(d)
        return float(d)  # exact decimal of a double: converts back to the same double
    return v
