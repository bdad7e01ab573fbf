"""`cdc inventory` as a command: its files, its errors, the corpus, mappings kept, and
the progress bar on a terminal. The survey itself is in tests/planning/test_inventory.py."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec
import pytest

from cdc.errors import ConfigError
from cdc.planning.inventory_format import Inventory
from cdc.planning.inventory_report import (
    DOT,
    JSON,
    MAPPING,
    MARKDOWN,
    SVG,
    run_inventory,
)
from cdc.planning.mapping import MappingRow, read_mapping, write_mapping
from tests.conftest import REPO, cdc_cmd, make_db
from tests.support.corpus import read_manifest
from tests.support.planning import tables_of


def test_cli_writes_the_files_and_reports(tmp_path: Path, fk_legacy: Path) -> None:
    legacy, out = fk_legacy, tmp_path / "out"
    (legacy / "junk.db").write_text("text")
    r = cdc_cmd("inventory", str(legacy), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "inventory: 1 databases, 5 tables" in r.stdout
    assert {p.name for p in out.iterdir()} >= {MARKDOWN, JSON, MAPPING, DOT}
    inv = msgspec.json.decode((out / JSON).read_bytes(), type=Inventory)
    assert inv.format_version == 1 and inv.base == str(legacy)
    assert [(s.relpath, s.reason) for s in inv.skipped] == [("junk.db", "no SQLite header")]
    assert "skipped files | 1 |" in (out / MARKDOWN).read_text()

    rows = read_mapping(out / MAPPING)
    write_mapping(
        [r for r in rows if r.table != "lines"]
        + [MappingRow("shop.db", "shop", "vanished_table", target="core")],
        out / MAPPING,
    )
    r = cdc_cmd("inventory", str(legacy), "--out", str(out), "--mapping", str(out / MAPPING))
    assert r.returncode == 0, r.stderr
    assert "in the mapping, no longer on disk: 1\n  shop.db: vanished_table" in r.stdout
    assert "lines" in {x.table for x in read_mapping(out / MAPPING)}


def test_cli_without_dot_draws_the_svg_itself_and_says_so_in_one_line(tmp_path: Path) -> None:
    make_db(tmp_path / "a.db", "CREATE TABLE p(id INTEGER PRIMARY KEY);")
    make_db(tmp_path / "b.db", "CREATE TABLE c(id INTEGER PRIMARY KEY, p REFERENCES p(id));")
    r = subprocess.run(
        [os.sys.executable, "-m", "cdc", "inventory", str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PATH": str(tmp_path / "empty-path"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
    )
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if SVG in line]
    assert len(notes) == 1 and "graphviz" in notes[0] and "without Graphviz" in notes[0]
    svg = ET.fromstring((tmp_path / "o" / SVG).read_bytes())
    texts = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert {"a.db", "b.db", "p", "c", "(missing)"} <= texts
    assert f"wrote {MARKDOWN}, {JSON}, {MAPPING}, {DOT}, {SVG} in" in r.stdout


def test_cli_errors_are_one_line_with_the_exit_code(tmp_path: Path) -> None:
    r = cdc_cmd("inventory", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == ConfigError.exit_code
    assert r.stderr.startswith("error: not found:") and "Traceback" not in r.stderr
    make_db(tmp_path / "a.db", "CREATE TABLE t(x);")
    (tmp_path / "bad.csv").write_text("database,table,wrong\n")
    r = cdc_cmd(
        "inventory",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--mapping",
        str(tmp_path / "bad.csv"),
    )
    assert r.returncode == ConfigError.exit_code and "unknown column(s) wrong" in r.stderr
    assert not (tmp_path / "o").exists()  # nothing written when the mapping is unusable
    r = cdc_cmd("inventory")
    assert r.returncode == 2 and "Missing argument" in r.stderr


# -- the shared corpus ------------------------------------------------------------------------


def test_corpus_inventory(legacy: Path, corpus: Path, tmp_path: Path) -> None:
    run = run_inventory([legacy], tmp_path / "out")
    inv = run.inventory

    assert len(inv.databases) == 29 and inv.unreadable == []
    manifest = read_manifest(corpus)
    assert sorted(d.relpath for d in inv.databases) == sorted(manifest)
    for db in inv.databases:
        counts = {t.name: t.rows for t in db.tables if t.kind == "table"}
        assert counts == manifest[db.relpath], db.relpath
    collisions = {c.table: c for c in inv.table_collisions}
    sizes = {name: len(c.places) for name, c in collisions.items()}
    assert sizes == {
        "users": 3,
        "trades": 3,
        "memories": 3,
        "messages": 2,
        "interactions": 2,
        "predictions": 2,
        "calls": 2,
        "outcomes": 2,
        "factor_stats": 2,
        "probability_model": 2,
    }
    agree = {name for name, c in collisions.items() if c.agree}
    assert agree == {"calls", "outcomes", "factor_stats", "probability_model"}
    assert "idx_namespace" in {c.index for c in inv.index_collisions}

    mem = tables_of(inv, "data/jarvis_memory.db")
    assert {mem["facts_fts"].content_table, mem["reflections_fts"].content_table} == {
        "facts",
        "reflections",
    }
    rows = read_mapping(tmp_path / "out" / MAPPING)
    assert len(rows) == 106 and not any("_fts_" in r.table for r in rows)
    assert len({r.source for r in rows}) == len({r.database for r in rows}) == 28  # one is empty


def test_a_filled_in_mapping_is_not_replaced_without_mapping(tmp_path: Path) -> None:
    legacy, out = tmp_path / "legacy", tmp_path / "out"
    make_db(legacy / "a.db", "CREATE TABLE t(x);")
    run_inventory([legacy], out)
    run_inventory([legacy], out)  # an untouched mapping is simply renewed
    rows = read_mapping(out / MAPPING)
    write_mapping([msgspec.structs.replace(rows[0], target="core")], out / MAPPING)
    before = (out / MAPPING).read_bytes()

    with pytest.raises(ConfigError, match="1 filled-in rows") as e:
        run_inventory([legacy], out)

    assert "--mapping" in (e.value.hint or "")
    assert (out / MAPPING).read_bytes() == before


def test_rows_of_a_database_not_read_this_time_are_kept(tmp_path: Path) -> None:
    legacy, out = tmp_path / "legacy", tmp_path / "out"
    make_db(legacy / "a.db", "CREATE TABLE t(x);")
    make_db(legacy / "b.db", "CREATE TABLE u(x);")
    run_inventory([legacy], out)
    rows = [msgspec.structs.replace(r, target="core") for r in read_mapping(out / MAPPING)]
    write_mapping(rows, out / MAPPING)
    with open(legacy / "b.db", "r+b") as f:  # b.db turns corrupt before the next run
        f.seek(100)
        f.write(b"\xff" * 3900)

    run = run_inventory([legacy], out, mapping=out / MAPPING)

    assert [u.relpath for u in run.inventory.unreadable] == ["b.db"]
    assert read_mapping(out / MAPPING) == rows
    assert run.inventory.mapping_vanished == []
    assert any(n.startswith("b.db: not read this time") for n in run.notes)


def test_a_progress_bar_shows_on_a_terminal_for_a_large_folder(tmp_path: Path) -> None:
    """The bar is drawn only when stderr is a terminal: run the CLI under a pseudo-terminal."""
    import pty
    import select

    root = tmp_path / "many"
    for i in range(25):
        make_db(root / f"db{i:02}.db", "CREATE TABLE t(id INTEGER PRIMARY KEY);")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc", "inventory", str(root), "--out", str(tmp_path / "out")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"},
    )
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: the child exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert "inventory" in text and "100%" in text, text
    assert "inventory: 25 databases" in text
