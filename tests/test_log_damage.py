"""A damaged change log, found by a real daemon: a torn tail is cut and forgotten, damage in
the middle stops the daemon with the segment and offset named, and `cdc log check` names
the same place. Nothing is guessed past damage: the frames after it could be anything."""

from __future__ import annotations

import re
import sqlite3

from cdc.changelog import list_segments, segment_name
from cdc.config import load_config
from cdc.plan import resolve_plan
from tests.conftest import cdc_cmd, make_db, wait_until, write_config
from tests.workload import SCHEMA
from verifier import compare_plan

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
segment_bytes = 4096
[[sources]]
name = "bot"
path = "legacy/bot.db"
[[rules]]
table = "*"
target = "core"
"""


def _setup(tmp_path):
    make_db(tmp_path / "legacy" / "bot.db", SCHEMA)
    cfg = write_config(tmp_path, CONFIG)
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    return cfg


def _write(tmp_path, n: int, start: int = 0) -> None:
    c = sqlite3.connect(tmp_path / "legacy" / "bot.db", isolation_level=None)
    for i in range(start, start + n):
        c.execute("INSERT INTO kv VALUES (?, ?)", (f"k{i}", "x" * 50))
    c.close()


def _unequal(cfg) -> list:
    return [d for d in compare_plan(resolve_plan(load_config(cfg))) if not d.equal]


def test_a_torn_tail_is_cut_and_replication_goes_on(tmp_path, daemons):
    cfg = _setup(tmp_path)
    d = daemons(cfg)
    _write(tmp_path, 20)
    d.wait_synced()
    assert d.stop() == 0
    log_dir = tmp_path / "state" / "log"
    last = log_dir / segment_name(list_segments(str(log_dir))[-1])
    size = last.stat().st_size
    with open(last, "ab") as f:  # half a frame, as a crash mid-write leaves it
        f.write(b"\x00\x00\x01\x00garbage-that-never-got-its-fsync")
    d = daemons(cfg)
    _write(tmp_path, 5, start=100)
    d.wait_synced()
    assert d.stop() == 0, d.output()
    assert re.search(r"cut|truncat", d.output(), re.I), d.output()
    assert last.stat().st_size >= size  # the valid part stays, appends went on after it
    assert _unequal(cfg) == []
    assert cdc_cmd("log", "check", "-c", str(cfg)).returncode == 0


def test_damage_in_the_middle_stops_the_daemon_and_log_check_names_it(tmp_path, daemons):
    cfg = _setup(tmp_path)
    assert cdc_cmd("pause", "--apply", "-c", str(cfg), "core").returncode == 0
    d = daemons(cfg)  # harvests, applies nothing: the segments stay in the log
    _write(tmp_path, 300)
    log_dir = tmp_path / "state" / "log"
    wait_until(lambda: len(list_segments(str(log_dir))) >= 3, 30, what="three log segments")
    assert d.stop() == 0, d.output()
    segs = list_segments(str(log_dir))
    assert len(segs) >= 3
    victim = log_dir / segment_name(segs[1])
    data = bytearray(victim.read_bytes())
    at = len(data) // 2
    data[at] ^= 0xFF
    victim.write_bytes(bytes(data))

    r = cdc_cmd("log", "check", "-c", str(cfg))
    assert r.returncode != 0
    assert segment_name(segs[1]) in r.stdout + r.stderr and "offset" in r.stdout + r.stderr

    assert cdc_cmd("resume", "--apply", "-c", str(cfg), "core").returncode == 0
    d = daemons(cfg)
    d.proc.wait(timeout=60)
    code = d.kill()  # already exited: collects the code, closes its log
    out = d.output()
    assert code == 5, out  # LogCorruptError: the daemon stops, it does not skip
    assert segment_name(segs[1]) in out and "offset" in out, out
