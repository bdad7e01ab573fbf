"""The retained change log: archived segments, then live ones, read as one log.

Segments every target applied are deleted, or with `[log] retention = "archive"` moved to
the archive dir under the same names (`cdc.changelog.delete_segments_before`). A segment
present in both (mid-move) is read from the log dir. What it can offer starts at the oldest
segment of the unbroken run that ends at the live log: that bound is said out loud wherever
it matters (`incomplete_note`), because a history that silently starts in the middle looks
complete and is not.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator

import msgspec

from cdc.changelog.segments import LogEntry, LogReader, list_segments, segment_name
from cdc.config import Config
from cdc.errors import CdcError, LogCorruptError
from cdc.events import SegmentStart, SourceMark


class HistoryIncomplete(CdcError):
    """The log no longer holds the part of history a request needs (segments deleted).

    Exit code 5, as for a target the log can no longer fill (docs/architecture.md, Limits).
    """

    exit_code = 5


# -- the retained log ------------------------------------------------------------------


class Segment(msgspec.Struct, frozen=True):
    """One segment file of the retained log; `archived` when it lives in the archive dir."""

    base: int
    path: str
    archived: bool = False


class RetainedLog:
    """Archived segments followed by live ones, read as one log (same contract as
    `LogReader.read`). Retention may move or delete a segment between our listing and our
    read: the listing is then taken again, and only a segment gone from both dirs fails."""

    def __init__(self, log_dir: str, archive_dir: str | None) -> None:
        self.log_dir = log_dir
        self.archive_dir = archive_dir
        self._reader = LogReader(log_dir)  # for its checksum-verifying segment reader
        self._segs: list[Segment] = []
        self._bases: list[int] = []

    @classmethod
    def of(cls, cfg: Config) -> RetainedLog:
        # The archive is read whatever `retention` says now: what it holds is still history.
        return cls(cfg.log_dir, cfg.log_archive_dir)

    def _relist(self) -> list[Segment]:
        found: dict[int, Segment] = {}
        if self.archive_dir:
            for b in list_segments(self.archive_dir):
                found[b] = Segment(b, os.path.join(self.archive_dir, segment_name(b)), True)
        for b in list_segments(self.log_dir):  # a segment in both is mid-move: the live one
            found[b] = Segment(b, os.path.join(self.log_dir, segment_name(b)))
        self._bases = sorted(found)
        self._segs = [found[b] for b in self._bases]
        return self._segs

    def segments(self) -> list[Segment]:
        """The unbroken run of segments that ends at the live log, oldest first."""
        for _ in range(5):
            segs = self._relist()
            try:
                first = len(segs) - 1
                while (
                    first > 0
                    and segs[first - 1].base + os.path.getsize(segs[first - 1].path)
                    == segs[first].base
                ):
                    first -= 1
            except FileNotFoundError:
                continue  # moved or deleted while we looked: list again
            return segs[max(first, 0) :]
        raise HistoryIncomplete(f"change log {self.log_dir}: segments keep vanishing")

    def start(self) -> int:
        """The oldest offset history can be read from (0: the whole history)."""
        segs = self.segments()
        return segs[0].base if segs else 0

    def read(
        self,
        offset: int,
        limit: int | None = None,
        max_frames: int = 10000,
        max_bytes: int = 16 << 20,
    ) -> list[LogEntry]:
        """Frames from `offset` (a frame boundary), never starting at or past `limit`."""
        out: list[LogEntry] = []
        nbytes = 0
        relisted = False
        if not self._segs:
            self._relist()
        while len(out) < max_frames and nbytes < max_bytes:
            if limit is not None and offset >= limit:
                break
            i = self._index_of(offset)
            if i is None:
                break
            seg, newest = self._segs[i], i == len(self._segs) - 1
            got = self._read_segment(
                seg, offset, limit, newest, max_frames - len(out), max_bytes - nbytes, relisted
            )
            if got is None:
                self._relist()
                relisted = True
                continue
            if got:
                out.extend(got)
                nbytes += got[-1].next_offset - offset
                offset = got[-1].next_offset
                relisted = False
                continue
            if newest and not relisted:
                self._relist()  # a newer segment may have started since we listed
                relisted = True
                continue
            if newest:
                break
            raise LogCorruptError(
                f"change log: segment after {seg.path} does not start at offset {offset}",
                hint="run `cdc log check` to see the damage",
            )
        return out

    def _index_of(self, offset: int) -> int | None:
        """None when there is no log at all; an offset before the oldest retained segment
        is history that is gone, never an empty read that would look complete."""
        i = bisect.bisect_right(self._bases, offset) - 1
        if i < 0:
            if not self._segs:
                return None
            raise HistoryIncomplete(
                f"change log {self.log_dir}: offset {offset} was deleted "
                f"(the retained log starts at {self._bases[0]})",
                hint=RETENTION_HINT,
            )
        return i

    def _read_segment(
        self,
        seg: Segment,
        offset: int,
        limit: int | None,
        newest: bool,
        max_frames: int,
        max_bytes: int,
        relisted: bool,
    ) -> list[LogEntry] | None:
        """None when the segment left its dir since we listed (retention moved or deleted
        it): the caller lists again. Missing from a fresh listing too, it is lost."""
        try:
            return self._reader.read_segment(
                seg.path, seg.base, offset, limit, newest, max_frames, max_bytes
            )
        except FileNotFoundError:
            if relisted:
                raise HistoryIncomplete(
                    f"change log: segment {segment_name(seg.base)} was deleted while "
                    f"reading offset {offset}",
                    hint=RETENTION_HINT,
                ) from None
            return None

    def batches(self, offset: int, limit: int | None = None) -> Iterator[list[LogEntry]]:
        """Whole batches from `offset`: each list ends with its `SourceMark` (or is a
        `SegmentStart`). Frames of a batch still being written are not handed out."""
        pending: list[LogEntry] = []
        while True:
            got = self.read(offset, limit)
            if not got:
                return
            for e in got:
                pending.append(e)
                if isinstance(e.frame, SourceMark | SegmentStart):
                    yield pending
                    pending = []
            offset = got[-1].next_offset

    def end(self) -> int:
        """The end of the last complete batch: where history ends right now."""
        segs = self.segments()
        if not segs:
            return 0
        end = segs[-1].base
        for batch in self.batches(segs[-1].base):
            end = batch[-1].next_offset
        return end

    def boundary_at_or_after(self, offset: int) -> int:
        """The first frame boundary at or after `offset` (which may fall inside a frame)."""
        self._relist()
        i = bisect.bisect_right(self._bases, offset) - 1
        pos = self._bases[i] if i >= 0 else offset
        while pos < offset:
            got = self.read(pos, offset)
            if not got:
                break
            pos = got[-1].next_offset
        return pos


RETENTION_HINT = 'set [log] retention = "archive" in cdc.toml to keep applied segments'


def incomplete_note(cfg: Config, start: int) -> str | None:
    """What to tell a reader of history that does not reach back to offset 0."""
    if start == 0:
        return None
    if cfg.log.retention == "archive":
        why = 'segments before were deleted before [log] retention = "archive" was set'
    else:
        why = 'segments before were deleted; set [log] retention = "archive" to keep them'
    return f"history starts at offset {start} ({why})"
