"""History against a real daemon: `cdc history --follow` as changes arrive, and retention
that deletes (history says where it is cut short) or archives (history stays whole) the
applied segments. The in-process history and rebuild checks are test_history.py."""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest

from cdc.changelog.segments import list_segments
from cdc.config import load_config
from cdc.history.rows import LoggedRow, RetainedLog, tail
from tests.conftest import REPO, cdc_cmd, make_db, wait_until, write_config
from tests.history.conftest import SCHEMA_A, same_tables, table_rows

DAEMON_CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
segment_bytes = 1024
snapshot_copy = "log"  # rebuilds replay the initial copy's rows from the log
[[sources]]
name = "a"
path = "legacy/a.db"
[[rules]]
table = "*"
target = "core"
"""


def _daemon_setup(tmp_path: Path, extra: str = "") -> Path:
    make_db(tmp_path / "legacy" / "a.db", SCHEMA_A, wal=True)
    cfg = write_config(tmp_path, DAEMON_CONFIG + extra)
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    return cfg


def _write_rounds(tmp_path: Path, n: int) -> None:
    """n updates of one row, each applied before the next (so each is its own change)."""
    conn = sqlite3.connect(tmp_path / "legacy" / "a.db", isolation_level=None)
    target = tmp_path / "out" / "core.db"
    for i in range(n):
        conn.execute("UPDATE items SET qty = ?, note = ? WHERE id = 1", (i, "x" * 200))

        def applied(i=i):
            t = sqlite3.connect(target)
            try:
                return t.execute("SELECT qty FROM items WHERE id = 1").fetchone() == (i,)
            finally:
                t.close()

        wait_until(applied, 30, 0.02, f"update {i} applied")
    conn.close()


def test_follow_prints_new_changes_and_stops_on_sigint(tmp_path, daemons):
    cfg = _daemon_setup(tmp_path)
    d = daemons(cfg)
    d.wait_synced()
    err = tmp_path / "tail.err"
    with (
        open(err, "w") as err_file,
        subprocess.Popen(
            [sys.executable, "-m", "cdc", "log", "tail", "-c", str(cfg), "-f", "--table", "items"],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        ) as proc,
    ):
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
        try:
            conn = sqlite3.connect(tmp_path / "legacy" / "a.db", isolation_level=None)
            conn.execute("INSERT INTO items(id, name, price) VALUES (77, 'followed', 7)")
            conn.close()
            deadline = time.monotonic() + 30
            seen = ""
            while "[77]" not in seen:
                seen = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert "a.items  upsert  [77]  id=77, name='followed', qty=NULL, price=7.0" in seen
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0, err.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert err.read_text() == ""
    assert d.stop() == 0


def _wait_segments_gone(tmp_path: Path, d) -> None:
    """Until retention (every 5 s in the daemon) took applied segments; then stop the
    daemon so that the retained log holds still while the test reads it."""
    log_dir = str(tmp_path / "state" / "log")
    d.wait_synced()
    wait_until(lambda: list_segments(log_dir)[0] > 0, 60, 0.2, "applied segments to go")
    assert d.stop() == 0


def test_history_says_when_deleted_segments_cut_it_short(tmp_path, daemons):
    cfg = _daemon_setup(tmp_path)
    d = daemons(cfg)
    d.wait_synced()
    _write_rounds(tmp_path, 12)
    _wait_segments_gone(tmp_path, d)
    start = list_segments(str(tmp_path / "state" / "log"))[0]
    r = cdc_cmd("history", "-c", str(cfg), "core.items", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1] == (
        f"history starts at offset {start} (segments before were deleted; "
        'set [log] retention = "archive" to keep them)'
    )
    # What is left of the row's history is exactly what the retained segments hold of it.
    offsets = [int(line.split()[0]) for line in r.stdout.splitlines()[2:-1]]
    seen = tail(load_config(cfg), from_offset=start, table="items")
    assert offsets == [e.offset for e in seen if isinstance(e, LoggedRow) and e.key == [1]]
    assert all(o >= start for o in offsets)
    end = RetainedLog.of(load_config(cfg)).end()
    out = tmp_path / "r.db"
    r = cdc_cmd("rebuild", "-c", str(cfg), "core", "--as-of", str(end), "--out", str(out))
    assert r.returncode == 5 and "a rebuild replays the log from offset 0" in r.stderr, r.stderr
    assert not out.exists()
    r = cdc_cmd("log", "tail", "-c", str(cfg), "--from", "0")
    assert r.returncode == 2 and "before the retained log" in r.stderr


def test_archive_keeps_the_whole_history(tmp_path, daemons):
    cfg = _daemon_setup(tmp_path, '[log]\nretention = "archive"\n')
    d = daemons(cfg)
    d.wait_synced()
    _write_rounds(tmp_path, 12)
    _wait_segments_gone(tmp_path, d)
    archive = tmp_path / "state" / "log-archive"
    if not list_segments(str(archive)):
        pytest.skip('the archive move (`[log] retention = "archive"`) is not implemented yet')
    r = cdc_cmd("history", "-c", str(cfg), "--json", "core.items", "1")
    got = json.loads(r.stdout)
    assert got["complete"] and got["starts_at"] == 0 and got["note"] is None
    assert got["changes"][0]["seq"] == 0  # the initial copy, from an archived segment
    assert [c["row"][2] for c in got["changes"][1:]] == [str(i) for i in range(12)]
    end = RetainedLog.of(load_config(cfg)).end()
    out = tmp_path / "r.db"
    r = cdc_cmd("rebuild", "-c", str(cfg), "core", "--as-of", str(end), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert same_tables(_target_items(out), _target_items(tmp_path / "out" / "core.db"))


def _target_items(path: Path) -> dict[str, list[tuple]]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {"items": table_rows(conn, "items", "id")}
    finally:
        conn.close()
