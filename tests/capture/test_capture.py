"""Capture by triggers: every writer is seen, every storage class survives, keys of every shape."""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.capture import triggers as capture
from cdc.config import config_from_dict
from cdc.inventory import list_tables
from tests.conftest import make_db
from tests.support.pipeline import Pipeline

SCHEMA = """
CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, v, note TEXT DEFAULT 'n');
CREATE TABLE plain(id INTEGER PRIMARY KEY, v);
CREATE TABLE textkey(k TEXT PRIMARY KEY, v);
CREATE TABLE comp(a INTEGER, b TEXT, v, PRIMARY KEY(a, b));
CREATE TABLE wr(a TEXT, b INTEGER, v, PRIMARY KEY(a, b)) WITHOUT ROWID;
CREATE TABLE nokey(a, v);
CREATE TABLE "odd ""name"" täble"("select" INTEGER PRIMARY KEY, "from" TEXT, "a b" REAL);
CREATE TABLE typed(id INTEGER PRIMARY KEY, r REAL, i INTEGER, t TEXT, b BLOB, n NUMERIC);
"""

EDGE_VALUES = [
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    0.0,
    -0.0,
    1e-300,
    -1e308,
    0.1 + 0.2,
    5e-324,
    "",
    "é",
    "😀 مرحبا",
    "a\x00b",
    b"",
    b"\x00",
    b"\x00\xff\x00",
    None,
    1.0,
    "1",
    b"1",
]


def _pipeline(tmp_path: Path, wal: bool) -> Pipeline:
    db = make_db(tmp_path / "legacy" / "bot.db", SCHEMA, wal=wal)
    cfg = config_from_dict(
        {
            "state_dir": "state",
            "targets": {"core": "out/core.db"},
            "sources": [{"name": "bot", "path": str(db)}],
            "rules": [{"table": "*", "target": "core"}],
            "daemon": {"snapshot_chunk": 7, "harvest_batch": 50},
        },
        tmp_path,
    )
    from cdc.planning.resolve import resolve_plan

    return Pipeline(cfg, resolve_plan(cfg))


def _exact(v):
    return (type(v).__name__, struct.pack(">d", v) if isinstance(v, float) else v)


def _dump(path: Path, table: str, tag: str | None = None) -> list:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    q = '"' + table.replace('"', '""') + '"'
    cols = "*" if tag is None else "*"
    rows = conn.execute(f"SELECT {cols} FROM {q} ORDER BY 1, 2").fetchall()
    conn.close()
    return sorted([[_exact(v) for v in r] for r in rows], key=repr)


def _write_all(db: Path, writer: str) -> None:
    """The same workload through three different SQLite clients."""
    stmts = []
    for i, v in enumerate(EDGE_VALUES):
        stmts.append(("INSERT INTO auto(v) VALUES (?)", (v,)))
        stmts.append(("INSERT INTO plain(id, v) VALUES (?, ?)", (i, v)))
        stmts.append(("INSERT INTO textkey(k, v) VALUES (?, ?)", (f"k{i}", v)))
        stmts.append(("INSERT INTO comp VALUES (?, ?, ?)", (i % 3, f"b{i}", v)))
        stmts.append(("INSERT INTO wr VALUES (?, ?, ?)", (f"a{i % 4}", i, v)))
        stmts.append(("INSERT INTO nokey VALUES (?, ?)", (i, v)))
        stmts.append(('INSERT INTO "odd ""name"" täble" VALUES (?, ?, ?)', (i, "x", 0.5)))
        stmts.append(("INSERT INTO typed VALUES (?, ?, ?, ?, ?, ?)", (i, v, v, v, v, v)))
    stmts += [
        ("UPDATE plain SET id = id + 1000 WHERE id % 2 = 0", ()),  # key changes
        ("UPDATE textkey SET k = k || '_renamed' WHERE rowid % 3 = 0", ()),
        ("UPDATE comp SET b = b || 'x' WHERE a = 1", ()),
        ("UPDATE wr SET b = -b WHERE a = 'a1'", ()),
        ("DELETE FROM auto WHERE id % 5 = 0", ()),
        ("DELETE FROM nokey WHERE a % 4 = 1", ()),
        ("UPDATE nokey SET v = 'changed' WHERE a % 4 = 2", ()),
        ("INSERT OR REPLACE INTO textkey(k, v) VALUES ('k1', -0.0)", ()),
        ('UPDATE "odd ""name"" täble" SET "select" = "select" + 100, "a b" = -0.0', ()),
    ]
    if writer == "sqlite3":
        c = sqlite3.connect(db, isolation_level=None)
        for sql, args in stmts:
            c.execute(sql, args)
        c.close()
    elif writer == "apsw":
        c = apsw.Connection(str(db))
        with c:
            for sql, args in stmts:
                c.execute(sql, args)
        c.close()
    else:
        lines = []
        for sql, args in stmts:
            for a in args:  # the CLI gets literals; REAL via hex bits keeps them exact
                sql = sql.replace("?", _literal(a), 1)
            lines.append(sql + ";")
        subprocess.run(
            [shutil.which("sqlite3"), str(db)], input="\n".join(lines).encode(), check=True
        )


def _literal(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return "x'" + v.hex() + "'"
    if isinstance(v, str):  # via hex: NULs and any unicode reach the CLI intact
        return "CAST(x'" + v.encode().hex() + "' AS TEXT)"
    if isinstance(v, float):
        return repr(v) if v != 0 or struct.pack(">d", v)[0] == 0 else "-0.0"
    return str(v)


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
@pytest.mark.parametrize("writer", ["sqlite3", "apsw", "cli"])
def test_every_writer_every_storage_class(tmp_path, writer, wal):
    if writer == "cli" and shutil.which("sqlite3") is None:
        pytest.skip("sqlite3 command-line shell not installed")
    p = _pipeline(tmp_path, wal)
    try:
        _write_all(Path(p.plan.sources[0].path), writer)
        p.sync()
        assert p.diffs() == []
        legacy = Path(p.plan.sources[0].path)
        for t in ("typed", "plain", "textkey", "wr", 'odd "name" täble'):
            assert _dump(legacy, t) == _dump(Path(p.plan.targets["core"]), t), t
    finally:
        p.close()


def test_real_edge_values_keep_their_bits(tmp_path):
    p = _pipeline(tmp_path, wal=False)
    db = Path(p.plan.sources[0].path)
    c = sqlite3.connect(db, isolation_level=None)
    c.executemany("INSERT INTO plain VALUES (?, ?)", [(1, -0.0), (2, 1e-300), (3, 0.1 + 0.2)])
    p.sync()
    tgt = apsw.Connection(p.plan.targets["core"])
    got = dict(tgt.execute("SELECT id, v FROM plain"))
    assert struct.pack(">d", got[1]) == struct.pack(">d", -0.0)
    assert got[2] == 1e-300 and got[3] == 0.1 + 0.2
    assert [r[0] for r in tgt.execute("SELECT typeof(v) FROM plain ORDER BY id")] == ["real"] * 3
    p.close()


values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.tuples(st.integers(0, 30), values), max_size=40))
def test_round_trip_property(tmp_path_factory, rows):
    tmp = tmp_path_factory.mktemp("prop")
    p = _pipeline(tmp, wal=False)
    try:
        c = sqlite3.connect(p.plan.sources[0].path, isolation_level=None)
        for k, v in rows:
            c.execute("INSERT OR REPLACE INTO plain VALUES (?, ?)", (k, v))
            c.execute("INSERT INTO nokey VALUES (?, ?)", (k, v))
            if k % 7 == 0:
                c.execute("DELETE FROM plain WHERE id = ?", (k + 1,))
        c.close()
        p.sync()
        assert p.diffs() == []
    finally:
        p.close()


def test_install_is_idempotent_and_uninstall_removes_only_ours(tmp_path):
    db = make_db(
        tmp_path / "a.db",
        SCHEMA + "CREATE INDEX mine ON plain(v); "
        "CREATE TRIGGER theirs AFTER INSERT ON plain BEGIN SELECT 1; END;",
    )
    conn = apsw.Connection(str(db))
    before = sorted(conn.execute("SELECT type, name, sql FROM sqlite_master"))
    tables = list_tables(conn)
    iid = capture.install(conn, tables)
    assert capture.install(conn, tables) == iid  # same installation, not a new one
    n_trig = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type='trigger' AND name LIKE '\\_cdc\\_%' ESCAPE '\\'"
    ).fetchone()[0]
    assert n_trig == 4 * len(tables)
    capture.uninstall(conn)
    assert sorted(conn.execute("SELECT type, name, sql FROM sqlite_master")) == before


def test_trigger_uses_only_old_sql(tmp_path):
    """Triggers must run on the SQLite that old bots link (3.31): no json, no unixepoch, no RETURNING."""
    db = make_db(tmp_path / "a.db", SCHEMA)
    conn = apsw.Connection(str(db))
    capture.install(conn, list_tables(conn))
    sqls = " ".join(
        r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type='trigger'")
    )
    for banned in ("json", "unixepoch", "RETURNING", "quote(", "->>", "iif("):
        assert banned not in sqls


def test_rolled_back_transaction_leaves_no_capture(tmp_path):
    p = _pipeline(tmp_path, wal=True)
    c = sqlite3.connect(p.plan.sources[0].path, isolation_level=None)
    c.execute("BEGIN")
    c.execute("INSERT INTO plain VALUES (1, 'ghost')")
    c.execute("ROLLBACK")
    c.execute("INSERT INTO plain VALUES (2, 'real')")
    p.sync()
    tgt = apsw.Connection(p.plan.targets["core"])
    assert tgt.execute("SELECT id, v FROM plain").fetchall() == [(2, "real")]
    p.close()


@pytest.mark.parametrize("merge", [False, True], ids=["copied", "merged"])
def test_replace_through_a_unique_constraint_deletes_in_the_target_too(tmp_path, merge):
    """`INSERT OR REPLACE` hitting a non-key UNIQUE deletes the old row with no DELETE trigger.

    Probe triggers record the doomed key, copied or merged table alike. A copied table's
    target has the UNIQUE too, but relying on its REPLACE is not enough: when the new row
    is gone again by the time it is harvested, the target never sees it, so never deletes
    the old one (found by the live verifier test, `delete-after-replace` below).
    """
    db = make_db(
        tmp_path / "legacy" / "bot.db",
        "CREATE TABLE pos(id INTEGER PRIMARY KEY AUTOINCREMENT, sym TEXT UNIQUE, q REAL);"
        "INSERT INTO pos(sym, q) VALUES ('A', 1), ('B', 2), ('C', 3);",
    )
    rule = {"table": "*", "target": "core"}
    if merge:
        rule["merge"] = True
    cfg = config_from_dict(
        {
            "state_dir": "state",
            "targets": {"core": "out/core.db"},
            "sources": [{"name": "bot", "path": str(db)}],
            "rules": [rule],
        },
        tmp_path,
    )
    from cdc.planning.resolve import resolve_plan

    p = Pipeline(cfg, resolve_plan(cfg))
    try:
        p.sync()
        c = sqlite3.connect(db, isolation_level=None)
        c.execute("INSERT OR REPLACE INTO pos(sym, q) VALUES ('B', 20)")  # deletes id 2 silently
        c.execute("UPDATE OR REPLACE pos SET sym = 'C' WHERE sym = 'A'")  # deletes id 3 silently
        p.sync()
        assert p.diffs() == []
        # delete-after-replace, harvested together: only the probe says id 4 went away
        c.execute("INSERT INTO pos(sym, q) VALUES ('D', 4)")
        p.sync()
        c.execute("INSERT OR REPLACE INTO pos(sym, q) VALUES ('D', 40)")  # deletes the 'D' row
        c.execute("DELETE FROM pos WHERE sym = 'D'")  # and the new row is gone too
        p.sync()
        assert p.diffs() == []
        probes = c.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE '%uniq%'").fetchone()
        assert probes[0] == 2
    finally:
        p.close()


identifiers = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
).filter(lambda s: not s.lower().startswith(("sqlite_", "_cdc_")) and s.strip() == s and s)


@settings(
    max_examples=int(os.environ.get("CDC_FUZZ_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    table=identifiers,
    cols=st.lists(identifiers, min_size=2, max_size=4, unique_by=lambda s: s.lower()),
)
def test_any_identifier_round_trips(tmp_path_factory, table, cols):
    """Quotes, spaces, unicode and keywords in table and column names: all quoted, never raw."""
    tmp = tmp_path_factory.mktemp("ident")
    qi = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    db = make_db(
        tmp / "legacy" / "bot.db",
        f"CREATE TABLE {qi(table)} ({qi(cols[0])} TEXT PRIMARY KEY, "
        + ", ".join(f"{qi(c)}" for c in cols[1:])
        + ");",
    )
    cfg = config_from_dict(
        {
            "state_dir": "state",
            "targets": {"core": "out/core.db"},
            "sources": [{"name": "bot", "path": str(db)}],
            "rules": [{"table": "*", "target": "core", "as": "copy of {table}"}],
        },
        tmp,
    )
    from cdc.planning.resolve import resolve_plan

    p = Pipeline(cfg, resolve_plan(cfg))
    try:
        c = sqlite3.connect(db, isolation_level=None)
        marks = ", ".join("?" * len(cols))
        for i in range(5):
            c.execute(f"INSERT INTO {qi(table)} VALUES ({marks})", [f"k{i}", *range(len(cols) - 1)])
        c.execute(f"UPDATE {qi(table)} SET {qi(cols[0])} = 'moved' WHERE {qi(cols[0])} = 'k1'")
        c.execute(f"DELETE FROM {qi(table)} WHERE {qi(cols[0])} = 'k2'")
        p.sync()
        assert p.diffs() == []
    finally:
        p.close()


def test_an_older_installation_gets_its_replace_probes_at_daemon_start(tmp_path):
    db = make_db(
        tmp_path / "legacy" / "bot.db",
        "CREATE TABLE pos(id INTEGER PRIMARY KEY, sym TEXT UNIQUE, q REAL);"
        "CREATE TABLE plain(id INTEGER PRIMARY KEY, v);",
    )
    cfg = config_from_dict(
        {
            "state_dir": "state",
            "targets": {"core": "out/core.db"},
            "sources": [{"name": "bot", "path": str(db)}],
            "rules": [{"table": "*", "target": "core"}],
        },
        tmp_path,
    )
    from cdc.inventory import list_tables
    from cdc.planning.resolve import resolve_plan

    conn = apsw.Connection(str(db))
    capture.install(conn, list_tables(conn), str(db), probe_unique=set())  # as before
    iid = capture.install_id(conn)
    trig = "SELECT count(*) FROM sqlite_master WHERE type='trigger' AND name LIKE '%uniq%'"
    assert conn.execute(trig).fetchone()[0] == 0
    p = Pipeline(cfg, resolve_plan(cfg), install=False)
    try:
        assert conn.execute(trig).fetchone()[0] == 2  # pos only: plain has no UNIQUE
        assert capture.install_id(conn) == iid
    finally:
        p.close()
        conn.close()
