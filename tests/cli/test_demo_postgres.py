"""`cdc demo --postgres` end to end: the `core` target on a private PostgreSQL cluster the
demo starts itself, run as a real process (with its real bot and daemon processes), its
cutover round on `core`; the cluster gone at the end, also when the demo fails; no server
installed is one error line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from cdc.demo.folder import DemoError
from cdc.postgres.cluster import server_bin

REPO = Path(__file__).resolve().parents[2]
DEMO_SECONDS = 4.0
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

needs_server = pytest.mark.skipif(
    server_bin() is None, reason="no PostgreSQL server installed (Debian: apt install postgresql)"
)


def _has(lines: list[str], *parts: str) -> bool:
    return any(all(p in ln for p in parts) for ln in lines)


@pytest.fixture(scope="module")
def pg_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, list[str], float]:
    if server_bin() is None:
        pytest.skip("no PostgreSQL server installed (Debian: apt install postgresql)")
    root = tmp_path_factory.mktemp("pgdemo") / "world"
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdc",
            "demo",
            "--postgres",
            "--dir",
            str(root),
            "--seconds",
            str(DEMO_SECONDS),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
    )
    return root, r.returncode, (r.stdout + r.stderr).splitlines(), time.monotonic() - t0


@needs_server
def test_the_demo_passes_with_core_on_postgresql(pg_demo):
    root, code, lines, elapsed = pg_demo
    out = "\n".join(lines)
    assert code == 0, out
    assert lines[-1].startswith("RESULT: PASS"), out
    assert elapsed < 60, f"demo took {elapsed:.1f}s"
    for step in range(1, 9):
        assert _has(lines, f"[{step}/8]"), f"step {step} missing:\n{out}"
    targets = tomllib.loads((root / "cdc.toml").read_text())["targets"]
    assert targets["core"].startswith("postgresql://cdc@127.0.0.1:"), targets
    assert targets["analytics"].endswith(".db") and targets["cache"].endswith(".db"), targets
    assert _has(lines, "PostgreSQL census (`cdc check`): every legacy value of the 13 tables"), out
    assert _has(lines, "`cdc queries` reads SQLite targets only so far"), out
    assert _has(lines, "total: 24 tables, 24 EQUAL, 0 DIVERGED, 0 UNSETTLED, 0 SKIPPED"), out
    assert _has(lines, "trading", "positions", "core.positions", "EQUAL"), out


@needs_server
def test_the_demo_cuts_core_over_to_postgresql_and_rolls_it_back(pg_demo):
    _, _, lines, _ = pg_demo
    out = "\n".join(lines)
    assert _has(lines, "[7/8] cut over the core stage (PostgreSQL)"), out
    assert _has(lines, "$ cdc cutover core"), out
    assert _has(lines, "core: drained, verified equal"), out
    assert _has(
        lines, "a stale bot writing", "trading.db gets: sqlite-cdc: table positions", "moved to"
    ), out
    assert _has(lines, "pool.configure(", "pool.connection('core')"), out
    assert _has(lines, "it wrote 3 rows into PostgreSQL (core.positions) through cdc.pool"), out
    assert _has(lines, "rollback window: 3 target change(s) written back from PostgreSQL"), out
    assert _has(lines, "$ cdc rollback core"), out
    assert _has(lines, "3 of 3 rows the switched bot wrote into PostgreSQL are in", "trading.db"), (
        out
    )
    assert not _has(lines, "$ cdc cutover cache"), out


@needs_server
def test_the_demo_says_where_the_server_ran_and_removes_it(pg_demo):
    root, _, lines, _ = pg_demo
    out = "\n".join(lines)
    started = next((ln for ln in lines if "a private cluster (" in ln), "")
    m = re.search(r" in (\S+), on 127\.0\.0\.1:(\d+), run as ", started)
    assert m, out
    folder, port = Path(m.group(1)), m.group(2)
    assert _has(lines, f"database core: postgresql://cdc@127.0.0.1:{port}/core"), out
    assert _has(lines, f"stopped the private PostgreSQL server (127.0.0.1:{port})", str(folder)), (
        out
    )
    assert not folder.exists(), folder
    assert (root / "postgres.log").is_file(), out  # what the server said, kept


@needs_server
def test_the_server_is_removed_when_the_demo_fails(tmp_path, monkeypatch):
    from cdc.demo import runner

    def fail(_demo):  # noqa: ANN001, ANN202
        raise DemoError("a phase failed")

    monkeypatch.setattr(runner, "_install_phase", fail)
    lines: list[str] = []
    with pytest.raises(DemoError, match="a phase failed"):
        runner.run_demo(str(tmp_path / "demo"), 1.0, echo=lines.append, postgres=True)
    out = "\n".join(lines)
    m = re.search(r"a private cluster \(.*?\) in (\S+), on", out)
    assert m, out
    assert not Path(m.group(1)).exists(), out
    assert _has(lines, "stopped the private PostgreSQL server"), out


def test_no_server_installed_is_one_error_line_and_an_exit_code(tmp_path):
    """Where no server is installed (here: where `server_bin` is made to look in vain)."""
    code = (
        "import sys, cdc.postgres.cluster as c; c.SEARCHED = sys.argv.pop(1); "
        "from cdc.cli.main import main; main()"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tmp_path / "none" / "*" / "bin"),
            "demo",
            "--postgres",
            "--dir",
            str(tmp_path / "demo"),
            "--seconds",
            "1",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error: no PostgreSQL server installed"), r.stderr
    assert "hint: install the server: apt install postgresql" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == "", r.stdout + r.stderr
    assert not (tmp_path / "demo").exists()  # refused before the folder is made
