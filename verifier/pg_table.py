"""One legacy table against its copy in a PostgreSQL target (issue 19, docs/postgres.md).

The protocol is the SQLite verifier's, across engines:

- Chunks by key, bounds taken from the legacy table (`chunk_rows` rows each), both sides
  ordered the same way: BINARY on the SQLite side whatever the key's declared collation,
  `COLLATE "C"` on PostgreSQL's text keys (both are byte order of UTF-8).
- Each chunk is read at one position. The target's side first, in one REPEATABLE READ
  transaction with the capture sequence it applied through for that source
  (`_cdc_source_applied`, written in the apply's own transaction); then the legacy side,
  in one read transaction with its capture table: a key of this chunk changed after that
  sequence is in flight, and the chunk is read again once the target caught up (until
  `settle_timeout`: then "unsettled", never "equal"). When the capture rows after that
  sequence were trimmed already (harvested, not yet applied), nothing is known about the
  keys in flight: read again too. A reinstalled capture (another install id) proves
  nothing either.
- Values are compared as the SQLite verifier compares them (`verifier.values.encode`),
  the target's after `cdc.postgres.types.from_pg`: equal means the same storage class and
  bytes. The digests are over those encodings, chunk by chunk, in key order.
- Shape: every legacy column must be in the target table with the type the plan gives it
  (`TableMapping.pg_type`), and a copied table has no other column (but a keyless
  table's rowid); otherwise the table is diverged by its shape, rows unread.
- A legacy row whose key holds NULL (SQLite allows it in a rowid table) has no place in a
  PostgreSQL key: each is a difference.

Whole chunks are held in memory, BLOBs included (no digest-only read of big values yet).
"""

from __future__ import annotations

import time

import apsw
import msgspec

from cdc import exact_text
from cdc.capture import triggers as capture
from cdc.config import Config, VerifySettings
from cdc.errors import SourceError
from cdc.inventory import generated_columns, is_strict, table_info
from cdc.planning.plan import Plan, TableMapping
from cdc.postgres.types import from_pg, to_pg
from cdc.sqlconn import open_legacy
from cdc.sqlident import q
from replicator.pg_schema import PgShape
from verifier.model import KeyDiff, TableResult
from verifier.table import COPYING
from verifier.values import chunk_digest, digest, encode, render_row


class _NotYet(Exception):
    """This chunk cannot be judged at this position: read it again."""


def verify_pg_table(
    cfg: Config,
    plan: Plan,
    m: TableMapping,
    settings: VerifySettings | None = None,
    keys: list[list] | None = None,
) -> TableResult:
    """`keys`, when given, gets every diverged key, storage classes intact (what `cdc
    repair` re-sends through the log)."""
    settings = settings or cfg.verify
    r = TableResult(m.source, m.table, m.target, m.target_table, started_at=time.time())
    import psycopg

    try:
        src = open_legacy(plan.source(m.source).path, cfg.daemon.busy_timeout_ms, readonly=True)
    except SourceError as e:
        return _end(r, "skipped", str(e))
    try:
        with psycopg.connect(plan.targets[m.target], connect_timeout=10) as tgt:
            t = _Table(src, tgt, m, settings, r)
            t.run()
        if keys is not None:
            keys.extend(t.keys)
    except psycopg.OperationalError as e:
        return _end(r, "skipped", f"the PostgreSQL target cannot be reached: {e}")
    finally:
        src.close()
    r.finished_at = time.time()
    return r


def _end(r: TableResult, state: str, reason: str | None) -> TableResult:
    r.state, r.reason, r.finished_at = state, reason, time.time()
    return r


class _Table:
    def __init__(self, src: apsw.Connection, tgt, m: TableMapping, settings, r) -> None:  # noqa: ANN001
        self.src, self.tgt, self.m, self.settings, self.r = src, tgt, m, settings, r
        self.digests: tuple[list[bytes], list[bytes]] = ([], [])
        self.keys: list[list] = []  # every diverged key, exact (for repair)

    def run(self) -> None:
        info = table_info(self.src, self.m.table)
        made = self.tgt.execute(
            "SELECT to_regclass('_cdc_pg_shapes') IS NOT NULL AND "
            "to_regclass('_cdc_snapshots') IS NOT NULL"
        ).fetchone()[0]
        if not made:  # no apply has run into this database yet
            self.tgt.rollback()
            _end(self.r, "skipped", COPYING)
            return
        row = self.tgt.execute(
            "SELECT shape FROM _cdc_pg_shapes WHERE source = %s AND tbl = %s",
            (self.m.source, self.m.table),
        ).fetchone()
        done = self.tgt.execute(
            "SELECT 1 FROM _cdc_snapshots WHERE source = %s AND tbl = %s",
            (self.m.source, self.m.table),
        ).fetchone()
        self.tgt.rollback()
        if not info.columns or row is None or done is None:
            _end(self.r, "skipped", COPYING)  # rows not there yet are no difference
            return
        self.shape = msgspec.msgpack.decode(row[0], type=PgShape)
        self.info = info
        strict = is_strict(info.create_sql)
        self.types = [self.m.pg_type(c.name, c.decl_type, strict) for c in info.columns]
        shape = self._shape_differences()
        if shape:
            self.r.shape = shape
            _end(self.r, "diverged", "shape differs: " + "; ".join(shape))
            return
        self.tid = capture.installed_tables(self.src).get(self.m.table)
        self._chunks()

    def _shape_differences(self) -> list[str]:
        have = dict(
            self.tgt.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (self.m.target_table,),
            ).fetchall()
        )
        self.tgt.rollback()
        out = []
        for c, ty in zip(self.info.columns, self.types, strict=True):
            if c.name not in have:
                out.append(f"column {q(c.name)}: legacy only")
            elif have[c.name] != ty:
                out.append(f"column {q(c.name)}: {ty} by the plan, {have[c.name]} in target")
        out += [  # P1 (docs/fuzzing.md): computed in SQLite, absent from PostgreSQL
            f"column {q(n)}: generated in the legacy table, not carried"
            for n in generated_columns(self.src, self.m.table)
            if n not in have
        ]
        if self.m.tag_column is None:  # a merged table holds its other members' columns
            mine = {c.name for c in self.info.columns} | set(self.shape.key)
            out += [f"column {q(n)}: target only" for n in have if n not in mine]
        return out

    # -- chunks ----------------------------------------------------------------------------
    def _chunks(self) -> None:
        lo = None
        deadline = time.monotonic() + self.settings.settle_timeout
        while True:
            try:
                hi, src_rows, tgt_rows = self._read_chunk(lo)
            except _NotYet as e:
                if time.monotonic() > deadline:
                    _end(self.r, "unsettled", str(e))
                    return
                time.sleep(0.05)
                continue
            self._compare(src_rows, tgt_rows)
            self.r.chunks += 1
            if hi is None:
                break
            lo = hi
            deadline = time.monotonic() + self.settings.settle_timeout
        self._null_keys()
        self.r.source_digest, self.r.target_digest = (
            digest(self.digests[0]),
            digest(self.digests[1]),
        )
        if self.r.diverged_count:
            _end(self.r, "diverged", None)

    def _read_chunk(self, lo):  # noqa: ANN001, ANN202
        """(hi, legacy rows, target rows) of the chunk after `lo`, both at one position:
        the bound first (any bound serves, as long as both sides read the same range),
        then the target's rows with the position it applied through, then the legacy's,
        later, with its capture table: what changed in between is in flight."""
        hi = self._bound(lo)
        iid, applied, tgt_rows = self._target_side(lo, hi)
        self.src.execute("BEGIN")
        try:
            self._position(iid, applied, lo, hi)
            src_rows = self._source_rows(lo, hi)
        finally:
            self.src.execute("COMMIT")
        return hi, src_rows, tgt_rows

    @property
    def width(self) -> int:
        return len(self._own_key())

    def _own_key(self) -> list[str]:
        return self.shape.key[1:] if self.shape.tag_column else list(self.shape.key)

    def _target_side(self, lo, hi):  # noqa: ANN001, ANN202
        """The target's applied position and its rows in `(lo, hi]`, in one snapshot."""
        self.tgt.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            pos = self.tgt.execute(
                "SELECT install_id, through_seq FROM _cdc_source_applied WHERE source = %s",
                (self.m.source,),
            ).fetchone()
            keys = [self._pg_key(k) for k in self._own_key()]
            conds, args = self._tag_cond()
            row = ", ".join(keys)
            marks = ", ".join(["%s"] * len(keys))
            for bound, op in ((lo, ">"), (hi, "<=")):
                if bound is not None:
                    conds.append(f"({row}) {op} ({marks})")
                    args += [to_pg(v, t) for v, t in zip(bound, self._key_types(), strict=True)]
            where = f" WHERE {' AND '.join(conds)}" if conds else ""
            cols = [q(k) for k in self._own_key()] + [q(c.name) for c in self.info.columns]
            rows = self.tgt.execute(
                f"SELECT {', '.join(cols)} FROM {q(self.m.target_table)}{where} ORDER BY {row}",
                args,
            ).fetchall()
        finally:
            self.tgt.rollback()
        types = self._key_types() + self.types
        conv = [tuple(from_pg(v, t) for v, t in zip(r, types, strict=True)) for r in rows]
        iid, applied = pos if pos else (None, 0)
        return iid, applied, conv

    def _tag_cond(self) -> tuple[list[str], list]:
        if self.shape.tag_column is None:
            return [], []
        return [f"{q(self.shape.tag_column)} = %s"], [self.shape.tag]

    def _key_types(self) -> list[str]:
        if self.shape.keyless:
            return ["bigint"]
        names = [c.name for c in self.info.columns]
        return [self.types[names.index(k)] for k in self._own_key()]

    def _pg_key(self, k: str) -> str:
        ty = self._key_types()[self._own_key().index(k)]
        return f'{q(k)} COLLATE "C"' if ty == "text" else q(k)

    # -- legacy side ---------------------------------------------------------------------------
    def _src_keys(self) -> list[str]:
        return [f"{q(k)} COLLATE BINARY" for k in self.info.key] or [self.info.rowid_alias()]

    def _src_range(self, lo, hi) -> tuple[str, list]:  # noqa: ANN001
        keys = self._src_keys()
        conds = [f"NOT ({' OR '.join(f'{q(k)} IS NULL' for k in self.info.key)})"] if (
            self.info.key
        ) else []  # fmt: skip
        args: list = []
        if lo is not None:
            conds.append(f"({', '.join(keys)}) > ({exact_text.marks(lo)})")
            args += exact_text.binds(lo)
        if hi is not None:
            conds.append(f"({', '.join(keys)}) <= ({exact_text.marks(hi)})")
            args += exact_text.binds(hi)
        return (f" WHERE {' AND '.join(conds)}" if conds else ""), args

    def _bound(self, lo):  # noqa: ANN001, ANN202
        where, args = self._src_range(lo, None)
        n = int(self.settings.chunk_rows)
        row = exact_text.fetchone(
            self.src,
            self._src_keys(),
            f"FROM {q(self.info.name)}{where} ORDER BY {', '.join(self._src_keys())} "
            f"LIMIT 1 OFFSET {n - 1}",
            args,
        )
        return list(row) if row else None

    def _position(self, iid, applied: int, lo, hi) -> None:  # noqa: ANN001
        mine = self.src.execute(f"SELECT v FROM {capture.META} WHERE k = 'install_id'").fetchone()
        if mine is None or mine[0] != iid:
            raise _NotYet("the target has applied nothing of this capture installation yet")
        first, last = self.src.execute(
            f"SELECT min(seq), max(seq) FROM {capture.CHANGES}"
        ).fetchone()
        if (last or 0) <= applied:
            return
        if first is None or first > applied + 1:
            raise _NotYet("changes after the target's position are harvested, not yet applied")
        kcols = [f"k{i + 1}" for i in range(len(self.info.key) or 1)]
        changed = exact_text.select(
            self.src,
            kcols,
            f"FROM {capture.CHANGES} WHERE seq > ? AND tid = ?",
            (applied, self.tid),
        )
        for k in changed:
            key = list(k)
            if (lo is None or not _le(key, lo)) and (hi is None or _le(key, hi)):
                raise _NotYet(f"rows of this chunk changed after the target's position ({key})")

    def _source_rows(self, lo, hi) -> list[tuple]:  # noqa: ANN001
        where, args = self._src_range(lo, hi)
        keys = [q(k) for k in self.info.key] or [self.info.rowid_alias()]
        cols = keys + [q(c.name) for c in self.info.columns]
        return exact_text.select(
            self.src,
            cols,
            f"FROM {q(self.info.name)}{where} ORDER BY {', '.join(self._src_keys())}",
            args,
        )

    def _null_keys(self) -> None:
        if not self.info.key:
            return
        cond = " OR ".join(f"{q(k)} IS NULL" for k in self.info.key)
        n = self.src.execute(f"SELECT count(*) FROM {q(self.info.name)} WHERE {cond}").fetchone()[0]
        if n:
            self.r.source_rows += n
            self.r.diverged_count += n
            self.r.diverged.append(KeyDiff("missing", ["NULL"], [], None, None, counts=[n, 0]))

    # -- comparison ----------------------------------------------------------------------------
    def _compare(self, src_rows: list[tuple], tgt_rows: list[tuple]) -> None:
        w = self.width
        a = {encode(list(r[:w])): r for r in src_rows}
        b = {encode(list(r[:w])): r for r in tgt_rows}
        self.r.source_rows += len(a)
        self.r.target_rows += len(b)
        self.digests[0].append(chunk_digest(b"".join(encode(list(r)) for r in src_rows)))
        self.digests[1].append(chunk_digest(b"".join(encode(list(r)) for r in tgt_rows)))
        for k in a.keys() | b.keys():
            sa, tb = a.get(k), b.get(k)
            if sa is not None and tb is not None and encode(list(sa)) == encode(list(tb)):
                self.r.compared_rows += 1
                continue
            self.r.compared_rows += sa is not None and tb is not None
            self._diverged(sa, tb)

    def _diverged(self, sa, tb) -> None:  # noqa: ANN001
        w = self.width
        self.r.diverged_count += 1
        self.keys.append(list((sa or tb)[:w]))
        if len(self.r.diverged) >= self.settings.max_report_keys:
            return
        key = render_row((sa or tb)[:w])
        if sa is None:
            self.r.diverged.append(KeyDiff("extra", key, target=render_row(tb[w:])))
        elif tb is None:
            self.r.diverged.append(KeyDiff("missing", key, source=render_row(sa[w:])))
        else:
            cols = [
                c.name
                for c, x, y in zip(self.info.columns, sa[w:], tb[w:], strict=True)
                if encode([x]) != encode([y])
            ]
            self.r.diverged.append(
                KeyDiff("different", key, cols, render_row(sa[w:]), render_row(tb[w:]))
            )


def _le(key: list, bound: list) -> bool:
    """`key <= bound` in the order both sides read (SQLite's, BINARY): numbers before
    text before BLOBs, text by its bytes."""
    return [_order(v) for v in key] <= [_order(v) for v in bound]


def _order(v: object) -> tuple:
    if v is None:
        return (0, 0)
    if isinstance(v, int | float):
        return (1, v)
    if isinstance(v, str):
        return (2, v.encode())
    if isinstance(v, exact_text.RawText):
        return (2, v.data)
    return (3, bytes(v))
