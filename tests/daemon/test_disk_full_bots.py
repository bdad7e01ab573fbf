"""Disk full on the bots' own disk (a tmpfs holding the legacy files): the bots see SQLITE_FULL
from their own writes, never an error caused by our capture, and what they committed
arrives; and what capture costs that disk. The state dir and a target are in
test_disk_full.py; the setup (`disk_cfg`) and checks are in this folder's conftest.py.

Needs root (or CAP_SYS_ADMIN) to mount; skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import apsw

from tests.conftest import cdc_cmd, wait_until, write_config
from tests.daemon.conftest import assert_log_sound, last_errors, unequal
from tests.support import workload

LEGACY_CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
trim_interval = 0.2
[[sources]]
name = "roll"
path = "legacy/roll.db"
[[sources]]
name = "wal"
path = "legacy/wal.db"
[[rules]]
table = "scratch"
exclude = true
[[rules]]
table = "*"
target = "core"
as = "{source}_{table}"
"""

SCRATCH = "CREATE TABLE scratch(id INTEGER PRIMARY KEY, data BLOB);"  # no capture: excluded

BOT_WRITE = """
import json, sqlite3, sys, time
db, sqls = sys.argv[1], json.loads(sys.argv[2])
out = []
for sql in sqls:
    t = time.monotonic()
    try:
        c = sqlite3.connect(db, timeout=5.0, isolation_level=None)
        c.execute(sql)
        c.close()
        err = None
    except sqlite3.Error as e:
        err = f"{getattr(e, 'sqlite_errorname', type(e).__name__)}: {e}"
    out.append([err, (time.monotonic() - t) * 1000])
print(json.dumps(out))
"""


def _bot_writes(db: Path, *sqls: str) -> list[tuple[str | None, float]]:
    """Writes made the way a bot makes them (stdlib sqlite3 in its own process, a new
    connection each, busy timeout 5 s, autocommit): (error or None, milliseconds) each."""
    r = subprocess.run(
        [sys.executable, "-c", BOT_WRITE, str(db), json.dumps(list(sqls))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return [tuple(x) for x in json.loads(r.stdout)]


def _counts(db: Path) -> tuple[int, int, int]:
    """(rows in kv, rows in scratch, capture rows), read as a reader reads them."""
    c = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        c.set_busy_timeout(5000)
        return c.execute(
            "SELECT (SELECT count(*) FROM kv), (SELECT count(*) FROM scratch), "
            "(SELECT count(*) FROM _cdc_changes)"
        ).fetchone()
    finally:
        c.close()


def test_bots_own_disk_full(tmp_path, tmpfs, daemons, disk_cfg):
    """The legacy files' disk fills. A bot's write fails with SQLITE_FULL whether our
    trigger is on the table or not, and leaves neither its row nor a capture row (one
    transaction). The daemon goes on harvesting (reading needs no space) but cannot trim
    (a DELETE needs journal or WAL space); it does not die or hold the bots up, and once
    there is room it trims, and nothing is lost."""
    vol = tmpfs(tmp_path / "legacy", "4m")
    files = [("roll", False), ("wal", True)]
    cfg = disk_cfg(config=LEGACY_CONFIG, files=files, seed_rows=100, extra=SCRATCH)
    dbs = {name: tmp_path / "legacy" / f"{name}.db" for name, _ in files}
    d = daemons(cfg)
    d.wait_synced(30)
    # Capture rows waiting in the bots' files when their disk fills: harvest paused.
    assert cdc_cmd("pause", "-c", str(cfg)).returncode == 0
    wait_until(lambda: "harvest paused" in d.log_path.read_text(), 10, 0.1, "the pause")
    for db in dbs.values():
        writes = _bot_writes(db, *[f"INSERT INTO kv VALUES ('p{i}', {i})" for i in range(300)])
        assert [e for e, _ in writes] == [None] * 300
    with vol.kept_full():
        for db in dbs.values():
            before = _counts(db)
            assert before[2] >= 300
            writes = _bot_writes(
                db,
                "INSERT INTO kv VALUES ('big', randomblob(300000))",  # captured
                "INSERT INTO scratch(data) VALUES (randomblob(300000))",  # no trigger
                "INSERT INTO kv VALUES ('small', 1)",
                "UPDATE kv SET v = v + 1 WHERE k = 'p1'",
            )
            assert all(e and e.startswith("SQLITE_FULL") for e, _ in writes), writes
            assert all(ms < 1000 for _, ms in writes), writes  # refused at once, not held up
            assert _counts(db) == before  # neither the row nor its capture row
        # Harvesting the waiting rows reads only; the log is on another disk.
        assert cdc_cmd("resume", "-c", str(cfg)).returncode == 0
        wait_until(
            lambda: all(s["applied"] == s["captured"] >= 300 for s in d.status()["sources"]),
            20,
            0.2,
            "the waiting changes to reach the target while the bots' disk is full",
        )
        full_from = len(d.log_path.read_text())
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:  # the daemon tries to trim meanwhile
            for db in dbs.values():
                t = time.monotonic()
                assert _counts(db)[2] >= 300  # not trimmed: no room for the DELETE
                assert time.monotonic() - t < 1.0  # readers are not held up by it
                writes = _bot_writes(db, "INSERT INTO kv VALUES ('during', 1)")
                # Refused for the disk, at once: never "database is locked" behind a trim.
                assert all(e.startswith("SQLITE_FULL") and ms < 1000 for e, ms in writes)
        assert d.proc.poll() is None, d.output()
        # Status says only the trim is stuck, and on which disk; the trim is put off (not
        # retried at every wake-up its own journal writes cause) and said once in the log.
        shown = last_errors(d.status(), "sources")
        assert all(e and "legacy disk full: cannot trim" in e for e in shown.values()), shown
        said = d.log_path.read_text()[full_from:].count("disk is full")
        assert said <= len(dbs), d.output()
    # Room again: the trim goes through, the bots write again, nothing was lost.
    wait_until(
        lambda: all(_counts(db)[2] <= 1 for db in dbs.values()), 20, 0.2, "the trim to catch up"
    )
    for db in dbs.values():
        assert [e for e, _ in _bot_writes(db, "INSERT INTO kv VALUES ('after', 1)")] == [None]
    d.wait_synced(30)
    assert d.stop() == 0, d.output()
    assert unequal(cfg) == []
    assert_log_sound(cfg)


def test_capture_costs_the_bots_disk(tmp_path):
    """What capture adds to a legacy file until the daemon trims: one `_cdc_changes` row
    per changed key (measured ~15 bytes with an integer key, ~21 with a 10-character text
    key), and one more page per transaction in the rollback journal or WAL."""
    paths = {}
    for name in ("plain", "captured"):
        paths[name] = tmp_path / f"{name}.db"
        c = apsw.Connection(str(paths[name]))
        c.execute(workload.SCHEMA)
        c.close()
    cfg = write_config(
        tmp_path,
        'state_dir = "state"\n[targets]\ncore = "core.db"\n[[sources]]\nname = "c"\n'
        'path = "captured.db"\n[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    n = 5000
    grew = {}
    for name, path in paths.items():
        c = apsw.Connection(str(path))
        before = c.execute("PRAGMA page_count").fetchone()[0]
        with c:
            for i in range(n):
                c.execute("INSERT INTO positions(symbol, qty) VALUES (?, ?)", (f"S{i}", i))
                c.execute("INSERT INTO kv VALUES (?, ?)", (f"key-{i:06d}", i))
        grew[name] = (c.execute("PRAGMA page_count").fetchone()[0] - before) * 4096
        if name == "captured":
            rows = c.execute("SELECT count(*) FROM _cdc_changes").fetchone()[0]
            table = c.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name = '_cdc_changes'"
            ).fetchone()[0]
        c.close()
    assert rows == 2 * n
    per_row = table / rows
    print(f"capture rows: {per_row:.1f} bytes each; file grew {grew}")
    assert 10 < per_row < 40
    assert grew["captured"] - grew["plain"] < 40 * 2 * n
