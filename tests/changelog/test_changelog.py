"""The change log: framing, recovery of torn and unfinished tails, corruption, retention."""

from __future__ import annotations

import os
import zlib

import pytest

from cdc.changelog.segments import HEADER, LogReader, LogWriter, list_segments, segment_name
from cdc.errors import LogCorruptError
from cdc.events import (
    Op,
    RowBatch,
    RowEvent,
    SourceMark,
    SourcePosition,
    decode_frame,
    encode_frame,
)
from tests.changelog.conftest import GOLDEN


def _batch(w: LogWriter, i: int, n: int = 3) -> tuple[int, int]:
    rows = [RowEvent(Op.UPSERT, i * 10 + j, [i * 10 + j], [j, "x" * 20]) for j in range(n)]
    batch = RowBatch("s", "t", 1.0, rows)
    return w.append_batch([batch], SourceMark("s", SourcePosition("iid", i * 10 + n - 1)))


def _rows(log_dir) -> list[RowEvent]:
    return [
        ev
        for e in LogReader(log_dir).iter_from(LogReader(log_dir).first_offset())
        if isinstance(e.frame, RowBatch)
        for ev in e.frame.events
    ]


def test_append_read_and_offsets_are_contiguous(tmp_path):
    w = LogWriter(str(tmp_path), segment_bytes=400)
    for i in range(20):
        _batch(w, i)
    entries = list(LogReader(str(tmp_path)).iter_from(0))
    assert len(list_segments(str(tmp_path))) > 3
    for a, b in zip(entries, entries[1:], strict=False):
        assert a.next_offset == b.offset
    assert entries[-1].next_offset == w.end_offset
    assert [r.seq for r in _rows(str(tmp_path))] == [
        i * 10 + j for i in range(20) for j in range(3)
    ]


def test_torn_tail_is_cut_on_open(tmp_path):
    w = LogWriter(str(tmp_path))
    _batch(w, 0)
    end = w.end_offset
    w.close()
    seg = tmp_path / segment_name(0)
    with open(seg, "ab") as f:
        f.write(HEADER.pack(100, 0) + b"partial")
    w2 = LogWriter(str(tmp_path))
    assert w2.end_offset == end and w2.truncated_bytes > 0
    _batch(w2, 1)
    assert [r.seq for r in _rows(str(tmp_path))] == [0, 1, 2, 10, 11, 12]


def test_unfinished_batch_without_mark_is_cut(tmp_path):
    """Events written without their closing mark were never acknowledged: they go."""
    w = LogWriter(str(tmp_path))
    _batch(w, 0)
    end = w.end_offset
    w.close()
    payload = encode_frame(RowBatch("s", "t", 1.0, [RowEvent(Op.UPSERT, 99, [99], [1])]))
    with open(tmp_path / segment_name(0), "ab") as f:
        f.write(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
    w2 = LogWriter(str(tmp_path))
    assert w2.end_offset == end
    assert w2.positions["s"].through_seq == 2


def test_positions_survive_segment_rolls_and_deletion(tmp_path):
    w = LogWriter(str(tmp_path), segment_bytes=300)
    for i in range(10):
        _batch(w, i)
    removed = w.delete_segments_before(w.end_offset)
    assert removed and len(list_segments(str(tmp_path))) == 1
    w.close()
    w2 = LogWriter(str(tmp_path), segment_bytes=300)
    assert w2.positions["s"].through_seq == 92


def test_archive_retention_moves_applied_segments_whole(tmp_path):
    log, archive = tmp_path / "log", tmp_path / "archive"
    w = LogWriter(str(log), segment_bytes=300)
    for i in range(10):
        _batch(w, i)
    everything = _rows(str(log))
    moved = w.delete_segments_before(w.end_offset, str(archive))
    assert moved and list_segments(str(archive)) == moved
    assert len(list_segments(str(log))) == 1
    assert oct(os.stat(archive).st_mode & 0o777) == "0o700"
    assert _rows(str(archive)) + _rows(str(log)) == everything  # nothing lost, in order
    # a crash after the copy, before the unlink: the segment is in both; the next run
    # keeps the archived copy and removes the log's
    for i in range(10, 14):
        _batch(w, i)
    nxt = list_segments(str(log))[0]
    (archive / segment_name(nxt)).write_bytes((log / segment_name(nxt)).read_bytes())
    w.delete_segments_before(w.end_offset, str(archive))
    assert nxt in list_segments(str(archive)) and nxt not in list_segments(str(log))
    w.close()


def test_corrupt_frame_in_the_middle_is_named(tmp_path):
    w = LogWriter(str(tmp_path), segment_bytes=300)
    for i in range(6):
        _batch(w, i)
    first = list_segments(str(tmp_path))[0]
    path = tmp_path / segment_name(first)
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError) as e:
        list(LogReader(str(tmp_path)).iter_from(0))
    assert segment_name(first) in str(e.value) and "offset" in str(e.value)


def test_reader_respects_the_durable_limit(tmp_path):
    w = LogWriter(str(tmp_path))
    _, end1 = _batch(w, 0)
    _batch(w, 1)
    got = LogReader(str(tmp_path)).read(0, limit_offset=end1)
    assert got[-1].next_offset == end1


def test_disk_error_takes_back_the_partial_batch(tmp_path):
    """A failed append leaves the log ending on its last mark (simulated with a closed fd)."""
    w = LogWriter(str(tmp_path))
    _batch(w, 0)
    end = w.end_offset
    good_fd = w._fd
    w._fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail with EBADF
    with pytest.raises(OSError):
        _batch(w, 1)
    os.close(w._fd)
    w._fd = good_fd
    assert w.end_offset == end
    _batch(w, 2)
    assert [r.seq for r in _rows(str(tmp_path))] == [0, 1, 2, 20, 21, 22]


@pytest.mark.parametrize("hexed,expected", GOLDEN, ids=["row", "schema", "mark", "segment"])
def test_old_frames_still_decode(hexed, expected):
    got = decode_frame(bytes.fromhex(hexed))
    assert got == expected
    if isinstance(got, RowBatch):
        row = got.events[0].row
        assert repr(row[1]) == "-0.0" and isinstance(row[2], bytes)


def test_log_check_names_the_damaged_segment(tmp_path):
    from cdc.changelog.check import check_log

    w = LogWriter(str(tmp_path), segment_bytes=300)
    for i in range(6):
        _batch(w, i)
    assert check_log(str(tmp_path)).ok
    first = list_segments(str(tmp_path))[1]
    path = tmp_path / segment_name(first)
    data = bytearray(path.read_bytes())
    data[40] ^= 0x01
    path.write_bytes(bytes(data))
    rep = check_log(str(tmp_path))
    assert not rep.ok
    bad = [s for s in rep.segments if s.error]
    assert [s.segment for s in bad] == [segment_name(first)] and "offset" in bad[0].error


# -- damage inside the newest segment is not a torn tail -------------------------------


def _entries(log_dir) -> list:
    return list(LogReader(str(log_dir)).iter_from(0))


def _flip(path, at: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("where", ["payload", "length", "last rows"])
def test_damage_inside_the_newest_segment_is_refused_not_cut(tmp_path, where):
    """Later batches are durable (their capture rows may be trimmed already): cutting them
    like a torn tail would lose them without a word. The open names the place instead."""
    w = LogWriter(str(tmp_path))
    for i in range(6):
        _batch(w, i)
    w.close()
    rows = [e for e in _entries(tmp_path) if isinstance(e.frame, RowBatch)]
    victim = rows[-1] if where == "last rows" else rows[2]  # "last rows": only a mark after
    at = victim.offset + (0 if where == "length" else HEADER.size + 5)
    seg = tmp_path / segment_name(0)
    damaged = _flip(seg, at + (2 if where == "length" else 0))
    with pytest.raises(LogCorruptError) as e:
        LogWriter(str(tmp_path))
    msg = str(e.value)
    assert segment_name(0) in msg and f"offset {victim.offset}," in msg, msg
    assert f"valid frames follow at offset {victim.next_offset}" in msg, msg
    assert e.value.exit_code == 5 and e.value.hint
    assert seg.read_bytes() == damaged  # nothing cut, nothing rewritten


def test_a_live_reader_raises_on_damage_in_the_newest_segment(tmp_path):
    """Another process (`cdc log tail`, status) reads without the writer's durable limit;
    a bad frame with valid ones after it is not a write in progress."""
    w = LogWriter(str(tmp_path))
    for i in range(4):
        _batch(w, i)
    rows = [e for e in _entries(tmp_path) if isinstance(e.frame, RowBatch)]
    _flip(tmp_path / segment_name(0), rows[1].offset + HEADER.size + 3)
    with pytest.raises(LogCorruptError) as e:
        LogReader(str(tmp_path)).read(0)
    assert f"offset {rows[1].offset}," in str(e.value)
    w.close()


def test_a_torn_batch_at_the_end_is_still_cut(tmp_path):
    """A crash leaves a prefix of its batch: whole frames without their mark, then part of
    a frame, nothing valid after. Cut back to the last mark, as before."""
    w = LogWriter(str(tmp_path))
    _batch(w, 0)
    end = w.end_offset
    _batch(w, 1)
    w.close()
    seg = tmp_path / segment_name(0)
    rows = [e for e in _entries(tmp_path) if isinstance(e.frame, RowBatch)]
    with open(seg, "r+b") as f:
        f.truncate(rows[-1].offset + HEADER.size + 10)  # mid-frame, no garbage
    w2 = LogWriter(str(tmp_path))
    assert w2.end_offset == end and w2.truncated_bytes == HEADER.size + 10
    assert w2.positions["s"].through_seq == 2
    _batch(w2, 2)
    assert [r.seq for r in _rows(str(tmp_path))] == [0, 1, 2, 20, 21, 22]


def test_a_zeroed_tail_is_a_torn_tail(tmp_path):
    """A power loss can leave a file longer than what reached the disk, the rest zeros:
    zeros checksum as empty frames, which no writer ever writes."""
    w = LogWriter(str(tmp_path))
    _batch(w, 0)
    end = w.end_offset
    w.close()
    with open(tmp_path / segment_name(0), "ab") as f:
        f.write(bytes(4096))
    assert LogReader(str(tmp_path)).read(0)[-1].next_offset == end  # a live view stops there
    w2 = LogWriter(str(tmp_path))
    assert w2.end_offset == end and w2.truncated_bytes == 4096


def test_a_frame_that_checksums_but_does_not_decode_is_not_cut(tmp_path):
    """It was written so (a newer version's frame kind): never a torn write."""
    w = LogWriter(str(tmp_path))
    _batch(w, 0)
    w.close()
    payload = bytes.fromhex("92a6") + b"future" + b"\x01"
    seg = tmp_path / segment_name(0)
    with open(seg, "ab") as f:
        f.write(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
    before = seg.read_bytes()
    with pytest.raises(LogCorruptError) as e:
        LogWriter(str(tmp_path))
    assert "undecodable" in str(e.value) and segment_name(0) in str(e.value)
    assert seg.read_bytes() == before


def test_log_check_tells_a_torn_tail_from_damage(tmp_path):
    from cdc.changelog.check import check_log

    w = LogWriter(str(tmp_path))
    for i in range(4):
        _batch(w, i)
    w.close()
    seg = tmp_path / segment_name(0)
    with open(seg, "ab") as f:
        f.write(HEADER.pack(100, 0) + b"partial")
    rep = check_log(str(tmp_path))
    assert rep.ok and rep.segments[0].torn_tail == HEADER.size + len(b"partial")
    rows = [e for e in _entries(tmp_path) if isinstance(e.frame, RowBatch)]
    _flip(seg, rows[1].offset + HEADER.size + 3)
    rep = check_log(str(tmp_path))
    assert not rep.ok
    err = rep.segments[0].error
    assert f"offset {rows[1].offset}," in err and segment_name(0) in err
