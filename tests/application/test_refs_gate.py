"""`cdc cutover TARGET --refs SRC`: the stage is not fenced while the application code
still names its legacy files or tables unreviewed (exit 14, UnreviewedReferences), and a
folder with no Python in it proves nothing, so it is refused too (exit 2)."""

from __future__ import annotations

from pathlib import Path

from tests.application.app_setup import copy_app, make_legacy
from tests.conftest import cdc_cmd


def test_a_cutover_is_refused_while_references_to_the_stage_are_unreviewed(tmp_path: Path):
    cfg = make_legacy(tmp_path)
    app = copy_app(tmp_path / "app")
    r = cdc_cmd("cutover", "core", "-c", str(cfg), "--refs", str(app))
    assert r.returncode == 14, (r.returncode, r.stdout, r.stderr)
    assert "error: core: " in r.stderr and "unreviewed reference" in r.stderr, r.stderr
    assert "nothing was fenced" in r.stderr and "hint: `cdc refs" in r.stderr, r.stderr
    assert not (tmp_path / "state" / "cutovers").exists()  # no record, no fence


def test_a_clean_tree_passes_the_gate_and_an_empty_one_is_refused(tmp_path: Path):
    cfg = make_legacy(tmp_path)
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "bot.py").write_text(
        "import sqlite3\n\n\ndef scratch():\n    return sqlite3.connect(':memory:')\n"
    )
    r = cdc_cmd("cutover", "core", "-c", str(cfg), "--refs", str(clean))
    assert "core: cdc refs: no unreviewed reference in 1 Python files" in r.stdout, r.stdout
    assert r.returncode != 14, r.stderr  # past the gate (then: no daemon, no install)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cdc_cmd("cutover", "core", "-c", str(cfg), "--refs", str(empty))
    assert r.returncode == 2 and "no Python file there" in r.stderr, r.stderr
    r = cdc_cmd("refs", str(empty), "-c", str(cfg))
    assert r.returncode == 2 and "no Python file there" in r.stderr, r.stderr
