"""The change log itself on a full disk: an append that does not fit is taken back whole
(never half a segment), and the daemon's status file stays current. The disk is a small
tmpfs (the `tmpfs` fixture of tests/conftest.py); skipped, with the reason, where it
cannot be mounted."""

from __future__ import annotations

import errno
import os

from cdc.changelog.check import check_log
from cdc.changelog.segments import LogReader, LogWriter, list_segments
from cdc.events import Op, RowBatch, RowEvent, SourceMark, SourcePosition
from cdc.status_file import DaemonStatus, SourceRuntime, read_status, write_status

NO_SPACE = "No space left on device"


# -- the change log itself on a full disk --------------------------------------------------


def _mark_batch(i: int, size: int = 150):
    rows = [RowEvent(Op.UPSERT, i, [i], ["x" * size])]
    return [RowBatch("s", "t", 1.0, rows)], SourceMark("s", SourcePosition("iid", i))


def test_log_on_a_full_disk_takes_back_and_never_leaves_half_a_segment(tmp_path, tmpfs):
    """Appends on a full disk fail whole and say so; a segment rollover that finds the disk
    full (the batch itself fitted into the last page) is put off instead of leaving an
    empty segment that readers would take for the log's continuation."""
    vol = tmpfs(tmp_path / "log", "1m")
    page = 4096
    seg_bytes = 3 * page + 2000  # the batch that crosses it ends inside a page: no allocation
    w = LogWriter(str(vol.path), segment_bytes=seg_bytes)
    done: list[int] = []

    def append(i: int) -> bool:
        try:
            w.append_batch(*_mark_batch(i))
        except OSError as e:
            assert e.errno == errno.ENOSPC and "disk is full" in str(e), e
            return False
        done.append(i)
        return True

    i = 0
    one = None
    while True:  # up to the batch that crosses segment_bytes while staying in its page
        before = w.end_offset
        assert append(i)
        i += 1
        one = w.end_offset - before
        if w._size + one >= seg_bytes:
            break
    assert (w._size // page) == ((w._size + one - 1) // page), "crossing batch needs a page"
    assert vol.fill() == 0
    assert append(i)  # fits in the last page; the rollover after it finds no room
    i += 1
    assert len(list_segments(str(vol.path))) == 1, os.listdir(vol.path)
    failed = sum(not append(i + k) for k in range(20))  # the page is full now
    assert failed > 0
    i += 20
    vol.free()
    for k in range(40):
        assert append(i + k)
    assert len(list_segments(str(vol.path))) > 1
    end, positions = w.end_offset, w.positions
    w.close()
    assert check_log(str(vol.path)).ok
    seqs = [
        ev.seq
        for e in LogReader(str(vol.path)).iter_from(0)
        if isinstance(e.frame, RowBatch)
        for ev in e.frame.events
    ]
    assert seqs == done  # every acknowledged batch once, in order; nothing else
    w2 = LogWriter(str(vol.path), segment_bytes=seg_bytes)
    assert (w2.end_offset, w2.positions, w2.truncated_bytes) == (end, positions, 0)
    w2.close()


def test_status_file_is_kept_current_on_a_full_disk(tmp_path, tmpfs):
    """The status file is where an operator reads about the full disk: it is rewritten in
    the room it keeps, when no new file can be made, errors and all."""
    vol = tmpfs(tmp_path / "state", "1m")
    state = str(vol.path)
    names = [f"source-{i}" for i in range(8)]
    write_status(
        state, DaemonStatus(1, "running", 1.0, 1.0, 0, {n: SourceRuntime(n) for n in names})
    )
    assert vol.fill() == 0
    err = f"LogAppendError: [Errno 28] {NO_SPACE}: the state dir's disk is full " + "x" * 200
    sources = {n: SourceRuntime(n, errors=1, last_error=err) for n in names}
    write_status(state, DaemonStatus(1, "running", 1.0, 2.0, 0, sources))
    st = read_status(state)
    assert st.updated_at == 2.0 and all(s.last_error == err for s in st.sources.values())
    assert sorted(os.listdir(state)) == [".filler", "daemon-status.json"]  # no tmp left
