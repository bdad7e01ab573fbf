"""Identifiers reach SQL quoted: a hypothesis fuzz runs install + harvest + apply on
arbitrary table, column, index and source names (keywords, quotes, brackets, dots, spaces,
non-ASCII), and names read back from a legacy file are quoted again."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import apsw
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdc.config import config_from_dict
from cdc.planning.resolve import resolve_plan
from tests.conftest import cdc_cmd, make_db, write_config
from tests.support.pipeline import Pipeline

# -- 3. identifiers reach SQL quoted ---------------------------------------------------------

KEYWORDS = ["select", "from", "where", "order", "group", "table", "index", "key", "on",
            "values", "default", "check", "references", "primary", "rowid", "oid", "null"]  # fmt: skip
SPECIAL = "\"'`[] .,;()%/\\-–é表🙂\t"
ident = st.one_of(
    st.sampled_from(KEYWORDS),
    st.text(st.sampled_from(SPECIAL + "abcXYZ0"), min_size=1, max_size=8),
    st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=10,
    ),
).filter(lambda s: not s.lower().startswith(("sqlite_", "_cdc_")))
stems = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"),
    min_size=1,
    max_size=12,
).filter(lambda s: not s.startswith(".") and len(s.encode()) < 120)
DECLS = ["", "TEXT", "INTEGER", "REAL", "BLOB", "NUMERIC", "VARCHAR(10)", '"odd type"', "[x y]"]


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _distinct(*names: str) -> bool:
    return len({n.lower() for n in names}) == len(names)


@settings(
    max_examples=int(os.environ.get("CDC_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(
    stem=stems,
    t1=ident,
    t2=ident,
    cols=st.lists(
        ident.filter(lambda s: s.lower() not in ("rowid", "oid", "_rowid_")),
        min_size=6,
        max_size=6,
        unique_by=str.lower,
    ),
    index=ident,
    decls=st.lists(st.sampled_from(DECLS), min_size=3, max_size=3),
    without_rowid=st.booleans(),
)
def test_any_identifier_survives_install_harvest_and_apply(
    tmp_path_factory, stem, t1, t2, cols, index, decls, without_rowid
) -> None:
    """Arbitrary table, column, index and source (file stem) names, a composite key, a
    foreign key, an index, `as` names built from them, and a column added mid-run: the
    target equals the legacy file after install + harvest + apply."""
    assume(_distinct(t1, t2, index))
    k1, k2, c1, f1, f2, added = cols
    root = tmp_path_factory.mktemp("fuzz")
    (root / "legacy").mkdir()
    db = root / "legacy" / f"{stem}.db"
    legacy = apsw.Connection(str(db))  # apsw only: Pipeline opens this file with apsw too
    tail = " WITHOUT ROWID" if without_rowid else ""
    legacy.execute(
        f"CREATE TABLE {q(t1)}({q(k1)} TEXT NOT NULL, {q(k2)} INTEGER NOT NULL, "
        f"{q(c1)} {decls[0]}, PRIMARY KEY({q(k1)}, {q(k2)})){tail};"
        f"CREATE INDEX {q(index)} ON {q(t1)}({q(c1)});"
        f"CREATE TABLE {q(t2)}({q(f1)} {decls[1]}, {q(f2)} {decls[2]}, "
        f"FOREIGN KEY({q(f1)}, {q(f2)}) REFERENCES {q(t1)}({q(k1)}, {q(k2)}));"
    )
    for i in range(6):
        legacy.execute(f"INSERT INTO {q(t1)} VALUES (?, ?, ?)", (f"k{i}", i, f"v{i}"))
        legacy.execute(f"INSERT INTO {q(t2)} VALUES (?, ?)", (f"k{i}", i))
    cfg = config_from_dict(
        {
            "state_dir": "state",
            "targets": {"core": "out/core.db"},
            "sources": [{"name": "s_{stem}", "path": "legacy/*.db"}],
            "rules": [{"table": "*", "target": "core", "as": "{source}.{table}"}]
            # a rule naming t2 itself (a literal pattern: no glob characters) wins over `*`
            + (
                []
                if any(c in t2 for c in "*?[")
                else [{"table": t2, "target": "core", "as": "[{table}]"}]
            ),
        },
        root,
    )
    p = Pipeline(cfg, resolve_plan(cfg))
    try:
        p.sync()
        assert p.diffs() == []
        legacy.execute(f"UPDATE {q(t1)} SET {q(k1)} = 'moved' WHERE {q(k2)} = 1")
        legacy.execute(f"DELETE FROM {q(t1)} WHERE {q(k2)} = 2")
        legacy.execute(f"UPDATE {q(t2)} SET {q(f2)} = NULL WHERE {q(f1)} = 'k3'")
        legacy.execute(f"ALTER TABLE {q(t2)} ADD COLUMN {q(added)} TEXT")
        legacy.execute(f"INSERT INTO {q(t2)} VALUES ('new', 9, 'with the new column')")
        p.sync()
        assert p.diffs() == []
    finally:
        p.close()
        legacy.close()


def test_a_trigger_name_read_from_a_legacy_file_is_quoted(tmp_path: Path) -> None:
    """`cdc uninstall` drops leftover fence triggers by the name it reads from the file: a
    name holding SQL must stay a name (it used to run: the bots' table was dropped)."""
    db = make_db(
        tmp_path / "legacy" / "a.db",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v);"
        "INSERT INTO t VALUES (1, 'precious');"
        'CREATE TRIGGER "_cdc_fence; DROP TABLE t" AFTER INSERT ON t BEGIN SELECT 1; END;',
    )
    write_config(
        tmp_path,
        'state_dir = "state"\n[targets]\ncore = "out/core.db"\n'
        '[[sources]]\nname = "a"\npath = "legacy/a.db"\n[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    for step in ("install", "uninstall"):
        r = cdc_cmd(step, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT v FROM t").fetchall() == [("precious",)]


def test_a_declared_type_added_mid_run_stays_a_type(tmp_path: Path) -> None:
    """PRAGMA table_info returns a declared type unquoted (`x "INT; DROP TABLE victim"`
    gives `INT; DROP TABLE victim`): pasted into the target's ALTER TABLE, apsw ran the
    second statement and the target lost a table."""
    (tmp_path / "legacy").mkdir()
    db = tmp_path / "legacy" / "a.db"
    legacy = apsw.Connection(str(db))
    legacy.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE victim(id INTEGER PRIMARY KEY);"
        "INSERT INTO t VALUES (1, 'a'); INSERT INTO victim VALUES (1);"
    )
    cfg = config_from_dict(
        {
            "state_dir": "state",
            "targets": {"core": "out/core.db"},
            "sources": [{"name": "a", "path": str(db)}],
            "rules": [{"table": "*", "target": "core"}],
        },
        tmp_path,
    )
    p = Pipeline(cfg, resolve_plan(cfg))
    try:
        p.sync()
        legacy.execute('ALTER TABLE t ADD COLUMN x "INT; DROP TABLE victim"')
        legacy.execute("INSERT INTO t VALUES (2, 'b', 3)")
        p.sync()
        target = apsw.Connection(cfg.targets["core"], flags=apsw.SQLITE_OPEN_READONLY)
        tables = {r[0] for r in target.execute("SELECT name FROM sqlite_master")}
        target.close()
        assert "victim" in tables, "a legacy column's type ran as SQL in the target"
        assert p.diffs() == []
    finally:
        p.close()
        legacy.close()
