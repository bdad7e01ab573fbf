"""`cdc log check`: read every frame of every segment and say where the log is damaged."""

from __future__ import annotations

import os

import msgspec

from cdc.changelog import LogReader, list_segments, segment_name
from cdc.errors import LogCorruptError
from cdc.events import RowBatch, SegmentStart, SourceMark, TableSchema


class SegmentReport(msgspec.Struct):
    segment: str
    base_offset: int
    bytes: int
    frames: int
    rows: int
    marks: int
    schemas: int
    error: str | None = None


class LogCheckReport(msgspec.Struct):
    log_dir: str
    segments: list[SegmentReport]

    @property
    def ok(self) -> bool:
        return all(s.error is None for s in self.segments)


def check_log(log_dir: str) -> LogCheckReport:
    reader = LogReader(log_dir)
    out = []
    for base in list_segments(log_dir):
        path = os.path.join(log_dir, segment_name(base))
        size = os.path.getsize(path)
        rep = SegmentReport(segment_name(base), base, size, 0, 0, 0, 0)
        offset, end = base, base + size
        try:
            while offset < end:
                # newest=False and a limit: every damaged frame raises, the tail included.
                got = reader.read_segment(path, base, offset, end, False, 10000, 16 << 20)
                if not got:
                    break
                for e in got:
                    rep.frames += 1
                    f = e.frame
                    if isinstance(f, RowBatch):
                        rep.rows += len(f.events)
                    rep.marks += isinstance(f, SourceMark)
                    rep.schemas += isinstance(f, TableSchema)
                    if isinstance(f, SegmentStart) and f.base_offset != base:
                        rep.error = f"segment header says base {f.base_offset}, file name {base}"
                offset = got[-1].next_offset
        except LogCorruptError as e:
            rep.error = e.message
        out.append(rep)
    return LogCheckReport(log_dir, out)
