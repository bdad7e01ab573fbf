"""The manual travels with the package: `cdc docs` shows it, a wheel carries it, and no
message the tool prints sends an operator to a `docs/` folder `pip install` left behind."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from cdc.cli.manual import pages, title
from tests.conftest import REPO, cdc_cmd

DOCS = sorted(p.stem for p in (REPO / "docs").glob("*.md"))
ENGINE = ("cdc", "replicator", "checkpoints", "verifier")


def test_docs_lists_every_page_with_its_title() -> None:
    r = cdc_cmd("docs")
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines()[: len(DOCS)]]
    assert listed == DOCS == sorted(pages())
    assert f"config{' ' * (len(max(DOCS, key=len)) - 6)}  Configuration: `cdc.toml`" in r.stdout


def test_a_page_is_printed_whole_when_piped() -> None:
    r = cdc_cmd("docs", "config")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert cdc_cmd("docs", "docs/runbook.md").stdout.startswith("# Runbook")


def test_an_unknown_page_is_one_line_with_the_near_one() -> None:
    r = cdc_cmd("docs", "confg")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "error: no manual page 'confg'",
        "hint: did you mean `cdc docs config`? `cdc docs` lists them all",
    ]


def _strings(path: Path) -> list[tuple[int, str]]:
    """String constants that can reach an operator: everything but docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_messages_point_at_installed_pages_not_at_the_source_tree() -> None:
    wrong, unknown, named = [], [], set()
    for pkg in ENGINE:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for line, text in _strings(path):
                where = f"{path.relative_to(REPO)}:{line}"
                if re.search(r"docs/[\w-]+\.md", text):
                    wrong.append(where)
                for topic in re.findall(r"cdc docs ([\w-]+)", text):
                    named.add(topic)
                    if topic not in DOCS and topic != "TOPIC":
                        unknown.append(f"{where}: {topic}")
    assert wrong == [] and unknown == []
    assert {"config", "pool", "runbook"} <= named  # the hints this test was written for


def test_a_built_package_carries_the_manual(tmp_path: Path) -> None:
    """What `pip install .` installs: setuptools copies cdc/manual (a link to docs/) as
    files, so the installed `cdc docs` needs no checkout."""
    r = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py"]
        + ["--build-lib", str(tmp_path / "lib")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    manual = tmp_path / "lib" / "cdc" / "manual"
    assert not manual.is_symlink()
    assert sorted(p.stem for p in manual.glob("*.md")) == DOCS
    assert (manual / "config.md").read_bytes() == (REPO / "docs" / "config.md").read_bytes()
    assert title((manual / "runbook.md").read_text()) == "Runbook"
