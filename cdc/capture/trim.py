"""The trim of the capture table, apart from the harvest that makes it safe.

Harvesting only reads the bots' file; trimming writes it, and every write transaction we
hold there delays the bots' writes. So the trim has its own pace and its own failure
modes (busy bots, a full legacy disk) that must never stop the harvest: it is kept here,
with the state that paces it, so the harvester's read path stays free of them.
"""

from __future__ import annotations

import logging
import time

import apsw

from cdc.capture import triggers as capture
from cdc.config import DaemonSettings
from cdc.faults import crash_point
from cdc.sqlconn import BusyWait, write_transaction

log = logging.getLogger("cdc.capture.harvester")  # its lines, named as before

TRIM_OVERDUE = 30.0  # seconds a trim may be deferred before it waits its turn
TRIM_FULL_RETRY = 5.0  # seconds between trims tried while the legacy file's disk is full
# The capture table's ends for a trim slice: one min() or max() per SELECT is an index
# seek; both in one SELECT make SQLite scan the whole table.
TRIM_BOUNDS = (
    f"SELECT (SELECT coalesce(min(seq), 0) FROM {capture.CHANGES}), "
    f"(SELECT coalesce(max(seq), 0) FROM {capture.CHANGES})"
)


class CaptureTrim:
    """When the capture rows of one source were last trimmed, and why they cannot be."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.last_trim = 0.0
        self.trimmed_through = 0
        self.error: str | None = None  # why harvested capture rows cannot be trimmed
        self.retry_at = 0.0

    def restart(self) -> None:
        """The source was (re)opened: nothing trimmed yet, the interval starts now."""
        self.trimmed_through = 0
        self.last_trim = time.monotonic()

    def maybe_trim(
        self, conn: apsw.Connection, busy: BusyWait, through: int, settings: DaemonSettings
    ) -> None:
        """Delete harvested capture rows, without queueing behind busy bots.

        A write transaction on the bots' file blocks their writes while it runs. It is tried
        with a short lock budget and deferred when bots are busy; only when it has been
        deferred for `TRIM_OVERDUE` seconds does it wait the full busy timeout, so the capture
        table cannot grow without bound. Each one deletes at most `trim_slice` rows, then the
        lock is let go for as long as it was held: one DELETE of a million rows held the bots'
        writes for about 0.5 s (bench/README.md, "Trim").
        """
        if through <= self.trimmed_through:
            return
        now = time.monotonic()
        if now - self.last_trim < settings.trim_interval or now < self.retry_at:
            return
        overdue = now - self.last_trim > TRIM_OVERDUE
        busy.timeout_ms = settings.busy_timeout_ms if overdue else 20
        try:
            _delete_slices(conn, through, settings.trim_slice)
        except apsw.BusyError:
            log.debug("source %s: trim deferred, database busy", self.source)
            return
        except apsw.FullError as e:
            self._disk_full(e)
            return
        finally:
            busy.timeout_ms = settings.busy_timeout_ms
        if self.error is not None:
            log.info("source %s: capture rows trimmed again", self.source)
            self.error = None
        self.trimmed_through = through
        self.last_trim = time.monotonic()

    def _disk_full(self, e: apsw.FullError) -> None:
        """The bots' disk is full: a DELETE needs journal (or WAL) space. Harvesting goes
        on (it only reads); the rows wait until there is room. Said once, and tried again
        every TRIM_FULL_RETRY s, not at every wake-up."""
        if self.error is None:
            log.warning(
                "source %s: cannot trim %s, the legacy file's disk is full (%s); "
                "harvesting goes on, the trim is retried",
                self.source,
                capture.CHANGES,
                e,
            )
        self.error = (
            f"legacy disk full: cannot trim {capture.CHANGES} ({e}); harvesting goes on, "
            f"the trim is retried every {TRIM_FULL_RETRY:.0f} s"
        )
        self.retry_at = time.monotonic() + TRIM_FULL_RETRY


def _delete_slices(conn: apsw.Connection, through: int, trim_slice: int) -> None:
    """Delete capture rows up to `through`, `trim_slice` rows per write transaction."""
    while True:
        began = time.monotonic()
        with write_transaction(conn):
            lo, top = conn.execute(TRIM_BOUNDS).fetchone()
            # Keep the newest row so the INTEGER PRIMARY KEY never restarts numbering.
            last = min(through, top - 1)
            upto = min(last, lo + trim_slice - 1)
            conn.execute(f"DELETE FROM {capture.CHANGES} WHERE seq <= ?", (upto,))
            crash_point("trim")
        if upto >= last:
            break
        time.sleep(time.monotonic() - began)  # the bots' turn, as long as ours was
