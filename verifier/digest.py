"""A whole-table proof for quiet tables: both sides compared in one query over both files
(`join_check`), or, where that cannot be used, row counts and a digest of every row.

Under a cutover's fence both sides are quiet and drained, so no position protocol is
needed: each side is read once, in one read transaction, in chunks of bounded memory, in
the legacy key order (with the legacy key's
collation, applied to the target too), its rows encoded exactly as the verifier sees
them (`verifier.values`: storage class and exact bits, a TEXT that is not UTF-8 apart
from a BLOB of its bytes, a big BLOB as its size and BLAKE2b digest) and hashed with
BLAKE2b. Equal digests and counts mean the same rows, value for value, in every column:
unlike a check of the keys the change log names, a change the log never saw cannot pass
(something else writing to the target, a legacy file that lost committed transactions).

Rows whose key holds NULL have no order of their own (a NULL key may repeat): they are
hashed as a sorted list of their encodings, a multiset, as the verifier compares them.
A keyless table's rows are read with their rowid, which identifies them.

It is all pause for the bots. The join makes no Python object per value; the digests
read every row into Python (bench/test_fence_digest.py measures both side by side).
SQLite has no hash function of its own, so the digests cannot be left to SQL, and
building an exact text per chunk in SQL to hash it was measured slower than Python
(bench/test_compare_in_sql.py).
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.parse
from typing import NamedTuple

import apsw

from cdc.changelog.bigrows import STREAM_ABOVE
from cdc.config import VerifySettings
from cdc.planning.plan import TableMapping
from cdc.sqlconn import read_transaction
from verifier.model import TableResult
from verifier.sides import TableSides
from verifier.table import TableVerifier
from verifier.values import encode

CHUNK = 5000  # rows per read: memory stays bounded whatever the table's size
JOINED = "cdc_target"  # the schema name of the target attached to a legacy connection
# Columns (keys included) one join compares: each adds a term to one expression, and
# SQLite caps an expression's depth at 1000. Wider tables are digested.
JOIN_COLUMNS = 200


class Prepared(NamedTuple):
    """A table's join built ahead (before a fence: reading both schemas for it took 50 ms
    of the corpus's analytics pause), valid while both files' schema cookies are these:
    the join reads them in its own read transaction and declines on any other
    (`join_check`), so a DDL from any process in between is never missed."""

    sides: TableSides
    legacy_cookie: int
    target_cookie: int


def cookies(joined: apsw.Connection) -> tuple[int, int]:
    """The schema cookies of the legacy file and its attached target: read before a
    table's shapes are, a change after them shows as a different cookie."""
    return (
        joined.execute("PRAGMA main.schema_version").fetchone()[0],
        joined.execute(f"PRAGMA {JOINED}.schema_version").fetchone()[0],
    )


class SideDigest:
    """One side read in key order, chunk after chunk, in one read transaction: its row
    count (by SQL), the rows hashed, and the BLAKE2b of their encodings."""

    def __init__(self, sides: TableSides, conn: apsw.Connection, target: bool) -> None:
        self.hashed = 0
        h = hashlib.blake2b(digest_size=16)
        with read_transaction(conn):
            self.count = sides.target_count(conn) if target else sides.source_count(conn)
            for rows in _chunks(sides, conn, target):
                # A chunk is a msgpack array (its length, then its rows): the stream
                # decodes to one list of chunks, so equal streams mean the same rows in
                # the same order (equal sides are cut into equal chunks).
                h.update(encode(rows))
                self.hashed += len(rows)
            nulls = (
                (sides.target_null_rows(conn) if target else sides.source_null_rows(conn))
                if sides.nullable_key
                else []
            )
        if nulls:  # a NULL key may repeat: the rows are a multiset, hashed sorted
            h.update(b"\xff" + b"".join(sorted(encode(r) for r in nulls)))
            self.hashed += len(nulls)
        self.digest = h.hexdigest()


def attach_target(legacy: str, target: str, busy_timeout_ms: int) -> apsw.Connection:
    """A read-only connection to a legacy file with its target attached read-only as
    JOINED, both schemas parsed now (before a fence: a connection's first statement parses
    the whole schema, which under the fence would be pause)."""
    conn = apsw.Connection(legacy, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        uri = "file:" + urllib.parse.quote(os.path.abspath(target)) + "?mode=ro"
        conn.execute(f"ATTACH ? AS {JOINED}", (uri,))
    except apsw.Error:  # e.g. a UTF-16 legacy file: attached files share its encoding
        conn.close()
        raise
    conn.execute(
        f"SELECT (SELECT count(*) FROM main.sqlite_master), (SELECT count(*) FROM {JOINED}.sqlite_master)"
    ).fetchall()
    return conn


def compile_join(sides: TableSides, joined: apsw.Connection) -> None:
    """Have SQLite compile a table's join now, reading nothing (`TableSides.join_sql` with
    `go` False; the next run with the same text reuses the compiled statement). A schema
    change (a fence's triggers) makes every statement compile again at its next run: the
    65 joins of the corpus's analytics stage took 25-35 ms more of the pause after the
    fence than before it. Run right after a file's fence commits, that work overlaps the
    other files' commits, which wait on the disk."""
    if sides.width + len(sides.columns) <= JOIN_COLUMNS:
        sql, args = sides.join_sql(JOINED, STREAM_ABOVE, go=False)
        joined.execute(sql, args).fetchall()


def join_check(
    sides: TableSides,
    joined: apsw.Connection,
    src: apsw.Connection,
    tgt: apsw.Connection,
    res: TableResult,
    expect: tuple[int, int] | None = None,
) -> bool:
    """Both quiet sides compared in one query of one read transaction over both files: a
    join on the key, every column compared exactly in SQL (`sides.exact_same`), no Python
    object per value (1.5x faster than the digests, bench/README.md, "Comparing inside
    SQLite"). Equal exactly when every legacy row has an exactly equal target row and
    the counts agree: legacy keys are distinct, so exactly equal pairs are one to one.
    False (the caller digests instead) for a table too wide for one expression or holding
    a value over `STREAM_ABOVE` bytes (compared whole here, it would be held in memory),
    and for `sides` built ahead when the files' schema cookies are no longer `expect`."""
    if sides.width + len(sides.columns) > JOIN_COLUMNS:
        return False
    sql, args = sides.join_sql(JOINED, STREAM_ABOVE)
    with read_transaction(joined):
        if expect is not None and cookies(joined) != expect:
            return False
        scount, tcount, _pairs, judged = joined.execute(sql, args).fetchone()
    big, same = divmod(judged or 0, 1 << 32)
    if big:
        return False
    snulls = tnulls = []
    if sides.nullable_key:  # a NULL key may repeat: compared as multisets, in Python
        with read_transaction(src):
            snulls = sorted(encode(r) for r in sides.source_null_rows(src))
        with read_transaction(tgt):
            tnulls = sorted(encode(r) for r in sides.target_null_rows(tgt))
    res.chunks = 1
    res.source_rows, res.target_rows = scount + len(snulls), tcount + len(tnulls)
    if scount == tcount == int(same) and snulls == tnulls:
        res.compared_rows = res.source_rows
        return True
    res.state = "diverged"
    res.reason = (
        f"under the fence the rows differ ({res.source_rows} legacy, {res.target_rows} "
        f"target; {int(same)} of {scount} legacy rows have an exactly equal target row)"
    )
    return True


def _chunks(sides: TableSides, conn: apsw.Connection, target: bool):  # noqa: ANN202
    """Non-empty chunks of rows (key first), in the legacy key order. The legacy side's
    chunk ends where `source_bound` says (its key is unique under its collation); the
    target's after CHUNK rows, the next one after the last key read. Target rows tied
    under that order could be skipped there, which the SQL count then tells."""
    lo = None
    while True:
        if target:
            rows = sides.target_rows(conn, lo, None, CHUNK)
            last = len(rows) < CHUNK
        else:
            hi = sides.source_bound(conn, lo, CHUNK)
            rows = sides.source_rows(conn, lo, hi)
            last = hi is None
        if rows:
            yield rows
            lo = list(rows[-1][: sides.width])
        if last or not rows:
            return


def digest_check(
    src: apsw.Connection,
    tgt: apsw.Connection,
    m: TableMapping,
    settings: VerifySettings,
    joined: apsw.Connection | None = None,
    ahead: tuple[Prepared, int] | None = None,
) -> TableResult:
    """`equal` when both sides hold the same rows (counts and digests agree), else
    `diverged` with both counts and digests: the caller verifies such a table in full to
    name the keys. Only meaningful while both sides are quiet (under a fence, drained).
    `joined`: the legacy file with the target attached as JOINED (`attach_target`), where
    both sides are compared in one query instead (`join_check`). `ahead`: the table's
    join built before (`Prepared`) and the legacy cookie the file must have now; used
    when both cookies are as expected, else the table's shapes are read again."""
    v = TableVerifier(src, tgt, m, settings)
    res = v.res
    res.started_at = time.time()
    if joined is not None and ahead is not None:
        p, legacy_cookie = ahead
        if join_check(p.sides, joined, src, tgt, res, (legacy_cookie, p.target_cookie)):
            res.finished_at = time.time()
            return res
    early = v.prepare()
    if early is not None:
        return early
    if joined is not None and join_check(v.sides, joined, src, tgt, res):
        res.finished_at = time.time()
        return res
    try:
        tgt_side = SideDigest(v.sides, tgt, True)
        src_side = SideDigest(v.sides, src, False)
    except apsw.Error as e:
        res.state, res.reason = "unsettled", f"read failed: {type(e).__name__}: {e}"
        res.finished_at = time.time()
        return res
    res.chunks = 1
    res.source_rows, res.source_digest = src_side.count, src_side.digest
    res.target_rows, res.target_digest = tgt_side.count, tgt_side.digest
    sides = (src_side.count, src_side.hashed, src_side.digest)
    if sides == (tgt_side.count, tgt_side.hashed, tgt_side.digest) and sides[0] == sides[1]:
        res.compared_rows = res.source_rows
    else:
        res.state = "diverged"
        res.reason = (
            f"under the fence the rows differ ({res.source_rows} legacy, {res.target_rows} "
            f"target; digests {res.source_digest[:16]} / {res.target_digest[:16]})"
        )
    res.finished_at = time.time()
    return res
