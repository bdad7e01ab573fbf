"""Every count the journey's commands print is what happened.

Seen on the corpus: `cdc uninstall` reported four times the tables it released; `cdc
cutover core` said "fenced 12 tables of jarvis" where core owns 7 (the file's fence mark
also lists an earlier stage's tables); finalize's refusal said "nothing was moved" after
it had guarded other files in the same run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import cdc_cmd, make_db, write_config

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
side = "out/side.db"
[[sources]]
name = "s"
path = "legacy/s.db"
[[sources]]
name = "u"
path = "legacy/u.db"
[[rules]]
table = "a*"
target = "side"
[[rules]]
table = "b*"
target = "core"
[[rules]]
table = "u1"
target = "core"
[[rules]]
table = "x"
exclude = true
"""

S = "".join(
    f"CREATE TABLE {t}(id INTEGER PRIMARY KEY, v); INSERT INTO {t}(v) VALUES (1);"
    for t in ("a1", "a2", "b1", "b2", "b3", "x")
)
U = "CREATE TABLE u1(id INTEGER PRIMARY KEY, v); INSERT INTO u1(v) VALUES (1);"

HOLD = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1])
c.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("open", flush=True)
time.sleep(120)
"""


def _ok(*args: str) -> str:
    r = cdc_cmd(*args)
    assert r.returncode == 0, f"cdc {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _world(tmp_path: Path) -> str:
    make_db(tmp_path / "legacy" / "s.db", S, wal=True)
    make_db(tmp_path / "legacy" / "u.db", U)
    return str(write_config(tmp_path, CONFIG))


def test_install_and_uninstall_count_tables(tmp_path: Path) -> None:
    c = _world(tmp_path)
    assert _ok("install", "-c", c).splitlines() == [
        f"s: capturing 5 tables, 1 excluded ({tmp_path / 'legacy' / 's.db'})",
        f"u: capturing 1 tables, 0 excluded ({tmp_path / 'legacy' / 'u.db'})",
        "installed: 6 tables in 2 databases",
    ]
    assert _ok("uninstall", "-c", c).splitlines() == [
        f"s: capture removed from 5 tables ({tmp_path / 'legacy' / 's.db'})",
        f"u: capture removed from 1 tables ({tmp_path / 'legacy' / 'u.db'})",
    ]
    assert _ok("uninstall", "-c", c) == (
        "nothing to remove: no capture of ours in the legacy files or the targets\n"
    )


def test_cutover_counts_the_stage_and_finalize_says_what_it_moved(tmp_path: Path, daemons) -> None:
    c = _world(tmp_path)
    _ok("install", "-c", c)
    d = daemons(Path(c))
    d.wait_synced()
    out = _ok("cutover", "side", "-c", c)
    assert "side: fenced 2 tables of s\n" in out, out
    out = _ok("cutover", "core", "-c", c)
    assert "core: fenced 3 tables of s (5 of its tables fenced, with earlier stages')\n" in out
    assert "core: fenced 1 tables of u\n" in out, out

    out = _ok("finalize", "side", "-c", c)
    assert "s: still feeds core; archived when that is finalized" in out, out
    u = tmp_path / "legacy" / "u.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(u)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "open\n"
        r = cdc_cmd("finalize", "core", "-c", c)
        assert r.returncode != 0, r.stdout
        err = r.stderr.splitlines()
        assert err[0] == f"error: {u} is still open by process(es) {holder.pid}: stale bots?"
        assert err[1] == (
            f"hint: switch or stop them, then run `cdc finalize` again; {u} was not moved "
            f"(guarded in this run: {tmp_path / 'legacy' / 's.db'})"
        ), err
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    out = _ok("finalize", "core", "-c", c)
    assert out.endswith("core: finalized; 2 files archived, 0 waiting\n"), out
    assert d.stop() == 0


def test_wait_without_a_daemon_says_so_and_what_to_start(tmp_path: Path) -> None:
    c = _world(tmp_path)
    _ok("install", "-c", c)
    r = cdc_cmd("wait", "-c", c, "--zero-lag", "--timeout", "0.5")
    assert r.returncode == 75, r.stdout + r.stderr
    state = tmp_path / "state"
    no_daemon = (
        f"no cdc daemon is running on {state} (not started); start one with `cdc run -c {c}`"
    )
    assert r.stderr.splitlines() == [f"warning: {no_daemon}", f"hint: {no_daemon}"], r.stderr
    assert r.stdout.splitlines()[-1] == "still behind after 0.5s", r.stdout
