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

import time
from concurrent.futures import ThreadPoolExecutor

import msgspec

from cdc.config import Config
from cdc.planning.plan import Plan, TableMapping
from cdc.stages.record import CutoverRecord
from verifier import verify_tables
from verifier.digest import digest_check
from verifier.model import TableResult, VerifyReport


def final_verification(cfg: Config, plan: Plan, rec: CutoverRecord, tables, conns):  # noqa: ANN001, ANN201
    """Every table of the stage, judged with the legacy side fenced and drained.
    `conns`: the connections opened before the fence (`cdc.cutover.Connections`)."""
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
        return [digest_check(src, tgt, m, cfg.verify, joined) for m in ms]

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
