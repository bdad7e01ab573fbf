"""The change log: append-only segment files of length + CRC32 framed msgpack.

Offsets are global byte positions: a segment named `<base>.seg` holds offsets
[base, base + size). A harvest batch is written whole, closed by a `SourceMark`, and
fsynced before anyone may act on it (the harvester trims the legacy capture rows, the
replicator applies). On open, anything after the last mark of the last segment is an
unfinished batch or a torn write and is cut off, so the log always ends on a mark; but a
bad frame with valid frames after it is damage, not a torn tail, and is never cut: the
frames after it may be durable batches whose capture rows are already trimmed.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from cdc.changelog.frames import (
    HEADER,
    MAX_FRAME,
    list_segments,
    recover_newest,
    segment_name,
    torn_or_damaged,
)
from cdc.errors import LogCorruptError
from cdc.events import Frame, SegmentStart, SourceMark, SourcePosition, decode_frame, encode_frame
from cdc.faults import crash_point
from cdc.fsutil import fsync_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A decoded frame and where it sits: `offset` is its start, `next_offset` its end."""

    offset: int
    next_offset: int
    frame: Frame


def _frame_bytes(frame: Frame) -> bytes:
    payload = encode_frame(frame)
    if len(payload) > MAX_FRAME:
        # Never write a frame no reader would accept: refuse the batch instead.
        raise LogCorruptError(
            f"a {type(frame).__name__} frame of {len(payload)} bytes exceeds the "
            f"{MAX_FRAME}-byte frame limit",
            hint="lower `daemon.harvest_batch` / `daemon.snapshot_chunk` for tables with huge rows",
        )
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class LogAppendError(OSError):
    """A batch could not be appended (disk full, I/O error). It was taken back whole, so
    the log still ends on its last mark; the caller retries the batch later."""


class LogWriter:
    """The single appender of a log directory (the daemon holds the state-dir lock)."""

    def __init__(self, log_dir: str, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.log_dir = log_dir
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._positions: dict[str, SourcePosition] = {}
        self._fd = -1
        self._base = 0
        self._size = 0
        self.truncated_bytes = 0
        self._dirty = False  # a failed append may have left bytes after the last mark
        self._rollover_failed = False  # said once, until a new segment starts
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
        self._open()

    # -- opening and recovery -------------------------------------------------------
    def _open(self) -> None:
        bases = list_segments(self.log_dir)
        if not bases:
            self._start_segment(0)
            return
        base = bases[-1]
        path = os.path.join(self.log_dir, segment_name(base))
        with open(path, "rb") as f:
            data = f.read()

        keep, positions = recover_newest(data, path, base)
        if keep == 0:
            # Not even a segment header survived: the segment was being created.
            prev = self._positions_before(bases[:-1])
            os.unlink(path)
            self._positions = prev
            self._start_segment(base)
            return
        if keep < len(data):
            self.truncated_bytes = len(data) - keep
            log.warning(
                "change log %s: cut %d bytes after the last complete batch (offset %d)",
                path,
                self.truncated_bytes,
                base + keep,
            )
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, keep)
        os.fsync(self._fd)
        os.lseek(self._fd, keep, os.SEEK_SET)
        self._base, self._size, self._positions = base, keep, positions

    def _positions_before(self, bases: list[int]) -> dict[str, SourcePosition]:
        if not bases:
            return {}
        reader = LogReader(self.log_dir)
        positions: dict[str, SourcePosition] = {}
        for entry in reader.iter_from(bases[-1]):  # a complete segment: damage is damage
            if isinstance(entry.frame, SegmentStart):
                positions = dict(entry.frame.positions)
            elif isinstance(entry.frame, SourceMark):
                positions[entry.frame.source] = entry.frame.position
        return positions

    def _start_segment(self, base: int) -> None:
        path = os.path.join(self.log_dir, segment_name(base))
        data = _frame_bytes(SegmentStart(base, dict(self._positions), time.time()))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
            fsync_dir(self.log_dir)
        except OSError as e:
            # Disk full: no segment may stay behind half made. Readers would take it for
            # the log's continuation, while the writer goes on in the segment it has.
            os.close(fd)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as gone:
                raise LogCorruptError(
                    f"change log {path}: could not start this segment ({e}), nor remove it "
                    f"({gone})",
                    hint="remove the file by hand (it holds no batch) and restart the daemon",
                ) from e
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._base, self._size = fd, base, len(data)

    # -- appending ---------------------------------------------------------------------
    @property
    def end_offset(self) -> int:
        """Offset just past the last durable frame; readers must not go beyond it."""
        return self._base + self._size

    @property
    def positions(self) -> dict[str, SourcePosition]:
        return dict(self._positions)

    def append_batch(self, frames: list[Frame], mark: SourceMark) -> tuple[int, int]:
        """Write frames + mark, fsync, and return (first offset, end offset).

        When this returns, the batch survives a crash; before, none of it counts.
        """
        chunks = [_frame_bytes(f) for f in frames]
        chunks.append(_frame_bytes(mark))
        data = b"".join(chunks)
        with self._lock:
            start = self.end_offset
            view = memoryview(data)
            if self._dirty:  # an earlier failed append is not taken back yet
                try:
                    self._take_back()
                except OSError as e:
                    raise LogAppendError(
                        e.errno,
                        f"{e.strerror or e}: a failed append to {self._path()} could not be "
                        "taken back yet; nothing is appended until it is",
                    ) from e
            crash_point("append", lambda: os.write(self._fd, data[: len(data) // 2]))
            try:
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                os.fdatasync(self._fd)
            except OSError as e:
                # Disk full or I/O error: take back the partial batch so the log still
                # ends on a mark and the next append starts on a clean boundary.
                self._dirty = True
                with contextlib.suppress(OSError):  # else tried again before the next one
                    self._take_back()
                raise LogAppendError(e.errno, self._append_failure(e)) from e
            self._size += len(data)
            self._positions[mark.source] = mark.position
            if self._size >= self.segment_bytes:
                try:
                    self._start_segment(self.end_offset)
                except OSError as e:
                    # The batch is durable: only the next segment could not be started.
                    # Go on in this one (`segment_bytes` is a size to aim at, not a
                    # limit) and try again after the next batch.
                    if not self._rollover_failed:
                        log.warning(
                            "change log %s: cannot start a new segment (%s); appending to "
                            "the current one until it can",
                            self.log_dir,
                            e,
                        )
                    self._rollover_failed = True
                else:
                    self._rollover_failed = False
            crash_point("appended")
            return start, start + len(data)

    def _take_back(self) -> None:
        """Cut what a failed append left after the last mark, so that nothing is ever
        appended after a partial batch (it would sit in the middle of the log)."""
        os.ftruncate(self._fd, self._size)
        os.lseek(self._fd, self._size, os.SEEK_SET)
        self._dirty = False

    def _path(self) -> str:
        return os.path.join(self.log_dir, segment_name(self._base))

    def _append_failure(self, e: OSError) -> str:
        """The message an operator reads in `cdc status`: what, where, what happens now."""
        where = f"appending to {self._path()}"  # no byte count: one failure, one text
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return (
                f"{e.strerror}: the state dir's disk is full ({where}): the batch was taken "
                "back and is retried until there is room"
            )
        return f"{e.strerror or e}: change log write failed ({where}): the batch was taken back"

    def delete_segments_before(self, offset: int, archive_dir: str | None = None) -> list[int]:
        with self._lock:
            return delete_segments_before(self.log_dir, offset, archive_dir)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def delete_segments_before(log_dir: str, offset: int, archive_dir: str | None = None) -> list[int]:
    """Drop whole segments that end at or before `offset` (every consumer is past them),
    or, with `archive_dir` (`[log] retention = "archive"`), move them there: the full
    history stays readable (`cdc history`, `cdc rebuild`) at the cost of its disk.

    The newest segment is never deleted (the writer appends to it), so this is safe from
    the apply worker's process while the daemon keeps appending. An archived segment is
    made durable in the archive before it leaves the log: a crash in between leaves it in
    both places, never in neither.
    """
    removed = []
    bases = list_segments(log_dir)
    for base, nxt in zip(bases, bases[1:], strict=False):
        if nxt <= offset:
            path = os.path.join(log_dir, segment_name(base))
            if archive_dir is not None:
                _archive(path, archive_dir)
            os.unlink(path)
            removed.append(base)
            crash_point("gc")
    if removed:
        fsync_dir(log_dir)
    return removed


def _archive(path: str, archive_dir: str) -> None:
    os.makedirs(archive_dir, mode=0o700, exist_ok=True)
    dest = os.path.join(archive_dir, os.path.basename(path))
    if os.path.exists(dest) and os.path.getsize(dest) == os.path.getsize(path):
        return  # archived before a crash, not yet removed from the log
    tmp = dest + ".tmp"
    try:
        with open(path, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # the archive's disk is full: give back what the copy took
        raise
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)
    fsync_dir(archive_dir)


class LogReader:
    """Reads frames in offset order across segments, verifying every checksum."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self._bases: list[int] = []  # cached listing; refreshed when we reach its end

    def first_offset(self) -> int:
        bases = list_segments(self.log_dir)
        return bases[0] if bases else 0

    def read(
        self,
        offset: int,
        limit_offset: int | None = None,
        max_frames: int = 10000,
        max_bytes: int = 16 << 20,
    ) -> list[LogEntry]:
        """Frames starting at `offset` (a frame boundary), never past `limit_offset`.

        Without a limit (another process's view), a damaged frame at the very end of the
        newest segment is taken as a write in progress and ends the read; anywhere else a
        damaged frame raises `LogCorruptError` naming the segment and offset.
        """
        out: list[LogEntry] = []
        bases = self._listing(offset)
        if not bases:
            return out
        nbytes = 0
        while len(out) < max_frames and nbytes < max_bytes:
            if limit_offset is not None and offset >= limit_offset:
                break
            idx = bisect.bisect_right(bases, offset) - 1
            base = bases[idx]
            newest = idx == len(bases) - 1
            got, newest = self._read_at(
                base, offset, limit_offset, newest, max_frames - len(out), max_bytes - nbytes
            )
            if not got and newest:
                fresh = self._relisted(bases, offset)
                if fresh is not None:
                    bases = fresh
                    continue
            if got:
                out.extend(got)
                nbytes += got[-1].next_offset - offset
                offset = got[-1].next_offset
                continue
            if newest or bases[idx + 1] != offset:
                self._check_next_starts(base, offset, newest)
                break
        return out

    def _listing(self, offset: int) -> list[int]:
        """Listing the folder on every read would cost a directory scan per batch: the
        cached listing serves until a read reaches its end (`_relisted`); an offset before
        it is checked against a fresh listing before it is called deleted."""
        bases = self._bases
        if not bases or offset < bases[0]:
            bases = self._bases = list_segments(self.log_dir)
        if bases and offset < bases[0]:
            raise LogCorruptError(
                f"change log {self.log_dir}: offset {offset} was already deleted "
                f"(log starts at {bases[0]})",
                hint="a consumer fell behind the retention; re-snapshot the target",
            )
        return bases

    def _read_at(
        self,
        base: int,
        offset: int,
        limit: int | None,
        newest: bool,
        max_frames: int,
        max_bytes: int,
    ) -> tuple[list[LogEntry], bool]:
        """Returns the entries and whether the caller must treat the segment as the
        newest: a segment deleted under us means the listing is stale, as at the end."""
        path = os.path.join(self.log_dir, segment_name(base))
        try:
            got = self.read_segment(path, base, offset, limit, newest, max_frames, max_bytes)
        except FileNotFoundError:
            return [], True  # deleted by retention since we listed: list again below
        return got, newest

    def _relisted(self, bases: list[int], offset: int) -> list[int] | None:
        """At the end of what we listed, a new segment may have started: the fresh listing,
        or None when nothing changed and the log really ends here."""
        fresh = list_segments(self.log_dir)
        if fresh == bases:
            return None
        self._bases = fresh
        if offset < fresh[0]:
            raise LogCorruptError(f"change log {self.log_dir}: offset {offset} was already deleted")
        return fresh

    def _check_next_starts(self, base: int, offset: int, newest: bool) -> None:
        """A segment read to its end whose successor starts elsewhere is a hole in the log,
        not its end: frames would be silently skipped."""
        path = os.path.join(self.log_dir, segment_name(base))
        if not newest and os.path.getsize(path) + base == offset:
            raise LogCorruptError(
                f"change log {self.log_dir}: segment after {path} does not start at offset {offset}"
            )

    def read_segment(
        self,
        path: str,
        base: int,
        offset: int,
        limit: int | None,
        newest: bool,
        max_frames: int,
        max_bytes: int,
    ) -> list[LogEntry]:
        out: list[LogEntry] = []
        pos = offset
        used = 0
        with open(path, "rb", buffering=1 << 16) as f:
            f.seek(offset - base)
            while len(out) < max_frames and used < max_bytes:
                if limit is not None and pos >= limit:
                    break
                hdr = f.read(HEADER.size)
                if not hdr:
                    break
                bad = len(hdr) < HEADER.size
                payload = b""
                if not bad:
                    length, crc = HEADER.unpack(hdr)
                    bad = length == 0 or length > MAX_FRAME
                    if not bad:
                        payload = f.read(length)
                        bad = len(payload) < length or zlib.crc32(payload) != crc
                if bad:
                    if newest and limit is None:
                        torn_or_damaged(f, path, base, pos)
                        break  # a batch being written right now by the daemon
                    raise LogCorruptError(
                        f"change log {path}: corrupt frame at offset {pos}",
                        hint="run `cdc log check` to see the damage",
                    )
                try:
                    frame = decode_frame(payload)
                except msgspec.DecodeError as e:
                    raise LogCorruptError(
                        f"change log {path}: undecodable frame at offset {pos}: {e}"
                    ) from e
                end = pos + HEADER.size + len(payload)
                out.append(LogEntry(pos, end, frame))
                used += end - pos
                pos = end
        return out

    def iter_from(self, offset: int, stop_at_bad: bool = False) -> Iterator[LogEntry]:
        while True:
            try:
                batch = self.read(offset)
            except LogCorruptError:
                if stop_at_bad:
                    return
                raise
            if not batch:
                return
            yield from batch
            offset = batch[-1].next_offset
