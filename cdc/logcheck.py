"""Telling damage from a torn tail, and `cdc log check`.

A crash tears a write only at its end, so bad data with nothing valid after it is a torn
tail (an unacknowledged batch: the writer cuts it), while bad data followed by valid frames
is damage: those frames may be durable batches whose capture rows are already trimmed from
the legacy files, so it is named and never cut.
"""

from __future__ import annotations

import os
import typing

import msgspec

from cdc.changelog import HEADER, LogReader, _frames_in, list_segments, segment_name
from cdc.errors import LogCorruptError
from cdc.events import (
    Frame,
    RowBatch,
    SegmentStart,
    SourceMark,
    SourcePosition,
    TableSchema,
    decode_frame,
)

# Every payload starts with a msgpack array header then its tag as a fixstr: a frame that
# survived damage is looked for where a tag is, not at every byte.
_TAGS = [
    bytes([0xA0 | len(t)]) + t.encode()
    for t in (c.__struct_config__.tag for c in typing.get_args(Frame))
]


def _whole_frame(buf: bytes, pos: int) -> int | None:
    """The end of the frame at `pos` if it is whole, checksummed and decodes, else None."""
    for _pos, end, payload in _frames_in(buf, pos):
        if payload is None:
            return None
        try:
            decode_frame(payload)
        except msgspec.DecodeError:
            return None
        return end
    return None


def proven_frame_after(buf: bytes, bad: int) -> int | None:
    """Where valid frames resume after the bad data at `bad`, or None for a torn tail.

    A write is torn only at its end, so a crash leaves a prefix of a batch: nothing valid
    follows the bad part. A whole, checksummed, decodable frame after it that is followed
    by another one (or ends the buffer) was written after the bad frame and is proof of
    damage. Looked for at every tag, in order: the first proof found is the nearest.
    """
    found = {t: buf.find(t, bad + 1) for t in _TAGS}
    while any(i >= 0 for i in found.values()):
        i, tag = min((i, t) for t, i in found.items() if i >= 0)
        for q in (i - 1 - HEADER.size, i - 3 - HEADER.size):  # fixarray, array 16
            end = _whole_frame(buf, q) if q > bad else None
            if end is not None and (end == len(buf) or _whole_frame(buf, end) is not None):
                return q
        found[tag] = buf.find(tag, i + 1)
    return None


def damage_error(path: str, base: int, bad: int, resume: int) -> LogCorruptError:
    """The refusal for damage inside the newest segment: what is where, and that nothing
    was cut (cutting would drop the durable batches after it without a word)."""
    return LogCorruptError(
        f"change log {path}: corrupt frame at offset {base + bad}, valid frames follow at "
        f"offset {base + resume}: damage, not a torn tail; nothing was cut",
        hint="stop here and keep the segment as it is (do not truncate it): restore the "
        "state dir from a backup, or start over (docs/log-format.md, Recovery on open)",
    )


def recover_newest(data: bytes, path: str, base: int) -> tuple[int, dict[str, SourcePosition]]:
    """The end of the newest segment's last complete batch, and the positions there.

    Bad data after it is cut only as a torn tail: a frame that checksums but does not
    decode was written so (by a newer version, say), and a bad frame with valid frames
    after it is damage. Both refuse the open and name the place, so no durable batch is
    ever dropped without a word.
    """
    keep = 0
    positions: dict[str, SourcePosition] = {}
    for pos, end, payload in _frames_in(data):
        if payload is None:
            resume = proven_frame_after(data, pos)
            if resume is not None:
                raise damage_error(path, base, pos, resume)
            break
        try:
            frame = decode_frame(payload)
        except msgspec.DecodeError as e:
            raise LogCorruptError(
                f"change log {path}: undecodable frame at offset {base + pos}: {e}; "
                "nothing was cut",
                hint="a newer version of cdc wrote it: run that version",
            ) from e
        if isinstance(frame, SegmentStart):
            positions = dict(frame.positions)
            keep = end
        elif isinstance(frame, SourceMark):
            positions[frame.source] = frame.position
            keep = end
    return keep, positions


def torn_or_damaged(f: typing.BinaryIO, path: str, base: int, pos: int) -> None:
    """Another process's view of the newest segment's end: a write in progress ends the
    read, damage (valid frames after the bad one) raises. Judged on one fresh read of the
    rest, in which a write that has finished meanwhile shows as a whole frame."""
    f.seek(pos - base)
    rest = f.read()
    if _whole_frame(rest, 0) is not None:
        return  # it was being written: read again from here
    resume = proven_frame_after(rest, 0)
    if resume is not None:
        raise damage_error(path, base, pos - base, pos - base + resume)


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
