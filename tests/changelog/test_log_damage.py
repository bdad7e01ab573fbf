"""A damaged change log, found by a real daemon: a torn tail is cut and forgotten, damage in
the middle stops the daemon with the segment and offset named, and `cdc log check` names
the same place. Nothing is guessed past damage: the frames after it could be anything.
Damage inside the newest segment is damage too, not a torn tail: the frames after it were
durable batches, and nothing of them is cut."""

from __future__ import annotations

import re
import sqlite3
import time

from cdc.changelog.segments import HEADER, LogReader, list_segments, segment_name
from cdc.config import load_config
from cdc.events import RowBatch
from cdc.planning.resolve import resolve_plan
from tests.conftest import cdc_cmd, make_db, wait_until, write_config
from tests.support.workload import SCHEMA
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
ONE_SEGMENT = CONFIG.replace("segment_bytes = 4096", "segment_bytes = 1048576")


def _setup(tmp_path, config: str = CONFIG):
    make_db(tmp_path / "legacy" / "bot.db", SCHEMA)
    cfg = write_config(tmp_path, config)
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
    log_dir = tmp_path / "state" / "log"
    # Rounds of writes until the log has three segments: written before the daemon's first
    # harvest, 300 rows are one batch, and the initial copy's range carries no rows.
    for r in range(20):
        _write(tmp_path, 100, start=r * 100)
        if len(list_segments(str(log_dir))) >= 3:
            break
        time.sleep(0.3)
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


def _newest(tmp_path):
    log_dir = tmp_path / "state" / "log"
    base = list_segments(str(log_dir))[-1]
    entries = [e for e in LogReader(str(log_dir)).iter_from(base) if e.offset >= base]
    return log_dir / segment_name(base), entries


def _in_rounds(tmp_path, d, rounds: int) -> None:
    """One harvest batch (at least) per round: the newest segment holds several."""
    for r in range(rounds):
        _write(tmp_path, 5, start=r * 100)
        d.wait_synced()


def test_damage_inside_the_newest_segment_stops_the_daemon_and_nothing_is_cut(tmp_path, daemons):
    cfg = _setup(tmp_path, ONE_SEGMENT)
    d = daemons(cfg)
    _in_rounds(tmp_path, d, 4)
    assert d.stop() == 0, d.output()
    seg, entries = _newest(tmp_path)
    rows = [e for e in entries if isinstance(e.frame, RowBatch)]
    assert len(rows) >= 4
    victim = rows[1]  # durable batches follow it
    data = bytearray(seg.read_bytes())
    data[victim.offset - entries[0].offset + HEADER.size + 4] ^= 0xFF
    seg.write_bytes(bytes(data))
    where = re.compile(rf"offset {victim.offset}\b")

    r = cdc_cmd("log", "check", "-c", str(cfg))
    assert r.returncode == 5, r.stdout + r.stderr
    assert seg.name in r.stdout and where.search(r.stdout), r.stdout

    d = daemons(cfg)
    d.proc.wait(timeout=60)
    code = d.kill()  # already exited: collects the code, closes its log
    out = d.output()
    assert code == 5, out  # LogCorruptError, as for damage in an older segment
    assert seg.name in out and where.search(out) and "nothing was cut" in out, out
    assert seg.read_bytes() == bytes(data)  # not one byte cut or rewritten


def test_a_torn_unfinished_batch_is_cut_and_replication_goes_on(tmp_path, daemons):
    """What a crash mid-append leaves: whole frames of a batch without its mark, then the
    first half of a frame. No garbage, nothing valid after it: a torn tail, cut."""
    cfg = _setup(tmp_path, ONE_SEGMENT)
    d = daemons(cfg)
    _in_rounds(tmp_path, d, 2)
    assert d.stop() == 0, d.output()
    seg, entries = _newest(tmp_path)
    size = seg.stat().st_size
    rows = [e for e in entries if isinstance(e.frame, RowBatch)]
    data = seg.read_bytes()
    frame = data[rows[0].offset - entries[0].offset : rows[0].next_offset - entries[0].offset]
    with open(seg, "ab") as f:
        f.write(frame + frame[: len(frame) // 2])
    d = daemons(cfg)
    _write(tmp_path, 5, start=1000)
    d.wait_synced()
    assert d.stop() == 0, d.output()
    assert re.search(r"cut \d+ bytes", d.output()), d.output()
    assert seg.read_bytes()[:size] == data  # the valid part stays, appends went on after it
    assert _unequal(cfg) == []
    assert cdc_cmd("log", "check", "-c", str(cfg)).returncode == 0
