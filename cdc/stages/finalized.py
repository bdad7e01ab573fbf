"""The tables of finalized stages, put back into a plan for the commands that read the past.

`cdc finalize` replaces a legacy file by its guard, so the plan (which reads the legacy
files) no longer sees the file's tables: history, rebuild and verify would silently cover
nothing of them, although the change log still holds their whole history. The cutover
records say which tables each finalized stage moved and where (`cdc.cutover_state`), and
their shape is in the verified archive copy `cdc finalize` made or, failing that, in the
log's own schema frames. `with_finalized` adds exactly those tables, as they were mapped
when their stage was cut over, to a plan that lacks them; the daemon, `cdc install` and
the cutover steps keep the plain plan, so nothing is captured from a guard.
"""

from __future__ import annotations

import os

import apsw
import msgspec

from cdc.changelog.retained import RetainedLog
from cdc.config import Config
from cdc.errors import ConfigError
from cdc.events import TableSchema
from cdc.guard import MOVED_SUFFIX
from cdc.inventory import TableInfo, list_tables
from cdc.planning.plan import Plan, SourcePlan, TableMapping
from cdc.planning.resolve import _match
from cdc.stages.record import MANIFEST, ArchivedFile, CutoverRecord, read_records

_CACHE = "_with_finalized"


class NothingCovered(ConfigError):
    """A rebuild or verification that would cover no table: it would otherwise write an
    empty database, or verify nothing, and exit 0 as if all was well."""

    exit_code = 2


def finalized_records(state_dir: str) -> list[CutoverRecord]:
    return [r for r in read_records(state_dir) if r.state == "finalized"]


def archived_files(state_dir: str) -> dict[str, ArchivedFile]:
    """source -> its verified archive copy, from every finalized stage's manifest."""
    out: dict[str, ArchivedFile] = {}
    for r in finalized_records(state_dir):
        if not r.archive:
            continue
        try:
            with open(r.archive, "rb") as f:
                files = MANIFEST.decode(f.read()).files
        except (OSError, msgspec.DecodeError):
            continue
        out.update((x.source, x) for x in files)
    return out


def finalized_note(state_dir: str, source: str) -> str:
    """What `cdc verify` says of a finalized table instead of comparing it: the target is
    the live copy, and the legacy side is an archive nobody writes."""
    af = archived_files(state_dir).get(source)
    if af is None:
        return "the legacy file still feeds a stage not finalized; archived once that is"
    return f"legacy archived at {af.archive}; the original is kept at {af.original}{MOVED_SUFFIX}"


def with_finalized(cfg: Config, plan: Plan) -> Plan:
    """`plan` plus every table of a finalized stage that it no longer maps (its legacy file
    is guarded). Cached on the plan; returns `plan` itself when nothing is missing."""
    cached = plan.__dict__.get(_CACHE)
    if cached is not None:
        return cached
    missing: dict[str, list[TableMapping]] = {}
    targets = dict(plan.targets)
    for rec in finalized_records(cfg.state_dir):
        targets.setdefault(rec.target, rec.path)
        for t in rec.tables:
            if plan.mapping(t.source, t.table) is None:
                missing.setdefault(t.source, []).append(_mapping(cfg, rec, t))
    if not missing:
        plan.__dict__[_CACHE] = plan
        return plan
    archived = archived_files(cfg.state_dir)
    known = {sp.name: sp for sp in plan.sources}
    shapes = _shapes(cfg, missing, archived, known)
    sources = []
    for sp in plan.sources:
        if sp.name in missing:
            sp = _source(sp.name, sp.path, missing.pop(sp.name), shapes, sp)
        sources.append(sp)
    for name, tables in sorted(missing.items()):  # a source no longer in the config
        path = archived[name].original if name in archived else ""
        sources.append(_source(name, path, tables, shapes, None))
    out = msgspec.structs.replace(plan, targets=targets, sources=sources)
    out.__dict__[_CACHE] = out
    plan.__dict__[_CACHE] = out
    return out


def _mapping(cfg: Config, rec: CutoverRecord, t) -> TableMapping:  # noqa: ANN001
    """The table as its stage's cutover recorded it; the rule only says whether foreign
    keys were dropped (not recorded)."""
    rule, _ = _match(cfg.rules, t.source, t.table)
    return TableMapping(
        t.source,
        t.table,
        rec.target,
        t.target_table,
        t.tag_column,
        t.tag,
        bool(rule and rule.drop_foreign_keys),
    )


def _source(
    name: str,
    path: str,
    tables: list[TableMapping],
    shapes: dict[tuple[str, str], TableInfo],
    old: SourcePlan | None,
) -> SourcePlan:
    infos = [i for (s, _), i in sorted(shapes.items()) if s == name]
    if old is not None:
        tables = [*old.tables, *tables]
        infos = [*old.infos, *(i for i in infos if old.info(i.name) is None)]
    return SourcePlan(
        name,
        path,
        tables,
        excluded=list(old.excluded) if old else [],
        infos=infos,
        capture=old.capture if old else "triggers",
    )


def _shapes(
    cfg: Config,
    missing: dict[str, list[TableMapping]],
    archived: dict[str, ArchivedFile],
    known: dict[str, SourcePlan],
) -> dict[tuple[str, str], TableInfo]:
    """Each source's tables as the archive copy (else the kept original) holds them; the
    log's newest schema frame for a table no readable copy has."""
    out: dict[tuple[str, str], TableInfo] = {}
    for name in missing:
        copies = []
        if name in archived:
            copies = [archived[name].archive, archived[name].original + MOVED_SUFFIX]
        elif name in known:
            copies = [known[name].path + MOVED_SUFFIX]
        for copy in copies:
            tables = _read_tables(copy)
            if tables is not None:
                out.update(((name, t.name), t) for t in tables if t.kind != "shadow")
                break
    wanted = {(s, m.table) for s, ms in missing.items() for m in ms} - set(out)
    if wanted:
        out.update(_logged_shapes(cfg, wanted))
    return out


def _read_tables(path: str) -> list[TableInfo] | None:
    if not os.path.isfile(path):
        return None
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            return list_tables(conn)
        finally:
            conn.close()
    except apsw.Error:
        return None


def _logged_shapes(cfg: Config, wanted: set[tuple[str, str]]) -> dict:
    """The newest `TableSchema` frame of each wanted table in the retained log."""
    out: dict[tuple[str, str], TableInfo] = {}
    log = RetainedLog.of(cfg)
    for batch in log.batches(log.start()):
        for e in batch:
            f = e.frame
            if isinstance(f, TableSchema) and (f.source, f.table) in wanted:
                out[(f.source, f.table)] = TableInfo(
                    f.table,
                    "table",
                    list(f.columns),
                    list(f.key),
                    f.without_rowid,
                    create_sql=f.create_sql,
                    index_sql=list(f.index_sql),
                )
    return out


def covered(plan: Plan, target: str) -> list[TableMapping]:
    """The tables a rebuild of `target` fills; refuses none (one clear line, exit 2)."""
    tables = [m for sp in plan.sources for m in sp.tables if m.target == target]
    if not tables:
        raise NothingCovered(f"{target}: no table is mapped to it or finalized in it")
    return tables
