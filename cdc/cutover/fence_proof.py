"""The cutover's final verification, under the fence, after the drain.

The pass before the fence proved the stage's tables equal while the bots wrote. Under the
fence both sides are quiet, and it would be enough to compare the keys the change log
touched since that pass, if the log saw every change. It does not always: something else
writing to the target, or a legacy file that lost committed transactions, leaves no event.
So every table the pass proved is compared once more on both sides, in one query over both
files where it can (`verifier.digest.join_check`), else counted and digested
(`verifier.digest`); the log only decides which tables need the slower full, key-naming
verification (the pass could not prove them, or their shape changed since). A table whose
digests differ is verified in full as well, so that the cutover's error names its keys.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import apsw
import msgspec

from cdc.capture.fence import FenceMark
from cdc.config import Config
from cdc.planning.plan import Plan, TableMapping
from cdc.stages.record import CutoverRecord
from verifier import verify_tables
from verifier.digest import Prepared, compile_join, cookies, digest_check
from verifier.model import TableResult, VerifyReport
from verifier.table import TableVerifier


def prepare_proofs(cfg: Config, tables: list[TableMapping], conns) -> dict:  # noqa: ANN001
    """Each table's join built before the fence (`verifier.digest.Prepared`), by (source,
    table): reading both schemas for it is most of a table's fixed cost, and under the
    fence it would be pause. Only where the legacy file has its target attached."""
    out: dict[tuple[str, str], Prepared] = {}
    for m in tables:
        joined = conns.joined.get(m.source)
        if joined is None:
            continue
        legacy_cookie, target_cookie = cookies(joined)  # first: see `cookies`
        v = TableVerifier(conns.legacy[m.source], conns.target[m.source], m, cfg.verify)
        if v.prepare() is None:
            out[(m.source, m.table)] = Prepared(v.sides, legacy_cookie, target_cookie)
            # compiled now, with the fences standing: arming them changes no schema
            with contextlib.suppress(apsw.Error):  # else compiled at its first run
                compile_join(v.sides, joined)
    return out


def compile_proofs(conns, source: str) -> None:  # noqa: ANN001
    """Compile the joins built ahead for one legacy file, right after its fence commits
    (`verifier.digest.compile_join`). A failure only leaves the compiling to the proof."""
    joined = conns.joined.get(source)
    for (src, _table), p in conns.prepared.items():
        if src == source and joined is not None:
            try:
                compile_join(p.sides, joined)
            except apsw.Error:
                return


def early_proofs(cfg: Config, rec: CutoverRecord, conns, mark: FenceMark) -> list[TableResult]:  # noqa: ANN001
    """One file's proofs, in its fencing thread, once the target has applied it up to its
    fence (the caller waited): its tables need not wait for the other files' fences and
    drains, and their reads overlap the others' commits. Only the tables the pass before
    the fence proved; `final_verification` decides what else each table needs."""
    source = mark.source
    src, tgt, joined = conns.legacy[source], conns.target[source], conns.joined.get(source)
    out = []
    for (s, table), _p in conns.prepared.items():
        m = _p.sides.m
        if s == source and f"{s}.{table}" in rec.pre_verified:
            out.append(
                digest_check(src, tgt, m, cfg.verify, joined, _ahead(mark, conns.prepared, m))
            )
    return out


def _ahead(mark: FenceMark | None, prepared: dict, m: TableMapping) -> tuple[Prepared, int] | None:
    """A join built ahead and the legacy cookie its file must have now: the one the fence
    left (`FenceMark.schema_after`), when it was built at the cookie the fence found or
    the one it left; else None (the shapes are read again)."""
    p = prepared.get((m.source, m.table))
    if p is None or mark is None or mark.schema_after < 0:
        return None
    if p.legacy_cookie not in (mark.schema_before, mark.schema_after):
        return None
    return p, mark.schema_after


def final_verification(cfg: Config, plan: Plan, rec: CutoverRecord, tables, conns, early=None):  # noqa: ANN001, ANN201
    """Every table of the stage, judged with the legacy side fenced and drained.
    `conns`: the connections opened before the fence (`cdc.cutover.Connections`);
    `early`: proofs made already, under this fence, by (source, table) (`early_proofs`)."""
    early = early or {}
    marks = {f.source: f for f in rec.fences}
    changed = changed_keys(cfg, rec.pre_offset, tables)
    quick = (
        []
        if changed is None
        else [
            m
            for m in tables
            if f"{m.source}.{m.table}" in rec.pre_verified
            and (m.source, m.table) not in changed["reshaped"]
        ]
    )
    full = [m for m in tables if m not in quick]
    by_source: dict[str, list[TableMapping]] = {}
    for m in quick:
        by_source.setdefault(m.source, []).append(m)

    def digests(ms: list[TableMapping]) -> list[TableResult]:  # one thread per legacy file
        source = ms[0].source
        src, tgt, joined = conns.legacy[source], conns.target[source], conns.joined.get(source)
        return [
            early.get((source, m.table))
            or digest_check(
                src, tgt, m, cfg.verify, joined, _ahead(marks.get(source), conns.prepared, m)
            )
            for m in ms
        ]

    proven: list[TableResult] = []
    if by_source:
        with ThreadPoolExecutor(max_workers=min(8, len(by_source))) as pool:
            proven = [r for rs in pool.map(digests, by_source.values()) for r in rs]
    differ = {(r.source, r.table) for r in proven if r.state != "equal"}
    full += [m for m in quick if (m.source, m.table) in differ]
    results = [r for r in proven if (r.source, r.table) not in differ]
    if full:
        results += verify_parallel(cfg, plan, full).tables
    keys = changed.get("keys", {}) if changed else {}
    rec.verified_in_full = len(full)
    rec.keys_checked = sum(len(keys.get((m.source, m.table), [])) for m in quick)
    return VerifyReport(time.time(), time.time(), results)


def changed_keys(cfg: Config, offset: int, tables: list[TableMapping]) -> dict | None:
    """Keys of the stage's tables in the log from `offset` on, and the tables whose shape
    changed (None: the log no longer reaches back there). `offset` was the target's
    checkpoint before the pass started, so every change the pass might have missed and the
    log saw is in it."""
    from cdc import exact_text
    from cdc.changelog.segments import LogReader
    from cdc.errors import LogCorruptError
    from cdc.events import RowBatch, TableSchema

    wanted = {(m.source, m.table) for m in tables}
    reader = LogReader(cfg.log_dir)
    if offset < reader.first_offset():
        return None
    keys: dict[tuple[str, str], dict[bytes, list]] = {}
    reshaped: set[tuple[str, str]] = set()
    try:
        for e in reader.iter_from(offset, stop_at_bad=True):
            f = e.frame
            if isinstance(f, RowBatch) and (f.source, f.table) in wanted:
                d = keys.setdefault((f.source, f.table), {})
                for ev in f.events:
                    d.setdefault(exact_text.pack(ev.key), ev.key)  # keys may hold a RawText
            elif isinstance(f, TableSchema) and (f.source, f.table) in wanted:
                reshaped.add((f.source, f.table))
    except (LogCorruptError, OSError):
        return None
    return {"keys": {k: list(v.values()) for k, v in keys.items()}, "reshaped": reshaped}


def verify_parallel(cfg: Config, plan: Plan, tables: list[TableMapping]):  # noqa: ANN201
    """One pass, unpaced, one thread per legacy file (SQLite reads overlap: apsw lets go of
    the GIL)."""
    settings = msgspec.structs.replace(cfg.verify, rows_per_second=0.0, chunk_rows=5000)
    by_source: dict[str, list[TableMapping]] = {}
    for m in tables:
        by_source.setdefault(m.source, []).append(m)
    with ThreadPoolExecutor(max_workers=min(8, len(by_source))) as pool:
        parts = list(
            pool.map(lambda ms: verify_tables(cfg, plan, ms, settings).report, by_source.values())
        )
    return msgspec.structs.replace(parts[0], tables=[t for p in parts for t in p.tables])
