"""Verify one mapped table while the bots keep writing: chunk by chunk, at known positions.

Each chunk is read twice, target first, then legacy, each in its own short transaction:

1. target: the capture sequence `A` of this source that the replicator has applied, and the
   target rows of the key range;
2. legacy: the rows of the same range, the capture sequence `S` now, and the keys of every
   change after `A` (the capture table still holds them: they were not applied, so unless
   the harvester already trimmed them, which the read detects, they are there).

A key changed after `A` is *in flight*: the target may not have it yet, so it is set aside,
not judged. Every other key must be equal on both sides: the target holds every change up
to `A`, and the legacy row has no change after `A`.

A few legacy changes leave no capture row for the key they affect (an `INSERT OR REPLACE`
deleting another row through a UNIQUE column of a copied table: the target deletes it when
it applies the new row). So a mismatch is only a *suspect* until it is seen again in a
check made after the target applied everything up to the first check's `S`; only then is
it reported. Keys in flight and suspects are re-checked by key at the end of the table,
until they settle or `settle_timeout` passes (then they are reported as unsettled: not
proven, not wrong).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import apsw

from cdc.capture import triggers as capture
from cdc.config import VerifySettings
from cdc.inventory import schema_version, table_info
from cdc.planning.plan import TableMapping
from cdc.sqlconn import read_transaction
from verifier.model import KeyDiff, TableResult
from verifier.shape import describe, shape_differences
from verifier.sides import TableSides, TargetPosition, encode_key, key_collations, target_position
from verifier.values import chunk_digest, digest, encode, render_row

TARGET_CAP_FACTOR = 4  # a chunk holds at most this many times chunk_rows target rows
POLL = 0.005
# Skipped only until the daemon has applied the table's initial copy: the continuous
# verifier looks at these again within seconds (`ContinuousVerifier._pause`).
NOT_REPLICATED = "not replicated yet (no rows applied to the target)"
COPYING = "initial copy still in progress"
COPY_PENDING = (NOT_REPLICATED, COPYING)


class _Pending:
    __slots__ = ("key", "suspect", "seq", "source", "target")

    def __init__(self, key: list, suspect: bool, seq: int, source=None, target=None) -> None:  # noqa: ANN001
        self.key, self.suspect, self.seq = key, suspect, seq
        self.source, self.target = source, target


class _Retry(Exception):
    """This read cannot be judged now (target behind a trim, shape change on the way)."""


class TableVerifier:
    def __init__(
        self,
        src: apsw.Connection,
        tgt: apsw.Connection,
        m: TableMapping,
        settings: VerifySettings,
        stop: threading.Event | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.src, self.tgt, self.m, self.settings = src, tgt, m, settings
        self.stop = stop or threading.Event()
        self.on_chunk = on_chunk
        self.sides: TableSides | None = None
        self._schema_version = -1
        self.diverged_keys: list[list] = []  # exact keys (storage classes intact), for repair
        self.res = TableResult(m.source, m.table, m.target, m.target_table)

    # -- setup -----------------------------------------------------------------------------
    def _target_position(self) -> TargetPosition:
        return target_position(self.tgt, self.m.source, self.m.table, self.sides is not None)

    def _prepare(self, tp: TargetPosition) -> str | None:
        """Build the SQL for the current shapes; returns why the table cannot be verified."""
        m = self.m
        if tp.shape is None:
            return NOT_REPLICATED
        if not tp.snapshot_done:
            return COPYING
        with read_transaction(self.src):
            tid = capture.installed_tables(self.src).get(m.table)
            iid = capture.install_id(self.src)
            info = table_info(self.src, m.table)
            self._schema_version = schema_version(self.src)
            colls = key_collations(self.src, info)
        if tid is None:
            return "capture is not installed for this table"
        if not info.columns:
            return "the legacy table no longer exists"
        if tp.install_id != iid:
            return "the target was filled from another capture installation"
        if info.column_names != tp.shape.columns:
            raise _Retry("legacy columns changed; waiting for the target to apply the change")
        differ = shape_differences(info, self.tgt, m)
        if differ:
            raise _Shape(differ)
        self.sides = TableSides(m, info, tp.shape, colls, tid)
        return None

    def _read_target(self, read) -> tuple[TargetPosition, list[tuple]]:  # noqa: ANN001
        """One target read: its position, the SQL rebuilt if the applied shape changed,
        and `read(sides)`'s rows, all in one transaction."""
        with read_transaction(self.tgt):
            tp = self._target_position()
            if self.sides is None or tp.shape != self.sides.shape:
                reason = self._prepare(tp)
                if reason is not None:
                    raise _Skip(reason)
            return tp, read(self.sides)

    def _check_source_shape(self) -> None:
        v = schema_version(self.src)
        if v != self._schema_version:
            cols = table_info(self.src, self.m.table).column_names
            if cols != self.sides.shape.columns:
                self.sides = None  # rebuilt from the next target read
                raise _Retry("legacy columns changed; waiting for the target to apply the change")
            self._schema_version = v

    # -- the pass --------------------------------------------------------------------------
    def run(self) -> TableResult:
        res = self.res
        res.started_at = time.time()
        try:
            self._run()
        except _Skip as e:
            res.state, res.reason = "skipped", str(e)
        except _Shape as e:
            res.state, res.reason, res.shape = "diverged", describe(e.differ), e.differ
        except _Retry as e:
            res.state, res.reason = "unsettled", str(e)
        except apsw.BusyError as e:
            res.state, res.reason = "unsettled", f"a database stayed locked: {e}"
        except apsw.Error as e:  # e.g. the table was dropped mid-pass: not proven, say why
            res.state, res.reason = "skipped", f"read failed: {type(e).__name__}: {e}"
        res.finished_at = time.time()
        return res

    def _run(self) -> None:
        res, s = self.res, self.settings
        n = s.chunk_rows
        cap = n * TARGET_CAP_FACTOR
        src_parts: list[bytes] = []
        tgt_parts: list[bytes] = []
        pending: dict[bytes, _Pending] = {}
        t0 = time.monotonic()
        done_rows = 0
        self._settle_until(lambda: self._read_target(lambda sides: []))  # prepares the sides
        with read_transaction(self.src):
            hi = self.sides.source_bound(self.src, None, n)
        after = None
        while True:
            if self.stop.is_set():
                raise _Skip("stopped")
            hi, trows, sp, srows, next_hi = self._settle_until(
                lambda lo=after, hi=hi: self._read_chunk(lo, hi, cap, n)
            )
            sk, tk = self._compare(srows, trows, sp.in_flight, sp.seq, pending)
            src_parts.append(sk)
            tgt_parts.append(tk)
            res.chunks += 1
            res.source_rows += len(srows)
            res.target_rows += len(trows)
            done_rows += len(srows)
            if self.on_chunk:
                self.on_chunk(len(srows))
            if hi is None:
                break
            after, hi = hi, next_hi
            if s.rows_per_second > 0:
                ahead = done_rows / s.rows_per_second - (time.monotonic() - t0)
                if ahead > 0 and self.stop.wait(ahead):
                    raise _Skip("stopped")
        if self.sides.nullable_key:
            self._null_keys(src_parts, tgt_parts)
        res.source_digest, res.target_digest = digest(src_parts), digest(tgt_parts)
        if pending:
            self._settle(pending)
        if self.diverged_keys:
            res.state = "diverged"
        elif res.unsettled_keys:
            res.state = "unsettled"
            res.reason = "rows kept changing; re-verify later"

    def check_keys(self, keys: list[list]) -> TableResult:
        """Compare only `keys` (and the row counts), for a table that is quiet on both sides
        and was verified in full before: under a cutover's fence, after the drain, the
        keys changed since that full pass are all that can differ. A key holding NULL
        names no one row (`capture.key_exprs`): then the table is compared in full."""
        res = self.res
        res.started_at = time.time()
        try:
            self._settle_until(lambda: self._read_target(lambda sides: []))
            sides, w = self.sides, self.sides.width
            if any(len(k) != w or any(v is None for v in k) for k in keys):
                return self.run()
            with read_transaction(self.tgt):
                trows = [sides.target_point(self.tgt, k) for k in keys]
                res.target_rows = sides.target_count(self.tgt)
            with read_transaction(self.src):
                srows = [sides.source_point(self.src, k) for k in keys]
                res.source_rows = sides.source_count(self.src)
            for k, srow, trow in zip(keys, srows, trows, strict=True):
                if encode(srow) == encode(trow):
                    res.compared_rows += srow is not None
                else:
                    self._diverged(list(k)[:w], srow, trow)
            res.chunks = 1
            if self.diverged_keys:
                res.state = "diverged"
            elif res.source_rows != res.target_rows:
                res.state = "diverged"
                res.reason = (
                    f"row counts differ ({res.source_rows} legacy, {res.target_rows} target) "
                    "outside the keys changed since the last full pass: verify it in full"
                )
        except _Skip as e:
            res.state, res.reason = "skipped", str(e)
        except _Shape as e:
            res.state, res.reason, res.shape = "diverged", describe(e.differ), e.differ
        except (_Retry, apsw.Error) as e:
            res.state, res.reason = "unsettled", str(e)
        res.finished_at = time.time()
        return res

    def prepare(self) -> TableResult | None:
        """Build `self.sides` for a check that reads the table its own way
        (`verifier.digest`); the result instead when the table cannot be compared now."""
        res = self.res
        try:
            self._settle_until(lambda: self._read_target(lambda sides: []))
            return None
        except _Skip as e:
            res.state, res.reason = "skipped", str(e)
        except _Shape as e:
            res.state, res.reason, res.shape = "diverged", describe(e.differ), e.differ
        except (_Retry, apsw.Error) as e:
            res.state, res.reason = "unsettled", str(e)
        res.finished_at = time.time()
        return res

    def _null_keys(self, src_parts: list[bytes], tgt_parts: list[bytes]) -> None:
        """Rows whose legacy key holds a NULL: compared as groups per key (a NULL key may
        repeat), by the same rule as keyed rows: a group that differs is reported once a
        read made after the target applied past its first sighting still finds it so."""
        res, w = self.res, self.sides.width
        deadline = time.monotonic() + self.settings.settle_timeout
        first_seen: dict[bytes, int] = {}
        while True:
            tp, trows, sp, srows = self._settle_until(self._read_nulls)
            tp_seq = tp.applied_seq
            groups: dict[bytes, tuple[list, list]] = {}
            for side, rows in ((0, srows), (1, trows)):
                for r in rows:
                    groups.setdefault(encode_key(r[:w]), ([], []))[side].append(r)
            bad, confirmed = set(), set()
            for k, (s, t) in groups.items():
                if sorted(map(encode, s)) == sorted(map(encode, t)):
                    continue
                bad.add(k)
                if k in sp.in_flight:
                    first_seen.pop(k, None)
                elif k in first_seen and tp_seq >= first_seen[k]:
                    confirmed.add(k)
                else:
                    first_seen.setdefault(k, sp.seq)
            if bad == confirmed or time.monotonic() >= deadline or self.stop.is_set():
                break
            self._wait_applied(max(sp.seq, 1), deadline)
        good = [k for k in groups if k not in bad]
        src_parts.append(chunk_digest(encode([r for k in good for r in groups[k][0]])))
        tgt_parts.append(chunk_digest(encode([r for k in good for r in groups[k][1]])))
        res.source_rows += len(srows)
        res.target_rows += len(trows)
        res.compared_rows += sum(len(groups[k][0]) for k in good)
        for k in bad:
            s, t = groups[k]
            key = list((s or t)[0][:w])
            if k not in confirmed:
                if len(res.unsettled_keys) < self.settings.max_report_keys:
                    res.unsettled_keys.append(render_row(key))
                continue
            self.diverged_keys.append(key)
            res.diverged_count += 1
            if len(res.diverged) < self.settings.max_report_keys:
                kind = "missing" if not t else "extra" if not s else "different"
                res.diverged.append(
                    KeyDiff(
                        kind,
                        render_row(key),
                        source=render_row(s[0][w:]) if s else None,
                        target=render_row(t[0][w:]) if t else None,
                        counts=[len(s), len(t)],
                    )
                )

    def _read_nulls(self):  # noqa: ANN202
        tp, trows = self._read_target(lambda sides: sides.target_null_rows(self.tgt))
        sp, srows = self._read_source(tp, lambda sides: sides.source_null_rows(self.src))
        return tp, trows, sp, srows

    def _read_chunk(self, lo, hi, cap: int, n: int):  # noqa: ANN001, ANN202
        tp, trows = self._read_target(lambda sides: sides.target_rows(self.tgt, lo, hi, cap))
        if len(trows) >= cap:  # the target has far more rows here: a shorter chunk
            hi = list(trows[-1][: self.sides.width])
        sp, (srows, next_hi) = self._read_source(
            tp,
            lambda sides: (
                sides.source_rows(self.src, lo, hi),
                sides.source_bound(self.src, hi, n) if hi is not None else None,
            ),
        )
        return hi, trows, sp, srows, next_hi

    def _read_source(self, tp: TargetPosition, read):  # noqa: ANN001, ANN202
        """One legacy read: its capture position relative to the target's, and `read`."""
        with read_transaction(self.src):
            self._check_source_shape()
            sp = self.sides.source_position(self.src, tp.applied_seq)
            if not sp.complete:
                raise _Retry(
                    "the target is behind and the capture rows it lacks were already trimmed"
                )
            return sp, read(self.sides)

    def _settle_until(self, read):  # noqa: ANN001, ANN202
        """Retry a read that cannot be judged yet, for at most `settle_timeout` seconds."""
        deadline = time.monotonic() + self.settings.settle_timeout
        while True:
            try:
                return read()
            except (_Retry, apsw.BusyError):
                if time.monotonic() >= deadline:
                    raise
                if self.stop.wait(0.02):
                    raise _Skip("stopped") from None

    # -- comparing -------------------------------------------------------------------------
    def _compare(
        self, srows: list, trows: list, in_flight: frozenset, seq: int, pending: dict
    ) -> tuple[bytes, bytes]:
        """Judge one chunk; returns the digests of the rows judged on each side."""
        res = self.res
        if not in_flight:
            es, et = encode(srows), encode(trows)
            if es == et:
                res.compared_rows += len(srows)
                d = chunk_digest(es)  # one hash serves both sides
                return d, d
        w = self.sides.width
        smap = {encode_key(r[:w]): r for r in srows}
        tmap = {encode_key(r[:w]): r for r in trows}
        skeep = [r for k, r in smap.items() if k not in in_flight]
        tkeep = [r for k, r in tmap.items() if k not in in_flight]
        for k in smap.keys() | tmap.keys():
            srow, trow = smap.get(k), tmap.get(k)
            key = list((srow or trow)[:w])
            if k in in_flight:
                pending[k] = _Pending(key, False, seq)
            elif srow is not None and trow is not None and encode(srow) == encode(trow):
                res.compared_rows += 1
            else:
                pending[k] = _Pending(key, True, seq)
        return chunk_digest(encode(skeep)), chunk_digest(encode(tkeep))

    def _settle(self, pending: dict[bytes, _Pending]) -> None:
        """Re-check set-aside keys by key once the target has caught up with each sighting."""
        res, sides = self.res, self.sides
        deadline = time.monotonic() + self.settings.settle_timeout
        while pending and time.monotonic() < deadline and not self.stop.is_set():
            need = max(p.seq for p in pending.values())
            try:
                self._wait_applied(need, deadline)
                with read_transaction(self.tgt):
                    tp = self._target_position()
                    trows = {k: sides.target_point(self.tgt, p.key) for k, p in pending.items()}
                with read_transaction(self.src):
                    sp = sides.source_position(self.src, tp.applied_seq)
                    srows = {k: sides.source_point(self.src, p.key) for k, p in pending.items()}
            except apsw.BusyError:
                self.stop.wait(0.02)
                continue
            if tp.shape != sides.shape:  # a column was added meanwhile: compare it too
                try:
                    reason = self._prepare(tp)
                except _Retry:
                    reason = None
                if reason is not None:
                    raise _Skip(reason)
                sides = self.sides or sides
                continue
            if not sp.complete:
                self.stop.wait(0.02)
                continue
            for k, p in list(pending.items()):
                srow, trow = srows[k], trows[k]
                if k in sp.in_flight:
                    p.suspect, p.seq = False, sp.seq
                elif encode(srow) == encode(trow):
                    res.rechecked_rows += srow is not None
                    del pending[k]
                elif p.suspect and tp.applied_seq >= p.seq:
                    self._diverged(p.key, srow, trow)
                    del pending[k]
                else:
                    p.suspect, p.seq = True, sp.seq
        for p in pending.values():
            if len(res.unsettled_keys) < self.settings.max_report_keys:
                res.unsettled_keys.append(render_row(p.key))

    def _wait_applied(self, seq: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            with read_transaction(self.tgt):
                tp = self._target_position()
            if tp.applied_seq >= seq or self.stop.wait(POLL):
                return

    def _diverged(self, key: list, srow, trow) -> None:  # noqa: ANN001
        res, w = self.res, self.sides.width
        self.diverged_keys.append(key)
        res.diverged_count += 1
        if len(res.diverged) >= self.settings.max_report_keys:
            return
        cols = self.sides.columns
        if srow is None:
            res.diverged.append(KeyDiff("extra", render_row(key), target=render_row(trow[w:])))
        elif trow is None:
            res.diverged.append(KeyDiff("missing", render_row(key), source=render_row(srow[w:])))
        else:
            differ = [
                c
                for c, a, b in zip(cols, srow[w:], trow[w:], strict=True)
                if encode([a]) != encode([b])
            ]
            res.diverged.append(
                KeyDiff(
                    "different", render_row(key), differ, render_row(srow[w:]), render_row(trow[w:])
                )
            )


class _Skip(Exception):
    """The table cannot be verified now; the message says why."""


class _Shape(Exception):
    """The target table's columns are not the legacy table's (`verifier.shape`)."""

    def __init__(self, differ: list[str]) -> None:
        super().__init__(describe(differ))
        self.differ = differ
