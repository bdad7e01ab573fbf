"""One verification pass over a plan's tables: the API behind `cdc verify` and the daemon."""

from __future__ import annotations

import fnmatch
import os
import threading
import time
from collections.abc import Callable

import apsw

from cdc.config import Config, VerifySettings
from cdc.errors import SourceError
from cdc.planning.plan import Plan, TableMapping
from cdc.postgres.dsn import is_postgres
from cdc.sqlconn import open_legacy, set_busy_timeout
from cdc.sqlident import q
from cdc.stages.kept_out import KeptOut, describe
from cdc.stages.kept_out_apply import kept_out_now
from cdc.stages.record import CutoverRecord
from verifier.model import KeyDiff, TableResult, VerifyReport
from verifier.table import TableVerifier
from verifier.values import render


def select_tables(plan: Plan, patterns: list[str] | None = None) -> list[TableMapping]:
    """Mapped tables matching any pattern, named `source.table` or `target.target_table`."""
    out = []
    for sp in plan.sources:
        for m in sp.tables:
            names = (f"{m.source}.{m.table}", f"{m.target}.{m.target_table}")
            if not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names):
                out.append(m)
    return out


def chosen_tables(plan: Plan, patterns: list[str] | None = None) -> list[TableMapping]:
    """`select_tables`, refusing a selection of no table: a verification of nothing must
    not read as "equal" (one line, exit 2)."""
    from cdc.stages.finalized import NothingCovered

    chosen = select_tables(plan, patterns)
    if not chosen:
        what = f"matches {' '.join(patterns)}" if patterns else "is mapped"
        raise NothingCovered(f"no mapped table {what} (finalized ones included): nothing to verify")
    return chosen


POSTGRES_NOT_YET = (
    "a PostgreSQL target: comparing across engines is not built yet (cdc docs postgres); not proven"
)


def open_target_readonly(path: str, busy_timeout_ms: int) -> apsw.Connection | None:
    """A read-only connection, or None when the target file does not exist yet (or is a
    PostgreSQL database: not read here)."""
    if is_postgres(path) or not os.path.exists(path):
        return None
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    set_busy_timeout(conn, busy_timeout_ms)
    return conn


def estimate_rows(plan: Plan, tables: list[TableMapping], busy_timeout_ms: int = 5000) -> int:
    """Legacy row count of the tables (for a progress bar), a short read per table."""
    total = 0
    for path, group in _by_source(plan, tables):
        try:
            conn = open_legacy(path, busy_timeout_ms, readonly=True)
        except SourceError:
            continue
        try:
            for m in group:
                total += conn.execute(f"SELECT count(*) FROM {q(m.table)}").fetchone()[0]
        finally:
            conn.close()
    return total


def _by_source(plan: Plan, tables: list[TableMapping]) -> list[tuple[str, list[TableMapping]]]:
    out: dict[str, list[TableMapping]] = {}
    for m in tables:
        out.setdefault(m.source, []).append(m)
    return [(plan.source(s).path, ms) for s, ms in out.items()]


class PassResult:
    """A report plus, per diverged table, the exact keys (storage classes intact) for repair."""

    def __init__(self, report: VerifyReport, keys: dict[tuple[str, str], list[list]]) -> None:
        self.report, self.keys = report, keys


def verify_tables(
    cfg: Config,
    plan: Plan,
    tables: list[TableMapping],
    settings: VerifySettings | None = None,
    stop: threading.Event | None = None,
    on_chunk: Callable[[int], None] | None = None,
    on_table: Callable[[TableResult], None] | None = None,
) -> PassResult:
    settings = settings or cfg.verify
    busy = cfg.daemon.busy_timeout_ms
    started = time.time()
    from cdc.stages.record import cut_over_tables

    cut = cut_over_tables(cfg.state_dir)
    kept = _kept_out_of(cfg, plan, tables, {r.target for r in cut.values()})
    p = _Pass(cfg, plan, settings, stop, on_chunk, on_table, cut, kept)
    try:
        for path, group in _by_source(plan, tables):
            p.verify_source(path, group)
    finally:
        p.close_targets()
    p.results += _gone_kept(plan, kept)
    _foreign_tags(plan, tables, p.results, busy)
    report = VerifyReport(started, time.time(), p.results, cfg.config_path)
    return PassResult(report, p.keys)


class _Pass:
    """What one pass shares across its sources: a target is opened once per pass, not
    once per source feeding it, and each result reaches `on_table` as soon as its table
    is done (the progress a terminal shows)."""

    def __init__(
        self,
        cfg: Config,
        plan: Plan,
        settings: VerifySettings,
        stop: threading.Event | None,
        on_chunk: Callable[[int], None] | None,
        on_table: Callable[[TableResult], None] | None,
        cut: dict[tuple[str, str], CutoverRecord],
        kept: dict[tuple[str, str], KeptOut],
    ) -> None:
        self.cfg, self.plan, self.settings = cfg, plan, settings
        self.stop, self.on_chunk, self.on_table = stop, on_chunk, on_table
        self.cut, self.kept = cut, kept
        self.busy = cfg.daemon.busy_timeout_ms
        self.results: list[TableResult] = []
        self.keys: dict[tuple[str, str], list[list]] = {}
        self.targets: dict[str, apsw.Connection | None] = {}

    def _done(self, r: TableResult) -> None:
        self.results.append(r)
        if self.on_table:
            self.on_table(r)

    def _not_compared(self, m: TableMapping) -> bool:
        return (m.source, m.table) in self.cut.keys() | self.kept.keys()

    def _cut_over(self, m: TableMapping) -> TableResult:
        return _cut_over(m, self.cut.get((m.source, m.table)), self.cfg.state_dir, self.kept)

    def verify_source(self, path: str, group: list[TableMapping]) -> None:
        """One legacy file's tables over one connection, opened only when one of them is
        still compared: a frozen legacy file may be a guard, or gone."""
        if all(self._not_compared(m) for m in group):
            for m in group:  # frozen legacy tables: no need to even open the file
                self._done(self._cut_over(m))
            return
        try:
            src = open_legacy(path, self.busy, readonly=True)
        except (SourceError, apsw.BusyError) as e:
            for m in group:
                r = _skipped(m, str(e))
                if isinstance(e, apsw.BusyError):  # a bot's long transaction: next pass
                    r.state, r.reason = "unsettled", f"a database stayed locked: {e}"
                self._done(r)
            return
        try:
            for m in group:
                self._done(self._verify_table(src, m))
        finally:
            src.close()

    def _verify_table(self, src: apsw.Connection, m: TableMapping) -> TableResult:
        """The diverged keys are kept with their storage classes: repair needs them exact,
        and the report's rendering of them is not."""
        if m.target not in self.targets:
            self.targets[m.target] = open_target_readonly(self.plan.targets[m.target], self.busy)
        tgt = self.targets[m.target]
        if self._not_compared(m):
            return self._cut_over(m)
        if is_postgres(self.plan.targets[m.target]):  # across engines, its own protocol
            from verifier.pg_table import verify_pg_table

            keys: list[list] = []
            r = verify_pg_table(self.cfg, self.plan, m, self.settings, keys)
            if keys:
                self.keys[(m.source, m.table)] = keys
            return r
        if tgt is None:
            return _skipped(m, f"target file {self.plan.targets[m.target]} does not exist")
        v = TableVerifier(src, tgt, m, self.settings, self.stop, self.on_chunk)
        r = v.run()
        if v.diverged_keys:
            self.keys[(m.source, m.table)] = v.diverged_keys
        return r

    def close_targets(self) -> None:
        for c in self.targets.values():
            if c is not None:
                c.close()


def verify_keys(
    cfg: Config,
    plan: Plan,
    m: TableMapping,
    keys: list[list],
    settings: VerifySettings | None = None,
    source: apsw.Connection | None = None,
    target: apsw.Connection | None = None,
) -> TableResult:
    """Compare only `keys` of one quiet table, plus its row counts (see
    `TableVerifier.check_keys`). `source`/`target`: connections opened earlier, kept open
    (a new one first parses the file's whole schema: milliseconds the cutover's pause
    should not pay)."""
    busy = cfg.daemon.busy_timeout_ms
    try:
        src = source or open_legacy(plan.source(m.source).path, busy, readonly=True)
    except SourceError as e:
        return _skipped(m, str(e))
    tgt = target or open_target_readonly(plan.targets[m.target], busy)
    try:
        if is_postgres(plan.targets[m.target]):
            return _skipped(m, POSTGRES_NOT_YET)
        if tgt is None:
            return _skipped(m, f"target file {plan.targets[m.target]} does not exist")
        return TableVerifier(src, tgt, m, settings or cfg.verify).check_keys(keys)
    finally:
        if source is None:
            src.close()
        if tgt is not None and target is None:
            tgt.close()


def _foreign_tags(
    plan: Plan, tables: list[TableMapping], results: list[TableResult], busy: int
) -> None:
    """Rows of a merged table under a tag no mapped source has (a source renamed in the
    config leaves its old rows there): every per-source check passes, yet the table holds
    rows no legacy table has. Reported on the first verified source of that table."""
    groups: dict[tuple[str, str], list[TableMapping]] = {}
    for m in tables:
        if m.tag_column:
            groups.setdefault((m.target, m.target_table), []).append(m)
    for (target, ttable), ms in groups.items():
        tags = sorted(
            {
                x.tag
                for sp in plan.sources
                for x in sp.tables
                if (x.target, x.target_table) == (target, ttable)
            }
        )
        first = (ms[0].source, ms[0].table)
        res = next((r for r in results if (r.source, r.table) == first), None)
        if res is None or res.state == "skipped":
            continue
        conn = open_target_readonly(plan.targets[target], busy)
        if conn is None:
            continue
        tag = q(ms[0].tag_column)
        try:
            rows = conn.execute(
                f"SELECT {tag}, count(*) FROM {q(ttable)} "
                f"WHERE {tag} NOT IN ({', '.join('?' * len(tags))}) GROUP BY 1 ORDER BY 1",
                tags,
            ).fetchall()
        except apsw.Error:
            continue
        finally:
            conn.close()
        for value, n in rows:
            res.state = "diverged"
            res.diverged_count += n
            res.target_rows += n
            res.diverged.append(
                KeyDiff("extra", [render(value), "*"], [ms[0].tag_column], counts=[0, n])
            )


def unchanged(m: TableMapping, reason: str) -> TableResult:
    """`equal` without reading: nothing can have changed `m` since it was proven equal (the
    cutover and the rollback know that from the keys that changed)."""
    r = _skipped(m, reason)
    r.state = "equal"
    return r


def _cut_over(
    m: TableMapping,
    rec: CutoverRecord | None,
    state_dir: str,
    kept: dict[tuple[str, str], KeptOut],
) -> TableResult:
    """A finalized table says where its legacy side went: the guard left at the legacy
    path holds nothing to compare, and the target has been the live copy since. A table
    whose other side changed after the cutover (`cdc.moved`) is not compared either, but
    it is diverged, by name: its two sides can no longer be given back to each other."""
    k = kept.get((m.source, m.table))
    if k is not None:
        return _kept_out(k)
    if rec is not None and rec.state == "finalized":
        from cdc.stages.finalized import finalized_note

        r = _skipped(m, finalized_note(state_dir, m.source))
        r.state = "finalized"
        return r
    r = _skipped(m, "cut over: the target is the live copy now")
    r.state = "cut over"
    return r


def _kept_out_of(
    cfg: Config, plan: Plan, tables: list[TableMapping], live: set[str]
) -> dict[tuple[str, str], KeptOut]:
    """The kept-out tables (`cdc.moved`) of the stages of `tables`, read only when one of
    them is cut over (a cutover's proof under the fence pays nothing for it)."""
    stages = {m.target for m in tables} & live
    if not stages:
        return {}
    return {(k.source, k.table): k for k in kept_out_now(cfg.state_dir, plan) if k.target in stages}


def _gone_kept(plan: Plan, kept: dict[tuple[str, str], KeptOut]) -> list[TableResult]:
    """Kept-out tables the plan no longer maps (a stale process renamed or dropped the
    legacy table): named all the same, whatever the selection, so that a verification
    never passes over them."""
    return [
        _kept_out(k)
        for (source, table), k in sorted(kept.items())
        if plan.mapping(source, table) is None
    ]


def _kept_out(k: KeptOut) -> TableResult:
    now = time.time()
    return TableResult(
        k.source,
        k.table,
        k.target,
        k.target_table,
        "diverged",
        describe(k),
        started_at=now,
        finished_at=now,
    )


def _skipped(m: TableMapping, reason: str) -> TableResult:
    now = time.time()
    return TableResult(
        m.source,
        m.table,
        m.target,
        m.target_table,
        "skipped",
        reason,
        started_at=now,
        finished_at=now,
    )
