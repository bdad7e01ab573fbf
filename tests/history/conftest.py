"""What the history tests share: the first legacy schema and how tables are compared."""

from __future__ import annotations

import apsw

from verifier.values import encode

SCHEMA_A = """
CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty, price REAL, data BLOB, note);
CREATE TABLE pairs(k TEXT, n INTEGER, v, PRIMARY KEY(k, n)) WITHOUT ROWID;
CREATE TABLE quotes(sym TEXT PRIMARY KEY, px REAL);
INSERT INTO items VALUES (1, 'one', 1, 1.5, X'01', NULL), (2, 'two', 2, 2.5, NULL, 'n'),
                         (3, 'three', 3, 3.5, X'0303', NULL);
INSERT INTO pairs VALUES ('x', 1, 'a'), ('x', 2, 'b');
INSERT INTO quotes VALUES ('AAA', 10.0), ('BBB', 20.0);
"""


def table_rows(conn: apsw.Connection, table: str, order: str, where: str = "") -> list[tuple]:
    cols = [r[1] for r in conn.execute(f"SELECT * FROM pragma_table_info('{table}')")]
    cols = [c for c in cols if c != "src"]
    sel = ", ".join(f'"{c}", typeof("{c}")' for c in cols)
    return [tuple(r) for r in conn.execute(f"SELECT {sel} FROM {table} {where} ORDER BY {order}")]


def same_tables(a: dict[str, list[tuple]], b: dict[str, list[tuple]]) -> bool:
    """Equal by storage class and exact bits (1 == 1.0 and 0.0 == -0.0 in Python)."""
    return a == b and encode(list(a.items())) == encode(list(b.items()))
