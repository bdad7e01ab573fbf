"""The mapping of docs/postgres.md proven on a real server: every value `misfit` lets
through comes back from PostgreSQL as the same SQLite value (storage class and bytes:
int64's ends, an empty BLOB, NULL, a subnormal, a double's exact decimal in
`numeric`), and the values it refuses are ones PostgreSQL would reject or change."""

from __future__ import annotations

import math
import struct

import psycopg
import pytest

from cdc.postgres.types import from_pg, misfit, storage_class, to_pg

CARRIED = {
    "bigint": [None, 0, 1, -1, 2**63 - 1, -(2**63)],
    "double precision": [
        None, 0.0, -0.0, 1.5, -2.5e-308, 5e-324, 1.7976931348623157e308, math.inf, -math.inf,
        math.nan, 0.1, 1 / 3, 2.0**53 + 2,
    ],
    "text": [None, "", "é", "ascii", "\U0001f600 emoji", "x" * 10_000, "tab\tnl\n"],
    "bytea": [None, b"", b"\x00", bytes(range(256)), b"\xff" * 4096],
    "numeric": [
        None, 0, 2**63 - 1, -(2**63), 0.5, -0.1, 1 / 3, 5e-324, 2.0**51 + 0.5, 1e-300,
        math.inf, -math.inf, math.nan, 123456.789,
    ],
}  # fmt: skip


def _bits(v: object) -> object:
    return struct.pack("<d", v) if isinstance(v, float) else v


@pytest.mark.parametrize("pg_type", sorted(CARRIED))
def test_every_carried_value_comes_back_exactly(pg, pg_type: str) -> None:
    values = CARRIED[pg_type]
    assert [misfit(v, pg_type) for v in values] == [None] * len(values)
    with psycopg.connect(pg) as c:
        c.execute(f"CREATE TABLE t (i int PRIMARY KEY, v {pg_type})")
        with c.cursor() as cur:
            cur.executemany(
                "INSERT INTO t VALUES (%s, %s)",
                [(i, to_pg(v, pg_type)) for i, v in enumerate(values)],
            )
        back = [from_pg(v, pg_type) for (v,) in c.execute("SELECT v FROM t ORDER BY i")]
    for want, got in zip(values, back, strict=True):
        if pg_type == "double precision" and want == 0.0:
            want = 0.0  # what a REAL column of SQLite holds for -0.0 (test below)
        assert storage_class(got) == storage_class(want), (want, got)
        assert _bits(got) == _bits(want), (want, got)


def test_what_is_refused_is_what_postgresql_would_not_keep(pg) -> None:
    assert misfit("a\x00b", "text") == "TEXT holding NUL"
    assert misfit(1e300, "numeric").startswith("a whole-number REAL")
    assert misfit(2.0, "bigint") == "REAL in a bigint column"
    assert misfit(b"x", "text") == "BLOB in a text column"
    with psycopg.connect(pg) as c:
        with pytest.raises(psycopg.DataError):
            c.execute("SELECT %s::text", ("a\x00b",))
        c.rollback()
        (got,) = c.execute("SELECT %s::numeric", (to_pg(1e300, "numeric"),)).fetchone()
        assert type(from_pg(got, "numeric")) is int  # the REAL would come back an INTEGER


def test_minus_zero_in_a_real_column_is_what_sqlite_itself_keeps(pg) -> None:
    """SQLite stores -0.0 in a REAL column as 0.0: PostgreSQL's -0.0 (a bot's write after
    cutover) stands for that value, so the way back and the verifier agree with SQLite."""
    import sqlite3

    lite = sqlite3.connect(":memory:")
    lite.execute("CREATE TABLE t(x REAL)")
    lite.execute("INSERT INTO t VALUES (?)", (-0.0,))
    (kept,) = lite.execute("SELECT x FROM t").fetchone()
    with psycopg.connect(pg) as c:
        (got,) = c.execute("SELECT '-0'::double precision").fetchone()
    assert _bits(got) == _bits(-0.0)
    assert _bits(from_pg(got, "double precision")) == _bits(kept) == _bits(0.0)
