"""The plain full comparison (`verifier.compare`), used on quiet copies and by the tests'
own pipeline: a row is a row, also where keys repeat (fuzzer finding F5)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import apsw

from cdc.planning.plan import TableMapping
from verifier import compare_table

SCHEMA = "CREATE TABLE t(ka INTEGER, kb TEXT, a, PRIMARY KEY(ka, kb));"


def _db(path: Path, rows: int) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute(SCHEMA)
    for _ in range(rows):  # NULLs are distinct in a rowid table's key: the key repeats
        conn.execute("INSERT INTO t(ka, kb) VALUES (0, NULL)")
    return conn


def test_a_repeated_null_key_counts_every_row(tmp_path: Path) -> None:
    m = TableMapping("s", "t", "core", "t")
    with contextlib.closing(_db(tmp_path / "legacy.db", 2)) as src:
        with contextlib.closing(_db(tmp_path / "target.db", 1)) as tgt:
            d = compare_table(src, tgt, m)
            assert not d.equal and (d.source_rows, d.target_rows) == (2, 1), d
        with contextlib.closing(_db(tmp_path / "same.db", 2)) as tgt:
            assert compare_table(src, tgt, m).equal
