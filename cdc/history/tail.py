"""`cdc log tail`: the log's events from an offset, or the last few, then (`--follow`)
each new batch as the daemon appends it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from cdc.changelog.retained import HistoryIncomplete, RetainedLog, incomplete_note
from cdc.config import Config
from cdc.errors import ConfigError
from cdc.history.logged import Columns, LoggedEvent, Match, _matcher, logged_events


def tail(
    cfg: Config,
    *,
    from_offset: int | None = None,
    last: int | None = None,
    follow: bool = False,
    source: str | None = None,
    table: str | None = None,
    stop: threading.Event | None = None,
    poll: float = 0.2,
) -> Iterator[LoggedEvent]:
    """The log's events from `from_offset` (or the last `last` of them, or the retained
    start), then, with `follow`, each new batch the daemon appends until `stop` is set."""
    if from_offset is not None and last is not None:
        raise ConfigError("give a start offset or a number of last events, not both")
    if last is not None and last < 0:
        raise ConfigError(f"--last {last}: give a count of 0 or more")
    log = RetainedLog.of(cfg)
    cols = Columns.from_targets(cfg)
    match = _matcher(source, table)
    stop = stop or threading.Event()
    if last is not None:
        shown, pos = _last_events(log, last, cols, match)
        yield from shown
        if not follow:  # the last N as they were when asked, not what the daemon adds since
            return
    else:
        start = log.start()
        pos = start if from_offset is None else _checked_start(cfg, log, from_offset, start)
    while not stop.is_set():
        for batch in log.batches(pos):
            for e in batch:
                yield from logged_events(e, cols, match)
            pos = batch[-1].next_offset
            if stop.is_set():
                return
        if not follow or stop.wait(poll):
            return


def _checked_start(cfg: Config, log: RetainedLog, offset: int, start: int) -> int:
    if offset < start:
        raise ConfigError(
            f"offset {offset} is before the retained log: {incomplete_note(cfg, start)}"
        )
    end = log.end()
    if offset > end:
        raise ConfigError(f"offset {offset} is past the end of the change log ({end})")
    return log.boundary_at_or_after(offset)


def _last_events(
    log: RetainedLog, n: int, cols: Columns, match: Match
) -> tuple[list[LoggedEvent], int]:
    """The last `n` matching events and the offset after them, reading segments from the
    newest back only as far as needed (a segment holds whole batches)."""
    segs = log.segments()
    if not segs:
        return [], 0
    pos = segs[-1].base
    found: list[list[LoggedEvent]] = []
    newest: dict[tuple[str, str], list[str]] | None = None
    count = 0
    for i in range(len(segs) - 1, -1, -1):
        limit = segs[i + 1].base if i + 1 < len(segs) else None
        evs: list[LoggedEvent] = []
        try:
            for batch in log.batches(segs[i].base, limit):
                for e in batch:
                    evs.extend(logged_events(e, cols, match))
                if limit is None:
                    pos = batch[-1].next_offset
        except HistoryIncomplete:
            break  # retention took the older segments meanwhile: show what we have
        if newest is None:  # the names that rows after `pos` (--follow) start from
            newest = dict(cols.known)
        found.append(evs)
        count += len(evs)
        if count >= n:
            break
    cols.known = cols.known if newest is None else newest
    shown = [e for evs in reversed(found) for e in evs]
    return (shown[-n:] if n else []), pos
