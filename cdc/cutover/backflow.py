"""The rollback window's way back: the bots' writes to a cut-over target, into the legacy files.

When `cdc cutover T` hands a stage to the bots, the target's tables have the same capture
triggers the legacy files have (`cdc.capture`, installed in the target before the fence);
the replicator removes the capture rows of its own writes there in the same transaction,
as the way back does in the legacy files, so only the bots' writes are read back. The daemon's
backflow reads them like a harvester (one short read transaction: capture rows and the
rows' images as they are now) and writes them into the fenced legacy tables, through the
fence (our connections pass it), so that `cdc rollback T` can give the bots their old files
back with every write they made since.

Each legacy file is written in one transaction that also
- records how far it got (`_cdc_meta` key `backflow:<target>`): a kill -9 anywhere applies
  nothing twice and loses nothing, like the forward checkpoint in the target;
- deletes the legacy capture rows its own writes made for the stage's tables. The forward
  harvester never sees them, so no change can travel back and forth (no loop), and no
  connection or row needs marking. Capture rows of other tables stay: a bot's own trigger
  may write one, and that is a real change that must flow forward.

Target capture rows are trimmed once every legacy file of the stage has them; their keys
are kept (`_cdc_touched`), so that a rollback verifies only the keys the bots changed. A row of a
merged table whose tag names no source cannot be placed: the backflow of that stage stops
there and says so (status), and nothing after it is skipped.
"""

from __future__ import annotations

import logging
import time

import apsw
import msgspec

from cdc import exact_text
from cdc.capture import changes
from cdc.capture import triggers as capture
from cdc.config import Config
from cdc.cutover.target_capture import TOUCHED, BackflowError, key_columns
from cdc.events import Op, RowEvent
from cdc.inventory import TableInfo, schema_version, table_info
from cdc.planning.plan import Plan, TableMapping
from cdc.postgres import way_back
from cdc.postgres.connect import connect
from cdc.postgres.dsn import is_postgres
from cdc.sqlconn import (
    allow_writes,
    open_legacy,
    open_target,
    read_transaction,
    set_busy_timeout,
    write_transaction,
)
from cdc.sqlident import q
from cdc.stages.backflow_kept import TargetKeepOut
from cdc.stages.record import CutoverRecord
from replicator.apply import statements, write_null_key_rows
from replicator.target import AppliedShape

log = logging.getLogger(__name__)

ACTIVE = ("done", "rolling_back")  # stages whose target writes flow back
TRIM_BUDGET_MS = 20  # a target trim waits no longer than this for the bots' writes


class Checkpoint(msgspec.Struct, frozen=True):
    """How far one legacy file has the target's changes (in that file's `_cdc_meta`)."""

    install_id: str
    seq: int


_CHECKPOINT = msgspec.json.Decoder(Checkpoint)  # at import: see cdc.fence


def checkpoint_key(target: str) -> str:
    return f"backflow:{target}"


def read_checkpoint(conn: apsw.Connection, target: str, install_id: str) -> int:
    """The target capture sequence this legacy file has applied (0: none, or a checkpoint
    of an earlier installation of the target's capture)."""
    if not capture.is_installed(conn):
        return 0
    row = conn.execute(
        f"SELECT v FROM {capture.META} WHERE k=?", (checkpoint_key(target),)
    ).fetchone()
    if row is None:
        return 0
    cp = _CHECKPOINT.decode(row[0])
    return cp.seq if cp.install_id == install_id else 0


class Backflow:
    """One cut-over stage: its target's capture table, read in order, into its legacy files."""

    def __init__(self, cfg: Config, plan: Plan, rec: CutoverRecord) -> None:
        self.cfg = cfg
        self.target = rec.target
        self.path = rec.path
        self.settings = cfg.daemon
        maps = plan.stage(rec.target)
        self.paths = {m.source: plan.source(m.source).path for m in maps}
        self.routes: dict[str, dict[str | None, TableMapping]] = {}
        for m in maps:
            self.routes.setdefault(m.target_table, {})[m.tag] = m
        self.install_id = self._open_target()
        if self.install_id is None:
            raise BackflowError(
                f"{self.path}: the target's tables are not captured (cut over before the "
                "rollback window existed?)",
                hint=f"run `cdc cutover {rec.target}` again to install it",
            )
        self.keep_out = TargetKeepOut(cfg.state_dir, rec)
        self.lconns: dict[str, apsw.Connection] = {}
        self.applied = {
            s: read_checkpoint(self._legacy(s), self.target, self.install_id)
            for s in sorted(self.paths)
        }
        self.read_through = min(self.applied.values(), default=0)
        self.trimmed_through = 0
        self.captured_seq = 0
        self.events = 0
        self._tinfos: dict[str, TableInfo] = {}
        self._tversion = -1
        self._linfos: dict[tuple[str, str], TableInfo] = {}
        self._lversion: dict[str, int] = {}
        self._last_flush = time.monotonic()

    def _open_target(self) -> str | None:
        """Open the target; its capture's install id (None: not captured)."""
        self.tconn = open_target(self.path, self.settings.busy_timeout_ms)
        self.tbusy = set_busy_timeout(self.tconn, self.settings.busy_timeout_ms)
        return capture.install_id(self.tconn)

    def close(self) -> None:
        for c in [self.tconn, *self.lconns.values()]:
            c.close()
        self.lconns.clear()

    def _legacy(self, source: str) -> apsw.Connection:
        conn = self.lconns.get(source)
        if conn is None:
            conn = open_legacy(self.paths[source], self.settings.busy_timeout_ms)
            allow_writes(conn)  # the legacy tables are fenced for the bots, not for us
            # A row we write back with REPLACE then fires the application's DELETE triggers
            # for the row it replaces (an FTS index kept by triggers stays exact), as the
            # bot's UPDATE in the target fired them there.
            conn.execute("PRAGMA recursive_triggers = ON")
            self.lconns[source] = conn
        return conn

    @property
    def behind(self) -> int:
        """Target changes not yet in every legacy file (sequence numbers, not rows)."""
        return max(0, self.captured_seq - min(self.applied.values(), default=self.captured_seq))

    # -- one step ----------------------------------------------------------------------------
    def step(self, eager: bool = False, fenced: bool = False) -> int:
        """Move one batch; returns events written. `eager` (a rollback waits) also brings
        the checkpoints of files with nothing to apply up to date at once. `fenced`: the
        target is fenced by a rollback, and a table changed under the fence is passed
        over (`cdc.backflow_kept`)."""
        through, changed = self._read(fenced)
        per_source = self._route(changed)
        moved = 0
        flush = eager or time.monotonic() - self._last_flush >= self.settings.trim_interval
        for source in sorted(self.paths):
            done = self.applied[source]
            items = [
                (m, info, [e for e in evs if e.seq > done])
                for m, info, evs in per_source.get(source, [])
            ]
            items = [i for i in items if i[2]]
            if items or (flush and done < through):
                moved += self._apply(source, items, through)
        self.read_through = through
        self.events += moved
        if flush:
            self._last_flush = time.monotonic()
            self._trim()
        return moved

    def _read(self, fenced: bool) -> tuple[int, list[tuple[TableInfo, list[RowEvent]]]]:
        """The target's next batch of changes: how far it reaches, and per target table its
        events (rows as they are now), in one read transaction."""
        t = self.tconn
        with read_transaction(t):
            tids = capture.installed_tables(t)
            hi, top = t.execute(
                f"SELECT (SELECT max(seq) FROM (SELECT seq FROM {capture.CHANGES} WHERE seq > ? "
                f"ORDER BY seq LIMIT ?)), (SELECT coalesce(max(seq), 0) FROM {capture.CHANGES})",
                (self.read_through, self.settings.harvest_batch),
            ).fetchone()
            self.captured_seq = top
            changed: list[tuple[TableInfo, list[RowEvent]]] = []
            refused = self.keep_out.refused(t, self.routes, fenced)  # cdc.backflow_kept
            if hi is not None:
                self._refresh_target_infos()
                for name in [n for n in self.routes if n not in refused]:
                    tid = tids.get(name)
                    if tid is None:
                        raise BackflowError(f"{self.path}: table {name!r} is not captured")
                    evs = changes.read_changes(t, self._tinfos[name], tid, self.read_through, hi)
                    if evs:
                        changed.append((self._tinfos[name], evs))
        return (hi if hi is not None else self.read_through), changed

    def _refresh_target_infos(self) -> None:
        version = schema_version(self.tconn)
        if version != self._tversion:
            self._tinfos = {n: table_info(self.tconn, n) for n in self.routes}
            self._tversion = version

    def _route(self, changed):  # noqa: ANN001, ANN202
        """Target table events -> per source: (mapping, target table info, events)."""
        out: dict[str, list[tuple[TableMapping, TableInfo, list[RowEvent]]]] = {}
        for info, evs in changed:
            routes = self.routes[info.name]
            if None in routes:  # copied: one source
                m = routes[None]
                out.setdefault(m.source, []).append((m, info, evs))
                continue
            by_tag: dict[object, list[RowEvent]] = {}
            for e in evs:
                by_tag.setdefault(e.key[0], []).append(e)
            for tag, tevs in by_tag.items():
                m = routes.get(tag)
                if m is None:
                    raise BackflowError(
                        f"{self.path}: {len(tevs)} row(s) of {info.name} have "
                        f"{next(iter(routes.values())).tag_column} = {tag!r}, which names no "
                        f"legacy source (known: {', '.join(sorted(map(str, routes)))})",
                        hint="fix the tag of those rows in the target; the way back waits for it",
                    )
                out.setdefault(m.source, []).append((m, info, tevs))
        return out

    def _apply(self, source: str, items, through: int) -> int:  # noqa: ANN001
        """One legacy transaction: rows, removal of their own capture rows, checkpoint."""
        conn = self._legacy(source)
        n = 0
        try:
            with write_transaction(conn):
                before = capture.top_seq(conn) or 0
                ltids = capture.installed_tables(conn)
                for m, tinfo, evs in items:
                    n += self._write_rows(conn, source, m, tinfo, evs)
                    self._no_collateral_deletes(conn, source, m, evs, ltids, before)
                mine = [ltids[m.table] for m in self._tables_of(source) if m.table in ltids]
                capture.drop_own_changes(conn, before, mine)
                conn.execute(
                    f"INSERT OR REPLACE INTO {capture.META}(k, v) VALUES (?, ?)",
                    (
                        checkpoint_key(self.target),
                        msgspec.json.encode(Checkpoint(self.install_id, through)).decode(),
                    ),
                )
        except apsw.BusyError:
            raise
        except apsw.Error as e:
            raise BackflowError(f"{self.paths[source]}: writing back failed: {e}") from e
        self.applied[source] = through
        return n

    def _no_collateral_deletes(self, conn, source, m, evs, ltids, before) -> None:  # noqa: ANN001
        """A REPLACE may delete a legacy row through a UNIQUE constraint. That is right when
        the target deleted it too, but a merged target table has none of the legacy
        constraints, so it may hold rows the legacy table cannot: writing back would then
        silently drop one. The capture rows our own writes made (REPLACE probes, deletes)
        name every key touched; each must still be there unless this batch deletes it (a
        key of the batch too: its upsert may have come before the REPLACE that removed
        it). Otherwise the whole transaction is refused."""
        tid = ltids.get(m.table)
        if tid is None:
            raise BackflowError(f"{self.paths[source]}: capture of {m.table!r} is missing")
        info = self._legacy_info(conn, source, m.table)
        width = capture.key_width(info)
        skip = 1 if m.tag_column else 0
        deleted = {exact_text.pack(list(e.key[skip:])) for e in evs if e.op is Op.DELETE}
        kcols = [f"k{i + 1}" for i in range(width)]
        kexpr = [q(k) for k in info.key] or [info.rowid_alias()]
        for key in exact_text.select(
            conn,
            kcols,
            f"FROM {capture.CHANGES} WHERE seq > ? AND tid = ?",
            (before, tid),
            distinct=True,
        ):
            key = list(key)
            if info.null_key and key[-1] is None:
                key.pop()  # the rowid comes only with a key that holds NULL
            if exact_text.pack(key) in deleted:
                continue
            if len(key) > len(kexpr):  # a NULL key: its rowid names the row
                where, binds = f"{info.rowid_alias()} = ?", [key[-1]]
            else:
                where = " AND ".join(
                    f"{k} IS {exact_text.mark(v)}" for k, v in zip(kexpr, key, strict=True)
                )
                binds = exact_text.binds(key)
            present = f"SELECT 1 FROM {q(m.table)} WHERE {where}"
            if conn.execute(present, binds).fetchone() is None:
                raise BackflowError(
                    f"{self.paths[source]}: writing {self.target}'s changes back into "
                    f"{m.table} would delete its row {list(key)} through a UNIQUE constraint "
                    f"that {m.target_table} in the target does not have",
                    hint=f"make the rows of {m.target_table} (tag {m.tag!r}) unique the way "
                    f"{m.table} needs; the way back resumes by itself",
                )

    def _tables_of(self, source: str) -> list[TableMapping]:
        return [m for r in self.routes.values() for m in r.values() if m.source == source]

    def _legacy_info(self, conn: apsw.Connection, source: str, table: str) -> TableInfo:
        version = schema_version(conn)
        if self._lversion.get(source) != version:
            self._linfos = {k: v for k, v in self._linfos.items() if k[0] != source}
            self._lversion[source] = version
        info = self._linfos.get((source, table))
        if info is None:
            info = self._linfos[(source, table)] = table_info(conn, table)
            if not info.columns:
                raise BackflowError(f"{self.paths[source]}: legacy table {table!r} is gone")
        return info

    def _add_columns(
        self, conn: apsw.Connection, source: str, m: TableMapping, tinfo: TableInfo, evs
    ) -> tuple[TableInfo, set[str]]:  # noqa: ANN001
        """The legacy table's shape, and its column names (lower case), once every column
        a value of `evs` must go to is there. A column the legacy table lacks (a bot's
        ALTER on the target, or another source's column of a merged table) is added when
        a value must go there, never dropped."""
        linfo = self._legacy_info(conn, source, m.table)
        if m.tag_column and not linfo.key:
            raise BackflowError(f"{self.path}: merged table {tinfo.name} needs a declared key")
        have = {c.lower() for c in linfo.column_names}
        for i, c in enumerate(tinfo.column_names):
            if (
                c.lower() not in have
                and c != m.tag_column
                and any(e.op is not Op.DELETE and e.row[i] is not None for e in evs)
            ):
                typ = next(x.decl_type for x in tinfo.columns if x.name == c)
                # unquoted by PRAGMA table_info: quoted back, never pasted (see replicator.target)
                decl = q(typ) if typ and not m.tag_column else ""
                conn.execute(f"ALTER TABLE {q(m.table)} ADD COLUMN {q(c)} {decl}")
                log.info("backflow %s: added column %s.%s", self.target, m.table, c)
                linfo = self._legacy_info(conn, source, m.table)
                have.add(c.lower())
        return linfo, have

    def _write_rows(
        self, conn: apsw.Connection, source: str, m: TableMapping, tinfo: TableInfo, evs
    ) -> int:  # noqa: ANN001
        tcols = tinfo.column_names
        skip = 1 if m.tag_column else 0  # a merged table's key starts with the tag
        linfo, have = self._add_columns(conn, source, m, tinfo, evs)
        pick = [i for i, c in enumerate(tcols) if c.lower() in have and c != m.tag_column]
        shape = AppliedShape(
            columns=[tcols[i] for i in pick],
            key=list(linfo.key),
            target_table=m.table,
            rowid_alias=linfo.rowid_alias(),
            other_unique=bool(linfo.unique_sets or linfo.unique_exprs),
        )
        upsert_sql, delete_sql = statements(shape)
        width = skip + len(linfo.key)
        nulls = [e for e in evs if linfo.key and len(e.key) > width]
        if nulls and skip:
            raise BackflowError(
                f"{self.path}: merged table {tinfo.name} has a row whose key holds NULL: "
                "its legacy table cannot be told which row it is"
            )
        if nulls:  # at the rowid the legacy row has (the target kept it)
            evs = [e for e in evs if len(e.key) == width]
        dels = [e.key[skip:] for e in evs if e.op is Op.DELETE]
        if linfo.key:
            ups = [[e.row[i] for i in pick] for e in evs if e.op is not Op.DELETE]
        else:  # identity is the rowid, which the target kept
            ups = [[*e.key, *(e.row[i] for i in pick)] for e in evs if e.op is not Op.DELETE]
        if dels:  # a TEXT that is not UTF-8 is written as TEXT (cdc.exact_text)
            exact_text.executemany(conn, delete_sql, dels)
        if nulls:
            write_null_key_rows(
                conn,
                shape,
                [
                    e
                    if e.op is Op.DELETE
                    else RowEvent(e.op, e.seq, e.key, [e.row[i] for i in pick])
                    for e in nulls
                ],
            )
        if ups:
            exact_text.executemany(conn, upsert_sql, ups)
        return len(evs) + len(nulls)

    def _trim(self) -> None:
        """Delete target capture rows every legacy file has, without queueing behind bots."""
        low = min(self.applied.values(), default=0)
        if low <= self.trimmed_through:
            return
        self.tbusy.timeout_ms = TRIM_BUDGET_MS
        try:
            with write_transaction(self.tconn):
                cols = ", ".join(["tid", *(q(k) for k in key_columns(self.tconn, TOUCHED))])
                where = f"seq <= ? AND seq < (SELECT max(seq) FROM {capture.CHANGES})"
                if cols != "tid":  # the keys stay known until the stage is proven again
                    self.tconn.execute(
                        f"INSERT OR IGNORE INTO {TOUCHED}({cols}) "
                        f"SELECT DISTINCT {cols} FROM {capture.CHANGES} WHERE {where}",
                        (low,),
                    )
                # the newest row stays: the sequence never restarts
                self.tconn.execute(f"DELETE FROM {capture.CHANGES} WHERE {where}", (low,))
            self.trimmed_through = low
        except apsw.BusyError:
            log.debug("backflow %s: trim deferred, target busy", self.target)
        finally:
            self.tbusy.timeout_ms = self.settings.busy_timeout_ms


def legacy_applied(cfg: Config, plan: Plan, target: str) -> dict[str, int]:
    """Each legacy file's backflow checkpoint, read from the files (for `cdc rollback`)."""
    iid = target_install_id(cfg, plan.targets[target])
    out = {}
    for source in sorted({m.source for m in plan.stage(target)}):
        conn = open_legacy(plan.source(source).path, cfg.daemon.busy_timeout_ms, readonly=True)
        try:
            out[source] = read_checkpoint(conn, target, iid)
        finally:
            conn.close()
    return out


def target_install_id(cfg: Config, path: str) -> str:
    """The install id of a target's capture ("" when it has none)."""
    if is_postgres(path):
        with connect(path, autocommit=True) as conn:
            return way_back.install_id(conn) or ""
    tconn = open_target(path, cfg.daemon.busy_timeout_ms)
    try:
        return capture.install_id(tconn) or ""
    finally:
        tconn.close()
