"""`cdc log check`: every segment read whole, by the rules of `cdc.log_frames`.

A crash tears a write only at its end, so bad data with nothing valid after it is a torn
tail (an unacknowledged batch: the writer cuts it), while bad data followed by valid frames
is damage: those frames may be durable batches whose capture rows are already trimmed from
the legacy files, so it is named and never cut.
"""

from __future__ import annotations

import os

import msgspec

from cdc.changelog.frames import list_segments, segment_name
from cdc.changelog.segments import LogReader
from cdc.errors import LogCorruptError
from cdc.events import (
    Frame,
    RowBatch,
    SegmentStart,
    SourceMark,
    TableSchema,
)


class SegmentReport(msgspec.Struct):
    segment: str
    base_offset: int
    bytes: int
    frames: int
    rows: int
    marks: int
    schemas: int
    error: str | None = None
    torn_tail: int = 0  # bytes of a torn write at the newest segment's end (cut on open)


class LogCheckReport(msgspec.Struct):
    log_dir: str
    segments: list[SegmentReport]

    @property
    def ok(self) -> bool:
        return all(s.error is None for s in self.segments)


def check_log(log_dir: str) -> LogCheckReport:
    """Every frame of every segment; any bad frame is an error, but at the end of the newest
    segment, where one with nothing valid after it is a torn tail: said, and not an error."""
    reader = LogReader(log_dir)
    out = []
    bases = list_segments(log_dir)
    for base in bases:
        path = os.path.join(log_dir, segment_name(base))
        size = os.path.getsize(path)
        rep = SegmentReport(segment_name(base), base, size, 0, 0, 0, 0)
        newest = base == bases[-1]
        offset, end = base, base + size
        try:
            while offset < end:
                # A limit makes every bad frame raise; the newest segment is read as the
                # daemon's log is by other processes: damage raises, a torn tail ends it.
                limit = None if newest else end
                got = reader.read_segment(path, base, offset, limit, newest, 10000, 16 << 20)
                if not got:
                    break
                for e in got:
                    _count(rep, e.frame, base)
                offset = got[-1].next_offset
            rep.torn_tail = max(end - offset, 0)  # the daemon may append meanwhile
        except LogCorruptError as e:
            rep.error = e.message
        out.append(rep)
    return LogCheckReport(log_dir, out)


def _count(rep: SegmentReport, f: Frame, base: int) -> None:
    rep.frames += 1
    if isinstance(f, RowBatch):
        rep.rows += len(f.events)
    rep.marks += isinstance(f, SourceMark)
    rep.schemas += isinstance(f, TableSchema)
    if isinstance(f, SegmentStart) and f.base_offset != base:
        rep.error = f"segment header says base {f.base_offset}, file name {base}"
