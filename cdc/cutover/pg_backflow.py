"""The way back from a PostgreSQL target: its bots' writes, into the fenced legacy files.

The legacy side is the SQLite backflow's (`cdc.cutover.backflow.Backflow`: one legacy
transaction per file with its checkpoint, no loop, no collateral delete); only reading
the target differs. Its capture (`cdc.postgres.way_back`) is read in the order places
given to committed rows, with each key's row as it is now, in one REPEATABLE READ
snapshot, and each value is turned back into the SQLite value it stands for
(`cdc.postgres.types.from_pg`). The capture rows every legacy file has are deleted.
"""

from __future__ import annotations

import logging

from cdc.cutover.backflow import Backflow
from cdc.cutover.target_capture import BackflowError
from cdc.events import ColumnDef, Op, RowEvent
from cdc.inventory import TableInfo
from cdc.postgres import way_back
from cdc.postgres.connect import connect
from cdc.postgres.types import from_pg

log = logging.getLogger(__name__)

# A column the bots added on the target comes back with this SQLite type (by its own).
_DECL = {
    "bigint": "INTEGER",
    "double precision": "REAL",
    "text": "TEXT",
    "bytea": "BLOB",
    "numeric": "NUMERIC",
}


class PgBackflow(Backflow):
    """`Backflow` reading a PostgreSQL target."""

    def _open_target(self) -> str | None:
        self.tconn = connect(self.path)
        self._pg_tables: dict[str, tuple[TableInfo, list[tuple[str, str]], list[str]]] = {}
        with self.tconn.transaction():
            return way_back.install_id(self.tconn)

    def close(self) -> None:
        self.tconn.close()
        for c in self.lconns.values():
            c.close()
        self.lconns.clear()

    def _read(self, fenced: bool) -> tuple[int, list[tuple[TableInfo, list[RowEvent]]]]:
        t = self.tconn
        with t.transaction():
            self.captured_seq = way_back.assign(t)
        t.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            hi = t.execute(
                f"SELECT max(ord) FROM (SELECT ord FROM {way_back.CHANGES} WHERE ord > %s "
                "ORDER BY ord LIMIT %s) s",
                (self.read_through, self.settings.harvest_batch),
            ).fetchone()[0]
            changed = []
            if hi is not None:
                for name in self.routes:
                    info, cols, key = self._table(name)
                    rows = way_back.read_changes(t, name, cols, key, self.read_through, hi)
                    if rows:
                        changed.append((info, self._events(info, cols, key, rows)))
        finally:
            t.rollback()
        return (hi if hi is not None else self.read_through), changed

    def _table(self, name: str) -> tuple[TableInfo, list[tuple[str, str]], list[str]]:
        """The target table as the legacy side needs it: a keyless legacy table's rowid
        column (made by the DDL) is its event key, not one of its columns. Read each time:
        a bot may ALTER the table (cheap: two catalog reads)."""
        cols = way_back.columns(self.tconn, name)
        if not cols:
            raise BackflowError(f"{self.path}: table {name!r} is missing")
        key = way_back.key_columns(self.tconn, name)
        keyless = self._keyless(name)
        shown = [c for c in cols if not (keyless and c[0] == key[0])]
        info = TableInfo(
            name,
            "table",
            [ColumnDef(n, _DECL.get(ty, "")) for n, ty in shown],
            [] if keyless else key,
        )
        return info, cols, key

    def _keyless(self, name: str) -> bool:
        """Whether `name` is a copy of a keyless legacy table (its key is the rowid)."""
        m = next(iter(self.routes[name].values()))
        info = self._legacy_info(self._legacy(m.source), m.source, m.table)
        return not info.key and m.tag_column is None

    def _events(self, info: TableInfo, cols, key, rows) -> list[RowEvent]:  # noqa: ANN001
        types = dict(cols)
        ktypes = [types[k] for k in key]
        shown = [ty for n, ty in cols if n in set(info.column_names)]
        pick = [i for i, (n, _ty) in enumerate(cols) if n in set(info.column_names)]
        out = []
        for ord_, k, row in rows:
            kv = [from_pg(v, ty) for v, ty in zip(k, ktypes, strict=True)]
            if row is None:
                out.append(RowEvent(Op.DELETE, ord_, kv))
                continue
            vals = [from_pg(row[i], ty) for i, ty in zip(pick, shown, strict=True)]
            out.append(RowEvent(Op.UPSERT, ord_, kv, vals))
        return out

    def _trim(self) -> None:
        low = min(self.applied.values(), default=0)
        if low <= self.trimmed_through:
            return
        with self.tconn.transaction():
            way_back.trim(self.tconn, low)
        self.trimmed_through = low
