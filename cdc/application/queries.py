"""The application's queries run on both sides: same answers, latency, plans.

Before a cutover the bots' reads move from the legacy files to the consolidated ones. This
proves, per query, that the consolidated file gives the same answer (values and storage
classes, in order where the query orders) as fast (p50/p95/p99 over alternated runs) by a
plan no worse (`query_plans`). Both files are opened read-only: a legacy file belongs to
its bots, and a comparison must never write to it.

The queries file (TOML, docs/application.md):

    [[query]]
    name = "open positions"
    source = "trading"        # the legacy source name in cdc.toml
    sql = "SELECT id, symbol, qty FROM positions WHERE status = ? ORDER BY id"
    params = ["open"]         # or a table for named parameters: {status = "open"}
"""

from __future__ import annotations

import math
import os
import struct
import time
import tomllib
from collections import Counter
from typing import Any

import apsw
import msgspec

from cdc.application.names import LegacyNames
from cdc.application.query_plans import (
    AppliedIndex,
    Regression,
    SuggestedIndex,
    create_indexes,
    explain,
    regressions,
    suggest,
)
from cdc.application.rewrite import NotRewritable, Rewritten, is_select, rewrite
from cdc.config import Config
from cdc.errors import ConfigError
from cdc.pool.recorded import RecordedStatement, read_recorded
from cdc.sqlident import q

Params = list[Any] | dict[str, Any]


class QuerySpec(msgspec.Struct, frozen=True):
    name: str
    source: str
    sql: str
    params: Params = []


class Latency(msgspec.Struct, frozen=True):
    p50_ms: float
    p95_ms: float
    p99_ms: float
    runs: int


class QueryResult(msgspec.Struct):
    name: str
    source: str
    legacy_sql: str
    # "ok", "wrong answer", "over budget", "not rewritable", "error" (on the consolidated
    # file only), "fails on legacy" (the query fails there too: nothing compared)
    status: str
    consolidated_sql: str = ""
    target: str = ""
    ordered: bool = False
    same_answer: bool = False
    rows_legacy: int = 0
    rows_consolidated: int = 0
    difference: str | None = None  # the first one, in words
    error: str | None = None
    legacy: Latency | None = None
    consolidated: Latency | None = None
    legacy_plan: list[str] = []
    consolidated_plan: list[str] = []
    regressions: list[Regression] = []
    suggested_indexes: list[SuggestedIndex] = []


class RecordedOnly(msgspec.Struct, frozen=True):
    """A recorded statement that is not a query: listed, never run."""

    database: str
    sql: str
    count: int


class QueriesReport(msgspec.Struct):
    runs: int
    budget_ms: float
    queries: list[QueryResult] = []
    recorded_not_run: list[RecordedOnly] = []
    applied_indexes: list[AppliedIndex] = []
    wrong_answers: int = 0
    over_budget: int = 0
    not_rewritable: int = 0
    regressions: int = 0
    fails_on_legacy: int = 0  # queries that fail on their legacy file: never compared


# -- input ------------------------------------------------------------------------------


class _File(msgspec.Struct, forbid_unknown_fields=True):
    query: list[QuerySpec] = []


def load_queries(path: str, names: LegacyNames) -> list[QuerySpec]:
    """The queries file, checked: every source known (a typo must not pass as "no query")."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        specs = msgspec.convert(raw, _File).query
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    except msgspec.ValidationError as e:
        raise ConfigError(f"{path}: {e}", hint="[[query]] name, source, sql, params") from e
    for s in specs:
        if names.source(s.source) is None:
            known = ", ".join(f.source for f in names.files)
            raise ConfigError(
                f"{path}: query {s.name!r}: unknown source {s.source!r}", hint=f"sources: {known}"
            )
    return specs


def recorded_queries(
    state_dir: str, names: LegacyNames
) -> tuple[list[QuerySpec], list[RecordedOnly]]:
    """What `cdc.pool` recorded on legacy files, as queries with their sample parameters;
    statements that are not queries are listed, not run (re-running a write would write)."""
    specs: list[QuerySpec] = []
    others: list[RecordedOnly] = []
    for r in read_recorded(state_dir):
        if r.kind != "legacy" or names.source(r.database) is None:
            continue
        if not is_select(r.sql):
            others.append(RecordedOnly(r.database, r.sql, r.count))
            continue
        name = f"recorded {r.database}: {_one_line(r.sql, 50)} ({r.count}x)"
        specs.append(QuerySpec(name, r.database, r.sql, r.params()))
    return specs, others


# -- values, exactly ----------------------------------------------------------------------

_CLASS = {int: "integer", float: "real", str: "text", bytes: "blob", type(None): "null"}


def _exact(v: object) -> tuple:
    """A value as its storage class and bits: 5 != 5.0 != '5', -0.0 != 0.0, NaN == NaN
    of the same bits."""
    if isinstance(v, float):
        return ("real", struct.pack("<d", v))
    return (_CLASS.get(type(v), type(v).__name__), v)


def _show(v: object) -> str:
    cls = _CLASS.get(type(v), type(v).__name__)
    if isinstance(v, float) and (v == 0.0 or math.isnan(v)):
        return f"{v!r} ({cls}, bits {struct.pack('<d', v).hex()})"
    return f"{v!r} ({cls})"


def first_difference(old: list[tuple], new: list[tuple], ordered: bool) -> str | None:
    """None when the answers are the same; else the first difference, in words."""
    a = [tuple(map(_exact, r)) for r in old]
    b = [tuple(map(_exact, r)) for r in new]
    if ordered:
        for i, (ra, rb) in enumerate(zip(a, b, strict=False)):
            if ra != rb:
                return _row_difference(i, old[i], new[i])
        if len(a) != len(b):
            return f"legacy has {len(a)} rows, consolidated {len(b)} (same up to row {min(len(a), len(b))})"
        return None
    ca, cb = Counter(a), Counter(b)
    if ca == cb:
        return None
    for i, r in enumerate(a):
        if cb[r] < ca[r]:
            near = next((j for j, s in enumerate(b) if cb[s] > ca[s] and len(s) == len(r)), None)
            if near is not None:
                return "unordered: " + _row_difference(i, old[i], new[near], near)
            return f"unordered: legacy row {i} {old[i]!r} is missing from the consolidated answer"
    j = next(j for j, s in enumerate(b) if cb[s] > ca[s])
    return f"unordered: consolidated row {j} {new[j]!r} is not in the legacy answer"


def _row_difference(i: int, ra: tuple, rb: tuple, j: int | None = None) -> str:
    where = f"row {i}" if j is None or j == i else f"legacy row {i} / consolidated row {j}"
    if len(ra) != len(rb):
        return f"{where}: {len(ra)} columns in legacy, {len(rb)} in consolidated"
    for c, (va, vb) in enumerate(zip(ra, rb, strict=True)):
        if _exact(va) != _exact(vb):
            return f"{where}, column {c}: legacy {_show(va)}, consolidated {_show(vb)}"
    return f"{where}: differs"


# -- running ------------------------------------------------------------------------------


def open_ro(path: str) -> apsw.Connection:
    """Read-only, never created: a comparison must not write to a bot's file."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: database not found")
    return apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)


def _columns_of(cfg: Config, names: LegacyNames):  # noqa: ANN202 - a Columns callable
    cache: dict[tuple[str, str], list[str]] = {}

    def columns(source: str, table: str) -> list[str]:
        key = (source, table)
        if key not in cache:
            f = names.source(source)
            conn = open_ro(f.path)
            try:
                cache[key] = [r[1] for r in conn.execute(f"PRAGMA table_info({q(table)})")]
            finally:
                conn.close()
        return cache[key]

    return columns


def percentile(sorted_ns: list[int], p: float) -> float:
    """Nearest rank, in ms: a figure that was measured, never interpolated."""
    rank = max(1, math.ceil(p / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


def _latency(ns: list[int]) -> Latency:
    s = sorted(ns)
    return Latency(percentile(s, 50), percentile(s, 95), percentile(s, 99), len(s))


def _timed(conn: apsw.Connection, sql: str, params: Params) -> tuple[int, list[tuple]]:
    t = time.perf_counter_ns()
    rows = conn.execute(sql, params).fetchall()
    return time.perf_counter_ns() - t, rows


def run_query(
    cfg: Config, names: LegacyNames, spec: QuerySpec, runs: int, budget_ms: float
) -> QueryResult:
    res = QueryResult(spec.name, spec.source, spec.sql, status="error")
    try:
        rw = rewrite(names, spec.source, spec.sql, _columns_of(cfg, names))
    except NotRewritable as e:
        res.status, res.error = "not rewritable", e.message
        return res
    res.consolidated_sql, res.target, res.ordered = rw.sql, rw.target, rw.ordered
    legacy = open_ro(names.source(spec.source).path)
    try:
        target = open_ro(rw.target_path)
    except BaseException:
        legacy.close()
        raise
    try:
        _compare(res, legacy, target, rw, spec, runs)
    except _SideFailed as e:
        # Failing on the legacy file too is the query's own fault, not the move's: it
        # proves nothing either way. Failing only on the consolidated one is a regression.
        res.status = "fails on legacy" if e.side == "legacy" else "error"
        res.error = f"{e.side}: {type(e.error).__name__}: {e.error}"
        return res
    finally:
        legacy.close()
        target.close()
    if not res.same_answer:
        res.status = "wrong answer"
    elif res.consolidated is not None and res.consolidated.p95_ms > budget_ms:
        res.status = "over budget"
    else:
        res.status = "ok"
    return res


def _compare(
    res: QueryResult,
    legacy: apsw.Connection,
    target: apsw.Connection,
    rw: Rewritten,
    spec: QuerySpec,
    runs: int,
) -> None:
    """Runs A B A B (the first of each side is the warm-up, and gives the answers); every
    row is fetched inside the timing, as the application would."""
    times: dict[str, list[int]] = {"legacy": [], "consolidated": []}
    answers: dict[str, list[tuple]] = {}
    sides = (("legacy", legacy, spec.sql), ("consolidated", target, rw.sql))
    for i in range(runs + 1):
        for side, conn, sql in sides:
            try:
                ns, rows = _timed(conn, sql, spec.params)
            except apsw.Error as e:
                raise _SideFailed(side, e) from e
            if i == 0:
                answers[side] = rows
            else:
                times[side].append(ns)
    res.rows_legacy, res.rows_consolidated = len(answers["legacy"]), len(answers["consolidated"])
    res.difference = first_difference(answers["legacy"], answers["consolidated"], rw.ordered)
    res.same_answer = res.difference is None
    if runs > 0:
        res.legacy, res.consolidated = _latency(times["legacy"]), _latency(times["consolidated"])
    res.legacy_plan = explain(legacy, spec.sql, spec.params)
    res.consolidated_plan = explain(target, rw.sql, spec.params)
    res.regressions = regressions(res.legacy_plan, res.consolidated_plan, rw)
    res.suggested_indexes = suggest(legacy, target, rw, res.legacy_plan, res.regressions)


class _SideFailed(Exception):
    def __init__(self, side: str, error: apsw.Error) -> None:
        super().__init__(side, error)
        self.side, self.error = side, error


def run_queries(
    cfg: Config,
    names: LegacyNames,
    queries: list[QuerySpec],
    runs: int = 20,
    budget_ms: float = 500.0,
    recorded_not_run: list[RecordedOnly] | None = None,
) -> QueriesReport:
    report = QueriesReport(runs, budget_ms, recorded_not_run=list(recorded_not_run or []))
    for spec in queries:
        res = run_query(cfg, names, spec, runs, budget_ms)
        report.queries.append(res)
        report.wrong_answers += res.status in ("wrong answer", "error")
        report.over_budget += res.status == "over budget"
        report.not_rewritable += res.status == "not rewritable"
        report.fails_on_legacy += res.status == "fails on legacy"
        report.regressions += len(res.regressions)
    return report


def apply_indexes(cfg: Config, report: QueriesReport) -> list[AppliedIndex]:
    """Create every suggested index on its consolidated file (see
    `query_plans.create_indexes` for why this is safe while the replicator runs). Run the
    queries again afterwards: the plans are re-checked with the indexes there."""
    by_target: dict[str, list[str]] = {}
    for res in report.queries:
        for s in res.suggested_indexes:
            sqls = by_target.setdefault(res.target, [])
            if s.sql not in sqls:
                sqls.append(s.sql)
    out: list[AppliedIndex] = []
    for target, sqls in sorted(by_target.items()):
        made = create_indexes(cfg.targets[target], sqls, cfg.pool.busy_timeout_ms)
        out.extend(AppliedIndex(target, sql, m) for sql, m in zip(sqls, made, strict=True))
    return out


def exit_status(report: QueriesReport) -> str:
    """ "wrong answer" (a wrong answer or an error), "not proven" (a query that could not
    be rewritten, so was never compared: an "ok" would claim what was not checked),
    "over budget", or "ok"."""
    if report.wrong_answers:
        return "wrong answer"
    if report.not_rewritable or report.fails_on_legacy:
        return "not proven"
    return "over budget" if report.over_budget else "ok"


def _one_line(sql: str, width: int) -> str:
    one = " ".join(sql.split())
    return one if len(one) <= width else one[: width - 3] + "..."


__all__ = [
    "QueriesReport",
    "QueryResult",
    "QuerySpec",
    "RecordedStatement",
    "apply_indexes",
    "load_queries",
    "recorded_queries",
    "run_queries",
]
