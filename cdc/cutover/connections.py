"""The connections a cutover's steps under the fence use, all opened before it.

A new SQLite connection first parses the file's whole schema, and a target with the way
back's capture triggers (6 per table) took ~4 ms for 65 tables, once per connection, all
of it pause when opened under the fence.
"""

from __future__ import annotations

import apsw

from cdc.config import Config
from cdc.planning.plan import Plan, TableMapping
from cdc.sqlconn import open_legacy, open_target
from verifier.digest import attach_target


class Connections:
    """Connections for the steps under the fence, opened before it: a new SQLite connection
    first parses the file's whole schema, and a target with the way back's capture
    triggers (6 per table) took ~4 ms for 65 tables, once per connection, all of it pause.
    One target writer, and per legacy file of the stage a connection (it fences, then
    reads), a target reader, and a read-only one with the target attached, where the proof
    under the fence compares both sides in one query (`verifier.digest.join_check`)."""

    def __init__(self, cfg: Config, plan: Plan, target: str, tables: list[TableMapping]):
        busy = cfg.daemon.busy_timeout_ms
        self.closing: list[apsw.Connection] = []
        self.writer = self._keep(open_target(plan.targets[target], busy))
        self.legacy = {}
        self.target = {}
        self.joined = {}
        self.cpu0: float | None = None  # process CPU time when the first fence began
        self.prepared: dict = {}  # the proof's joins, built before the fence (`fence_proof`)
        for source in sorted({m.source for m in tables}):
            path = plan.source(source).path
            self.legacy[source] = self._keep(open_legacy(path, busy))
            t = apsw.Connection(plan.targets[target], flags=apsw.SQLITE_OPEN_READONLY)
            t.set_busy_timeout(busy)
            self.target[source] = self._keep(t)
            self.joined[source] = self._joined(path, plan.targets[target], busy)

    def _joined(self, legacy: str, target: str, busy: int) -> apsw.Connection | None:
        """None where SQLite will not attach the target (a UTF-16 legacy file: attached
        files must share the main file's text encoding): the proof digests instead."""
        try:
            return self._keep(attach_target(legacy, target, busy))
        except apsw.Error:
            return None

    def _keep(self, conn: apsw.Connection) -> apsw.Connection:
        self.closing.append(conn)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # parse the schema now
        return conn

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *_exc) -> None:  # noqa: ANN002
        for c in self.closing:
            c.close()
