"""The two sides of one mapped table, read in the same key order, and where each side is.

The legacy side is read with its capture position: the newest capture sequence in the
same read transaction, and the keys of every change after a given sequence (the changes
the target may not have yet). The target side is read with the newest capture sequence
of that source the replicator applied (`_cdc_source_applied`, written in the apply
transaction). Those two positions are what makes a comparison meaningful under load.

Both sides are ordered by the legacy key with the legacy key's collation, applied to the
target explicitly: a merged target table is declared without types or collations, and a
different order would put rows in different chunks.
"""

from __future__ import annotations

import apsw
import msgspec

from cdc import exact_text
from cdc.capture import triggers as capture
from cdc.changelog import bigrows
from cdc.inventory import TableInfo, table_info
from cdc.inventory import key_collations as inventory_key_collations
from cdc.planning.plan import TableMapping
from cdc.sqlident import q
from checkpoints.store import SNAPSHOTS, SOURCES
from replicator.target import SCHEMAS, AppliedShape
from verifier.values import encode

_shape_decoder = msgspec.msgpack.Decoder(AppliedShape)
CONSUMER = "replicator"


class TargetPosition(msgspec.Struct, frozen=True):
    """What the target holds of one source table, read in one transaction with its rows."""

    install_id: str | None
    applied_seq: int
    snapshot_done: bool
    shape: AppliedShape | None


class SourcePosition(msgspec.Struct, frozen=True):
    """The legacy side's capture position, read in one transaction with its rows.

    `complete` is False when capture rows after the target's position were already trimmed
    (logged, not yet applied): the keys in flight are then unknown and the read proves
    nothing.
    """

    install_id: str | None
    seq: int
    complete: bool
    in_flight: frozenset[bytes]  # encoded keys changed after the target's position


def key_collations(conn: apsw.Connection, info: TableInfo) -> list[str] | None:
    """Collation of each declared key column (`cdc.inventory.key_collations`)."""
    return inventory_key_collations(conn, info.name, info.key)


class TableSides:
    """SQL for one mapping, built from the live legacy shape and the applied target shape."""

    def __init__(
        self,
        m: TableMapping,
        info: TableInfo,
        shape: AppliedShape,
        collations: list[str] | None,
        tid: int,
    ) -> None:
        self.m, self.info, self.shape, self.tid = m, info, shape, tid
        skeys = [q(k) for k in info.key] or [info.rowid_alias()]
        tkeys = [q(k) for k in shape.key] or [shape.rowid_alias]
        self.width = len(skeys)
        colls = [("" if c == "BINARY" else f" COLLATE {q(c)}") for c in collations or []]
        colls = colls or [""] * self.width
        self.skeys = [k + c for k, c in zip(skeys, colls, strict=True)]
        self.tkeys = [k + c for k, c in zip(tkeys, colls, strict=True)]
        # Rows are read by `bigrows.read_digested`: any width, a big BLOB as its digest.
        self._cols = [q(c) for c in shape.columns]
        self._src_keys, self._tgt_keys = skeys, tkeys
        self._src_rowid = None if info.without_rowid else info.rowid_alias()
        self._tgt_rowid = None if info.without_rowid else shape.rowid_alias
        self._tag = (f"{q(shape.tag_column)} IS ?", [shape.tag]) if shape.tag_column else (None, [])
        self._src_point = " AND ".join(f"{k} IS ?" for k in skeys)
        self._tgt_point = " AND ".join(f"{k} IS ?" for k in tkeys)
        # SQLite lets a declared, non-INTEGER primary key of a rowid table hold NULL (any
        # number of times); such rows fall outside every key range and are read apart.
        self.nullable_key = collations is not None and not info.without_rowid
        self._src_null = " OR ".join(f"{k} IS NULL" for k in skeys)
        self._tgt_null = " OR ".join(f"{k} IS NULL" for k in tkeys)
        # the declared key only: a NULL key's rowid (`capture.key_exprs`) is not compared
        self._kcols = [f"k{i + 1}" for i in range(self.width)]
        self._inflight_tail = f"FROM {capture.CHANGES} WHERE seq > ? AND tid = ?"

    @property
    def columns(self) -> list[str]:
        return list(self.shape.columns)

    def _range(self, target: bool, lo, hi) -> tuple[list[str], list]:  # noqa: ANN001
        keys = self.tkeys if target else self.skeys
        conds, args = [], []
        if self.nullable_key:  # read apart (`*_null_rows`), never inside a range
            conds.append(f"NOT ({self._tgt_null if target else self._src_null})")
        if lo is not None:
            conds.append(f"({', '.join(keys)}) > ({exact_text.marks(lo)})")
            args += exact_text.binds(lo)
        if hi is not None:
            conds.append(f"({', '.join(keys)}) <= ({exact_text.marks(hi)})")
            args += exact_text.binds(hi)
        return conds, args

    # -- legacy side (call inside a read transaction) ----------------------------------------
    def source_bound(self, conn: apsw.Connection, lo, n: int):  # noqa: ANN001
        """The key `n` rows after `lo`, or None when fewer remain (the chunk runs to the end)."""
        conds, args = self._range(False, lo, None)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        row = exact_text.fetchone(
            conn,
            self.skeys,
            f"FROM {q(self.info.name)}{where} "
            f"ORDER BY {', '.join(self.skeys)} LIMIT 1 OFFSET {int(n) - 1}",
            args,
        )
        return list(row) if row else None

    def source_rows(self, conn: apsw.Connection, lo, hi) -> list[tuple]:  # noqa: ANN001
        conds, args = self._range(False, lo, hi)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return self._source(conn, f"{where} ORDER BY {', '.join(self.skeys)}", args)

    def _source(self, conn: apsw.Connection, tail: str, args) -> list[tuple]:  # noqa: ANN001
        return bigrows.read_digested(
            conn,
            self.info.name,
            self._src_rowid,
            self._src_keys,
            self._cols,
            self.shape.columns,
            f"FROM {q(self.info.name)}{tail}",
            args,
        )

    def _target(self, conn: apsw.Connection, tail: str, args) -> list[tuple]:  # noqa: ANN001
        return bigrows.read_digested(
            conn,
            self.shape.target_table,
            self._tgt_rowid,
            self._tgt_keys,
            self._cols,
            self.shape.columns,
            f"FROM {q(self.shape.target_table)}{tail}",
            args,
        )

    def source_count(self, conn: apsw.Connection) -> int:
        return conn.execute(f"SELECT count(*) FROM {q(self.info.name)}").fetchone()[0]

    def target_count(self, conn: apsw.Connection) -> int:
        tag_cond, tag_args = self._tag
        where = f" WHERE {tag_cond}" if tag_cond else ""
        sql = f"SELECT count(*) FROM {q(self.shape.target_table)}{where}"
        return conn.execute(sql, tag_args).fetchone()[0]

    def source_null_rows(self, conn: apsw.Connection) -> list[tuple]:
        # ordered, so that a wide table's slices line up (`bigrows.select_wide`)
        return self._source(conn, f" WHERE {self._src_null} ORDER BY {self._src_rowid}", ())

    def source_point(self, conn: apsw.Connection, key: list) -> tuple | None:
        where = _point(self._src_keys, key) if exact_text.has_raw(key) else self._src_point
        rows = self._source(conn, f" WHERE {where}", exact_text.binds(key))
        return rows[0] if rows else None

    def live_columns(self, conn: apsw.Connection) -> list[str]:
        return table_info(conn, self.info.name).column_names

    def source_position(self, conn: apsw.Connection, after_seq: int) -> SourcePosition:
        lo, hi = conn.execute(f"SELECT min(seq), max(seq) FROM {capture.CHANGES}").fetchone()
        row = conn.execute(f"SELECT v FROM {capture.META} WHERE k='install_id'").fetchone()
        iid = row[0] if row else None
        hi = hi or 0
        # The table keeps its newest row, and trims only a prefix, so every sequence after
        # `after_seq` is still here exactly when the oldest row left is at most one past it.
        complete = hi <= after_seq or (lo is not None and lo <= after_seq + 1)
        changed = exact_text.select(conn, self._kcols, self._inflight_tail, (after_seq, self.tid))
        keys = frozenset(encode_key(r) for r in changed)
        return SourcePosition(iid, hi, complete, keys)

    # -- both sides in one connection: the target attached as `schema` (the fence proof) ----
    def join_sql(self, schema: str, big: int, go: bool = True) -> tuple[str, list]:
        """One query over both quiet sides: the legacy and target row counts (NULL keys
        apart), the rows joined on the key, and in one figure how many are exactly equal,
        key and every column (`exact_same`), plus 2^32 for each that could not be judged
        (a BLOB over `big` bytes: the caller reads such a table its own way).
        `go` False: the same statement, reading nothing (its first argument is 0), to have
        SQLite compile it ahead (`verifier.digest.compile_join`)."""
        tag_cond, tag_args = self._tag
        keys = list(zip(self._src_keys, self._tgt_keys, strict=True))
        pairs = [(f"s.{sk}", f"t.{tk}") for sk, tk in keys if sk not in self._cols]
        pairs += [(f"s.{c}", f"t.{c}") for c in self._cols]
        on = " AND ".join(
            [f"t.{tk} = s.{sk}" for sk, tk in keys] + ([f"t.{tag_cond}"] if tag_cond else [])
        )
        same = " AND ".join(exact_same(x, y, big) for x, y in pairs)
        src_conds, tgt_conds, join_conds = ["?1"], ["?1"], ["?1"]
        if tag_cond:
            tgt_conds.append(tag_cond.replace("?", "?2"))
            on = on.replace("?", "?2")
        if self.nullable_key:
            src_conds.append(f"NOT ({self._src_null})")
            tgt_conds.append(f"NOT ({self._tgt_null})")
            join_conds.append(f"NOT ({' OR '.join(f's.{k} IS NULL' for k in self._src_keys)})")
        table, target = f"main.{q(self.info.name)}", f"{schema}.{q(self.shape.target_table)}"
        sql = (
            f"SELECT (SELECT count(*) FROM {table} WHERE {' AND '.join(src_conds)}), "
            f"(SELECT count(*) FROM {target} WHERE {' AND '.join(tgt_conds)}), "
            # judged once per row: 1 equal, 0 not, NULL not judged (counted above 2^32)
            f"count(*), sum(CASE {same} WHEN 1 THEN 1 WHEN 0 THEN 0 ELSE {1 << 32} END) "
            f"FROM {table} s JOIN {target} t ON {on} WHERE {' AND '.join(join_conds)}"
        )
        return sql, [int(go)] + tag_args

    # -- target side (call inside a read transaction) ----------------------------------------
    def target_rows(self, conn: apsw.Connection, lo, hi, cap: int) -> list[tuple]:  # noqa: ANN001
        conds, args = self._range(True, lo, hi)
        tag_cond, tag_args = self._tag
        if tag_cond:
            conds.insert(0, tag_cond)
            args = tag_args + args
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return self._target(
            conn, f"{where} ORDER BY {', '.join(self.tkeys)} LIMIT {int(cap)}", args
        )

    def target_null_rows(self, conn: apsw.Connection) -> list[tuple]:
        tag_cond, tag_args = self._tag
        where = f"{tag_cond} AND ({self._tgt_null})" if tag_cond else self._tgt_null
        return self._target(conn, f" WHERE {where} ORDER BY {self.shape.rowid_alias}", tag_args)

    def target_point(self, conn: apsw.Connection, key: list) -> tuple | None:
        tag_cond, tag_args = self._tag
        point = _point(self._tgt_keys, key) if exact_text.has_raw(key) else self._tgt_point
        where = f"{tag_cond} AND {point}" if tag_cond else point
        rows = self._target(conn, f" WHERE {where}", tag_args + exact_text.binds(key))
        return rows[0] if rows else None


def _point(keys: list[str], key: list) -> str:
    """`keys` IS `key`, a TEXT that is not UTF-8 bound as TEXT (`cdc.exact_text`)."""
    return " AND ".join(f"{k} IS {exact_text.mark(v)}" for k, v in zip(keys, key, strict=True))


def encode_key(key) -> bytes:  # noqa: ANN001
    return encode(list(key))


def target_position(
    conn: apsw.Connection, source: str, table: str, known_ready: bool = False
) -> TargetPosition:
    """Call inside the target read transaction that also reads the rows. `known_ready`:
    the replicator's tables were seen already (they are never dropped), skip the look."""
    if not known_ready:
        have = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE name IN (?, ?, ?)",
                (SOURCES, SNAPSHOTS, SCHEMAS),
            )
        }
        if len(have) < 3:
            return TargetPosition(None, 0, False, None)
    row = conn.execute(
        f"SELECT install_id, through_seq FROM {SOURCES} WHERE consumer=? AND source=?",
        (CONSUMER, source),
    ).fetchone()
    done = conn.execute(
        f"SELECT 1 FROM {SNAPSHOTS} WHERE consumer=? AND source=? AND tbl=?",
        (CONSUMER, source, table),
    ).fetchone()
    shape = conn.execute(
        f"SELECT shape FROM {SCHEMAS} WHERE source=? AND tbl=?", (source, table)
    ).fetchone()
    return TargetPosition(
        row[0] if row else None,
        row[1] if row else 0,
        done is not None,
        _shape_decoder.decode(shape[0]) if shape else None,
    )


def exact_same(a: str, b: str, big: int) -> str:
    """SQL true exactly when values `a` and `b` encode equal for the verifier
    (`verifier.values`): the same storage class; an INTEGER or REAL equal as a number, a
    zero's sign included (`atan2`); a TEXT or BLOB equal byte for byte (never under a
    collation, nor an affinity: `CAST(... AS BLOB)`). NULL, not judged, when a BLOB is over
    `big` bytes (comparing it would hold it in memory whole; the verifier streams such
    BLOBs, `cdc.changelog.bigrows`): the caller reads such a table its own way. A TEXT is
    compared whole, as the verifier reads it. One CASE on `a`'s class, the commonest
    first: 10-15% faster than testing both classes first (bench/README.md)."""
    return (
        f"CASE typeof({a}) WHEN 'integer' THEN typeof({b}) = 'integer' AND {a} = {b}"
        f" WHEN 'text' THEN typeof({b}) = 'text' AND CAST({a} AS BLOB) = CAST({b} AS BLOB)"
        f" WHEN 'real' THEN typeof({b}) = 'real' AND {a} = {b}"
        f" AND ({a} <> 0 OR atan2({a}, -1) = atan2({b}, -1))"
        f" WHEN 'null' THEN {b} IS NULL"
        f" ELSE typeof({b}) = 'blob'"
        f" AND iif(length({a}) > {big} OR length({b}) > {big}, NULL, {a} = {b}) END"
    )
