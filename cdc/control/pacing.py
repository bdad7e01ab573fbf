"""The throttle (`cdc throttle`, cdc.controls), applied by one source's harvest thread."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from cdc.config import DaemonSettings
from cdc.control.controls import Throttle

MIN_BATCH = 10  # the lock cap never shrinks a batch below this: the source must move
START_BATCH = 100  # a new lock cap starts here and grows while harvests stay well under it
GROW = 1.25


class Pacer:
    """Applies one source's `Throttle` to its harvest thread.

    `max_changes_per_second`: a token bucket (one second of burst) in legacy rows read:
    capture rows harvested and snapshot rows copied. A batch never asks for more rows than
    there are tokens; with none left the thread waits (`delay`).

    `max_lock_ms`: the thread times each harvest and snapshot chunk (minus the log append,
    which happens after the read transaction) and adapts the batch so the read transaction
    stays under the cap: over it, the batch shrinks in proportion (with a 20 % margin);
    a full batch under half the cap grows it by a quarter, up to the configured size. The
    time also counts the capture trim when one runs, which is a lock on the file as well.
    """

    def __init__(
        self, settings: DaemonSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base = settings
        self.clock = clock
        self.throttle: Throttle | None = None
        self.tokens = 0.0
        self.stamp = clock()
        self.lock_batch = {"harvest": settings.harvest_batch, "snapshot": settings.snapshot_chunk}

    def use(self, throttle: Throttle | None) -> None:
        """Follow `throttle` (None: unthrottled). A changed throttle starts afresh."""
        if throttle == self.throttle:
            return
        self.throttle = throttle
        self.tokens = (throttle.max_changes_per_second or 0.0) if throttle else 0.0
        self.stamp = self.clock()
        start = START_BATCH if throttle and throttle.max_lock_ms else None
        self.lock_batch = {
            "harvest": min(start or self.base.harvest_batch, self.base.harvest_batch),
            "snapshot": min(start or self.base.snapshot_chunk, self.base.snapshot_chunk),
        }

    @property
    def rate(self) -> float | None:
        return self.throttle.max_changes_per_second if self.throttle else None

    def delay(self) -> float:
        """Seconds to wait before the next read (0: go), at most one poll interval so the
        thread looks at the controls again."""
        rate = self.rate
        if rate is None:
            return 0.0
        now = self.clock()
        self.tokens = min(max(rate, 1.0), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            return 0.0
        return min((1.0 - self.tokens) / rate, self.base.poll_interval)

    def settings(self) -> DaemonSettings:
        """The daemon settings with this step's batch sizes."""
        if self.throttle is None:
            return self.base
        cap = int(self.tokens) if self.rate is not None else None
        sizes = {}
        for kind, field in (("harvest", "harvest_batch"), ("snapshot", "snapshot_chunk")):
            n = min(getattr(self.base, field), self.lock_batch[kind])
            sizes[field] = max(1, min(n, cap) if cap is not None else n)
        return msgspec.structs.replace(self.base, **sizes)

    def done(self, kind: str, rows: int, limit: int, seconds: float) -> None:
        """Account for a step that read `rows` (asked for at most `limit`) in `seconds`."""
        if self.rate is not None:
            self.tokens -= rows
        cap_ms = self.throttle.max_lock_ms if self.throttle else None
        if cap_ms is None or rows <= 0:
            return
        cap = cap_ms / 1000.0
        cur = self.lock_batch[kind]
        top = self.base.harvest_batch if kind == "harvest" else self.base.snapshot_chunk
        if seconds > cap:
            self.lock_batch[kind] = max(MIN_BATCH, min(cur, int(rows * cap / seconds * 0.8)))
        elif rows >= limit >= cur and seconds < cap / 2:
            self.lock_batch[kind] = min(top, int(cur * GROW) + 1)


class TimedWriter:
    """A source's view of the shared log writer that remembers how long its last append
    took, so that `Pacer` can tell the read transaction's time from the fsync's."""

    def __init__(self, writer) -> None:  # noqa: ANN001 - cdc.changelog.LogWriter
        self._writer = writer
        self.seconds = 0.0

    def append_batch(self, frames, mark):  # noqa: ANN001, ANN201 - LogWriter's signature
        t = time.monotonic()
        try:
            return self._writer.append_batch(frames, mark)
        finally:
            self.seconds += time.monotonic() - t

    def __getattr__(self, name: str):  # noqa: ANN204 - positions, end_offset, ...
        return getattr(self._writer, name)
