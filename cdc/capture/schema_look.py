"""The harvester's look at the legacy file's schema: drift, new, lost and rewritten tables.

The bots change their schema while we run. Telling what changed (a new shape, a table
created, dropped, renamed, or dropped and created again, a VACUUM) is a question of its
own, asked at every read transaction and at every start, apart from moving rows; the
answers feed the harvester's state (queued schema frames and resets, held tables). A
mixin, because the answers are that state: the harvester is the only class that uses it.
"""

from __future__ import annotations

import logging

from cdc import shapes
from cdc.capture import triggers as capture
from cdc.events import SnapshotCursor, TableReset
from cdc.inventory import TableInfo, is_internal, schema_version, table_info

log = logging.getLogger("cdc.capture.harvester")  # its lines, named as before


class SchemaLook:
    """Methods of `Harvester` (`cdc.capture.harvester`), which holds the state they use."""

    def _moved_while_away(
        self, infos: list[TableInfo], cursors: dict[str, SnapshotCursor]
    ) -> dict[str, str]:
        """Tables whose copy must be made again because of what happened while no
        harvester looked (`cdc.shapes`; a VACUUM, for tables identified by rowid, also
        when the installation had no VACUUM mark yet): name -> why."""
        vacuumed = capture.vacuumed(self.conn) or not capture.has_vacuum_mark(self.conn)
        widths, width = capture.widths(self.conn), capture.key_width
        out = {}
        for info in infos:
            c = cursors.get(info.name)
            if c is None:
                continue
            why = shapes.recopy_reason(c.shape, info)
            if why is None and vacuumed and not info.key and (c.done or c.after is not None):
                why = "a VACUUM may have given its rows new rowids"
            if why is None and widths.get(info.name, width(info)) != width(info):
                why = "its capture rows now tell rows with a NULL key apart"
            if why is not None:
                out[info.name] = why
        return out

    def _refresh_schemas(self, force: bool = False) -> None:
        """Called inside a read transaction: queue a schema frame for every changed table,
        and notice tables that appeared, vanished, or lost their triggers (a bot's DROP +
        CREATE rewrite); `repair_capture` acts on the last, outside this read."""
        version = schema_version(self.conn)
        if version == self._schema_version and not force:
            return
        # a VACUUM changes the schema version too; seen once, until the mark is back
        vacuumed = not self._vacuum_hold and capture.vacuumed(self.conn)
        names = {
            n.lower(): n
            for (n,) in self.conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")
        }
        triggers = dict(
            self.conn.execute("SELECT name, tbl_name FROM sqlite_schema WHERE type='trigger'")
        )
        if self._names is not None:
            with self._appeared_lock:
                self.appeared |= {
                    n for low, n in names.items() if low not in self._names and not is_internal(n)
                }
        self._names = set(names)
        for tid, name in self.tids.items():
            on = triggers.get(capture.trigger_names(tid)[0])
            if name.lower() not in names:
                self._note_lost(name, on)
                continue
            if self.keep_out is not None and self.keep_out.look(
                self, tid, name, on, triggers, vacuumed
            ):
                continue  # cut over: its legacy side must not reach the target (cdc.moved)
            self._look_at(name, on, force, vacuumed)
        self._vacuum_hold |= vacuumed
        self._schema_version = version

    def _note_lost(self, name: str, on: str | None) -> None:
        """A captured table is gone (its triggers, if any, now on table `on`)."""
        if name in self.lost:
            return
        self.lost[name] = f"renamed to {on!r}" if on else "dropped"
        log.error(
            "source %s: captured table %s was %s: capture of it stopped, its "
            "target table keeps the rows it had (cdc status names it)",
            self.plan.name,
            name,
            self.lost[name],
            extra={"source": self.plan.name, "table": name},
        )
        if self.keep_out is not None:
            self.keep_out.refuse(name, self.lost[name])

    def _look_at(self, name: str, on: str | None, force: bool, vacuumed: bool) -> None:
        """A captured table that is here: queue its reset and new shape if it needs them."""
        if on is None or on.lower() != name.lower():
            self._recapture.add(name)  # its triggers went with a DROP
        self.lost.pop(name, None)
        info = table_info(self.conn, name)
        old = self.infos.get(name)
        if name in self._recapture:  # `repair_capture` resets it again, durably first
            why = "dropped and created again"
        else:
            why = self._recopy_reason(old, info, vacuumed)
        if why is not None:  # before the new schema: the target forgets, then reshapes
            self._pending_schemas.append(TableReset(self.plan.name, name, why))
            self._say_reset(self._pending_schemas[-1])
            if shapes.probes_changed(why) or not info.key or name in self._recapture:
                self._hold.add(name)
        if force or old != info or why is not None:
            if old is not None:
                log.info(
                    "source %s: table %s changed shape",
                    self.plan.name,
                    name,
                    extra={"source": self.plan.name, "table": name},
                )
            self.infos[name] = info
            self._pending_schemas.append(info.to_schema(self.plan.name))

    def _recopy_reason(self, old: TableInfo | None, info: TableInfo, vacuumed: bool) -> str | None:
        """Why a table must be copied again now (`cdc.shapes`), or None. A VACUUM renumbers
        the rowids of a table without a key; a table whose copy has not begun yet needs no
        reset for it (its copy reads the new numbers)."""
        why = None if old is None else shapes.recopy_reason(old, info)
        if why is None and vacuumed and not info.key:
            why = "a VACUUM gave its rows new rowids"
        return why

    def take_appeared(self) -> set[str]:
        """Tables created since the last call (the daemon's thread asks; ours adds)."""
        with self._appeared_lock:
            got, self.appeared = self.appeared, set()
        return got
