"""The way back's refusal: a rolled-back stage's target table whose shape changed under
the fence is kept out of the legacy files (the mirror image of `cdc.moved`).

From the moment `cdc rollback` fences the target, the legacy files are about to be the
live copy again, and the way back (`cdc.backflow`) still has to write the bots' last
changes into them. It reads each change as a key plus the row's image as it is *now*, so
a stale process's DROP + CREATE of a target table would read as deletes of every row the
bots changed, a RENAME would lose them, and a new column would be added to the legacy
table. So while the target is fenced, a target table that was dropped, created again,
renamed, lost its fence or changed shape since the way back first saw it fenced is
refused: none of its changes are written back (they are passed over with the checkpoint,
and its keys stay in `_cdc_touched`, so the rollback's verification finds the table
different and stops), and it is named at ERROR, by `cdc status`, the metrics and `cdc
verify`, as long as the stage is in its rollback window.

The refusals are kept in `state_dir/kept-out/<target>@way-back.json` (a source name
cannot hold `@`), so a restarted daemon goes on refusing. The first shape is only known
from the first look under the fence: a column added while the daemon was down is not
seen (a DROP, a re-creation and a RENAME always are, by the triggers).
"""

from __future__ import annotations

import logging
import time

import apsw

from cdc.capture import triggers as capture
from cdc.inventory import TableInfo, table_info
from cdc.planning.plan import TableMapping
from cdc.stages.kept_out import KeptOut, describe, kept_path, legacy_change, save_kept
from cdc.stages.record import CutoverRecord
from cdc.status_file import read_json

log = logging.getLogger(__name__)


def target_fenced(rec: CutoverRecord) -> bool:
    """The stage's target is fenced for the way back: a rollback between its fence and
    the lifting of the legacy fences."""
    rb = rec.rollback
    return rec.state == "rolling_back" and rb is not None and rb.fence is not None


class TargetKeepOut:
    """One stage's target tables, looked at in each read of the way back."""

    def __init__(self, state_dir: str, rec: CutoverRecord) -> None:
        self.state_dir, self.stage, self.path = state_dir, rec.target, rec.path
        self.name = f"{rec.target}@way-back"
        self.kept: dict[str, KeptOut] = (  # by "source:table" (a merged table has several)
            read_json(kept_path(state_dir, self.name), dict[str, KeptOut]) or {}
        )
        self.shapes: dict[str, TableInfo] = {}  # at the first look under the fence

    def refused(self, conn: apsw.Connection, routes: dict[str, dict], fenced: bool) -> set[str]:
        """The target tables (of `routes`) none of whose changes may flow back now; a
        table that changed under the fence is refused here, for good."""
        if not fenced:
            self.shapes.clear()  # a rollback aborted: the next one looks afresh
            return self._tables(routes)
        tids = capture.installed_tables(conn)
        triggers = dict(
            conn.execute("SELECT name, tbl_name FROM sqlite_schema WHERE type='trigger'")
        )
        tables = {n.lower() for (n,) in conn.execute("SELECT name FROM sqlite_schema")}
        for name, maps in routes.items():
            tid = tids.get(name)
            if name in self._tables(routes) or tid is None:
                continue
            on = triggers.get(capture.trigger_names(tid)[0])
            if name.lower() not in tables:
                why = f"renamed to {on!r}" if on else "dropped"
            else:
                shape = self.shapes.setdefault(name, table_info(conn, name))
                why = legacy_change(conn, tid, name, on, triggers, shape, False)
            if why is not None:
                self._refuse(name, list(maps.values()), why)
        return self._tables(routes)

    def _tables(self, routes: dict[str, dict]) -> set[str]:
        return {k.target_table for k in self.kept.values() if k.target_table in routes}

    def _refuse(self, name: str, maps: list[TableMapping], why: str) -> None:
        """Durable before the way back passes over its changes."""
        for m in maps:
            k = KeptOut(m.source, m.table, self.path, self.stage, name, why, time.time(), "target")
            self.kept.setdefault(f"{m.source}:{m.table}", k)
            log.error(
                "backflow %s: %s",
                self.stage,
                describe(k),
                extra={"source": m.source, "table": m.table},
            )
        save_kept(self.state_dir, self.name, self.kept)
