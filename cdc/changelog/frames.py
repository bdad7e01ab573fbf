"""The change log's frame format, and telling damage from a torn tail.

Both the writer (`cdc.changelog`, recovering its newest segment on open, and readers of a
segment being written) and `cdc log check` judge bad data the same way, so the rules
live here, below both: a crash tears a write only at its end, so bad data with nothing
valid after it is a torn tail (an unacknowledged batch: the writer cuts it), while bad
data followed by valid frames is damage: those frames may be durable batches whose
capture rows are already trimmed from the legacy files, so it is named and never cut.
"""

from __future__ import annotations

import os
import struct
import typing
import zlib
from collections.abc import Iterator

import msgspec

from cdc.errors import LogCorruptError
from cdc.events import Frame, SegmentStart, SourceMark, SourcePosition, decode_frame

HEADER = struct.Struct("<II")  # payload length, crc32(payload)
MAX_FRAME = 1 << 30
SUFFIX = ".seg"


def segment_name(base: int) -> str:
    return f"{base:020d}{SUFFIX}"


def list_segments(log_dir: str) -> list[int]:
    """Base offsets of the segments present, ascending."""
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    bases = []
    for n in names:
        if n.endswith(SUFFIX) and n[: -len(SUFFIX)].isdigit():
            bases.append(int(n[: -len(SUFFIX)]))
    return sorted(bases)


def frames_in(buf: bytes, start: int = 0) -> Iterator[tuple[int, int, bytes | None]]:
    """Walk frames in a buffer: (pos, end, payload) or payload None where the data goes bad.
    No frame is empty (a payload is a msgpack array), so a zero length is bad data: the
    zeros a power loss can leave at a file's end checksum as an empty frame."""
    pos, n = start, len(buf)
    while pos < n:
        if pos + HEADER.size > n:
            yield pos, n, None
            return
        length, crc = HEADER.unpack_from(buf, pos)
        end = pos + HEADER.size + length
        if length == 0 or length > MAX_FRAME or end > n:
            yield pos, n, None
            return
        payload = buf[pos + HEADER.size : end]
        if zlib.crc32(payload) != crc:
            yield pos, end, None
            return
        yield pos, end, payload
        pos = end


# Every payload starts with a msgpack array header then its tag as a fixstr: a frame that
# survived damage is looked for where a tag is, not at every byte.
_TAGS = [
    bytes([0xA0 | len(t)]) + t.encode()
    for t in (c.__struct_config__.tag for c in typing.get_args(Frame))
]


def whole_frame(buf: bytes, pos: int) -> int | None:
    """The end of the frame at `pos` if it is whole, checksummed and decodes, else None."""
    for _pos, end, payload in frames_in(buf, pos):
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
            end = whole_frame(buf, q) if q > bad else None
            if end is not None and (end == len(buf) or whole_frame(buf, end) is not None):
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
        "state dir from a backup, or start over (`cdc docs log-format`, Recovery on open)",
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
    for pos, end, payload in frames_in(data):
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
    if whole_frame(rest, 0) is not None:
        return  # it was being written: read again from here
    resume = proven_frame_after(rest, 0)
    if resume is not None:
        raise damage_error(path, base, pos - base, pos - base + resume)
