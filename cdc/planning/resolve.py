"""Resolving the plan: every table of every legacy file, mapped to a target or excluded.

This is where invariant 3 lives: a table matched by no rule is an error that names it,
two tables landing in one target table must be a declared merge, and the problems are all
reported at once so an operator fixes the config in one pass, before a row is copied.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time

import apsw

from cdc import own_objects
from cdc.changelog import bigrows
from cdc.config import MAX_NAME_BYTES, Config, RuleConfig, expand_sources
from cdc.errors import PlanError, SourceError
from cdc.fsutil import safe_component
from cdc.guard import is_guard, is_guard_conn
from cdc.inventory import TableInfo, affinity, list_tables, rowid_note
from cdc.planning import ddl, pg_ddl
from cdc.planning.plan import Plan, SourcePlan, TableMapping
from cdc.postgres.dsn import is_postgres
from cdc.sqlconn import open_legacy

log = logging.getLogger(__name__)

LOCKED_START_WAIT = 600.0  # seconds a starting daemon waits for a source a bot keeps locked


PG_REFUSED = "does not translate to PostgreSQL"


def resolve_plan(
    cfg: Config, inventories: dict[str, list[TableInfo]] | None = None, strict: bool = True
) -> Plan:
    """Match every table of every source against the rules; raise PlanError listing all problems.

    With `strict=False` the problems are returned in the plan instead (for `cdc status`,
    which must keep working when a bot creates an unmapped table on a live system).
    """
    problems: list[str] = []
    unmapped: list[tuple[str, str]] = []
    busy: list[str] = []
    claims: dict[str, list[str]] = {}  # objects bearing our names: refused where we install
    sources = _read_sources(cfg, inventories, problems, busy, claims)
    plans = []
    landing: dict[tuple[str, str], list[tuple[TableMapping, RuleConfig]]] = {}
    for name, path, tables in sources:
        sp = _map_source(cfg, name, path, tables, landing, problems, unmapped)
        if sp.tables or sp.fts:  # nothing is installed in a file with nothing to capture
            problems.extend(claims.get(name, []))
        plans.append(sp)

    infos = {(n, t.name): t for n, _, ts in sources for t in ts}
    for (target, ttable), entries in sorted(landing.items()):
        if len(entries) < 2 and not entries[0][1].merge:
            continue
        problems.extend(_check_merge(target, ttable, entries, infos))
    for sp in plans:
        problems.extend(_check_foreign_keys(sp))
        problems.extend(own_objects.target_problems([*sp.tables, *sp.fts]))
    plan = Plan(targets=dict(cfg.targets), sources=plans)
    problems.extend(ddl.check_names(plan))
    problems.extend(bigrows.width_problems(plan))  # tables a target cannot hold
    problems.extend(  # what a PostgreSQL target cannot make as the legacy table behaves
        f"{t}: {r}: {PG_REFUSED} (`cdc docs postgres`)"
        for t, where in sorted(plan.targets.items())
        if is_postgres(where)
        for r in pg_ddl.refusals(plan, t)
    )
    if problems and not strict:
        return Plan(
            targets=dict(cfg.targets),
            sources=plans,
            problems=problems,
            unmapped=unmapped,
            busy=busy,
        )
    if problems:
        # One problem is one line (the CLI's `error:` line); several are listed under it.
        sep = " " if len(problems) == 1 else "\n  - "
        raise PlanError(
            f"{cfg.config_path or 'config'}: {len(problems)} problem(s) in the table mapping:"
            + sep
            + "\n  - ".join(problems)
        )
    return plan


def _read_sources(
    cfg: Config,
    inventories: dict[str, list[TableInfo]] | None,
    problems: list[str],
    busy: list[str],
    claims: dict[str, list[str]],
) -> list[tuple[str, str, list[TableInfo]]]:
    """Every declared source that names a file: (name, path, its tables); a finalized or
    locked one has none. What is wrong with a declaration goes to `problems`."""
    sources: list[tuple[str, str, list[TableInfo]]] = []
    seen: dict[str, str] = {}
    for name, path, required in expand_sources(cfg):
        if ("{stem}" in name or any(c in path for c in "*?[")) and not os.path.lexists(path):
            # (a file the glob matched may itself be called `bot[1].db`: it exists)
            problems.append(f"{_source_key(cfg, path)} glob {path!r} matches no file")
            continue
        # A name becomes part of file names in the state dir: never `..` or hidden (cannot
        # happen while names start with a letter, config.py), never too long for one.
        if not safe_component(name) or len(name.encode()) > MAX_NAME_BYTES:
            why = "is too long" if safe_component(name) else "cannot name a source"
            problems.append(
                f"{_source_key(cfg, path)}: file {path} gives the source name {name!r}, "
                f"which {why} (it becomes part of file names in the state dir, at most "
                f"{MAX_NAME_BYTES} bytes): rename the file"
            )
            continue
        if name in seen:
            problems.append(f"source name {name!r} given to both {seen[name]} and {path}")
            continue
        seen[name] = path
        if inventories is not None and name in inventories:
            tables = inventories[name]
        else:
            tables = _read_source(cfg, name, path, required, problems, busy, claims)
            if tables is None:
                continue
        sources.append((name, path, tables))
    return sources


def _read_source(
    cfg: Config,
    name: str,
    path: str,
    required: bool,
    problems: list[str],
    busy: list[str],
    claims: dict[str, list[str]],
) -> list[TableInfo] | None:
    """The tables of one source file ([]: finalized or locked), None: leave it out."""
    if not os.path.exists(path) and not required:
        return None
    try:
        # SQLite first: reading the file with a plain open() and close() would drop
        # every POSIX lock this process holds on it (the running daemon's harvest
        # and verifier connections: a bot could then write under our read, or
        # think it is the last user of a WAL file). Only a file SQLite refuses can
        # be a guard, and no SQLite connection holds locks on that.
        conn = open_legacy(path, cfg.daemon.busy_timeout_ms, readonly=True)
        try:
            if is_guard_conn(conn):  # finalized: the data moved (cdc.guard)
                return []
            tables = list_tables(conn)
            claims[name] = own_objects.claim_problems(conn, name, path)
            if cfg.capture_of(name) == "hooks":
                problems.extend(_check_hooks(conn, name))
        finally:
            conn.close()
    except apsw.BusyError as e:  # a bot's long write transaction: not a mapping fault
        busy.append(name)
        problems.append(f"source {name!r} ({path}): locked by another process: {e}")
        return []
    except Exception as e:  # noqa: BLE001 - reported with the others
        if is_guard(path):  # finalized: the data moved (cdc.guard), nothing to map
            return []
        problems.append(f"source {name!r}: {e}")
        return None
    return tables


def _map_source(
    cfg: Config,
    name: str,
    path: str,
    tables: list[TableInfo],
    landing: dict[tuple[str, str], list[tuple[TableMapping, RuleConfig]]],
    problems: list[str],
    unmapped: list[tuple[str, str]],
) -> SourcePlan:
    """One source's tables matched against the rules; where each lands goes to `landing`
    (for the merge checks), what is wrong to `problems`."""
    mapped, excluded, uncapturable = [], [], []
    virtuals: list[tuple[TableInfo, RuleConfig | None]] = []
    for t in tables:
        if t.kind == "shadow":
            continue  # belongs to its virtual table
        rule, err = _match(cfg.rules, name, t.name)
        if err:
            problems.append(err)
            continue
        if t.kind == "virtual":
            virtuals.append((t, rule))  # decided once the content tables are mapped
            continue
        if rule is None:
            unmapped.append((name, t.name))
            problems.append(
                f"table {t.name!r} of source {name!r} ({path}) is matched by no rule: "
                "map it to a target or exclude it"
            )
            continue
        if rule.exclude:
            excluded.append(t.name)
            continue
        m = _mapping(rule, name, t.name, is_postgres(cfg.targets.get(rule.target or "", "")))
        problems.extend(_table_problems(t, rule, name, path))
        landing.setdefault((m.target, m.target_table.lower()), []).append((m, rule))
        mapped.append(m)
    fts = []
    for t, rule in virtuals:
        if rule is not None and rule.exclude:
            uncapturable.append(t.name)
            continue
        m, err = _virtual_mapping(t, rule, name, path, mapped)
        if err:
            problems.append(err)
            continue
        landing.setdefault((m.target, m.target_table.lower()), []).append((m, rule or _FOLLOW))
        fts.append(m)
    visible = [t for t in tables if t.kind != "shadow"]
    return SourcePlan(
        name, path, mapped, excluded, uncapturable, fts, visible, cfg.capture_of(name)
    )


def _table_problems(t: TableInfo, rule: RuleConfig, name: str, path: str) -> list[str]:
    """What keeps table `t` of source `name` from being copied as `rule` says."""
    out = []
    if rowid_note(t):
        out.append(f"table {t.name!r} of source {name!r} ({path}): {rowid_note(t)}")
    if rule.merge and not t.key:
        out.append(
            f"table {t.name!r} of source {name!r}: a merge needs a declared primary "
            "key (this table is identified only by its rowid)"
        )
    for col in rule.postgres_types:
        if col not in t.column_names:
            out.append(
                f"table {t.name!r} of source {name!r}: `postgres_types` names no column "
                f"{col!r} (columns: {', '.join(t.column_names)})"
            )
    if rule.merge and rule.tag_column in t.column_names:
        out.append(
            f"table {t.name!r} of source {name!r} already has a column "
            f"{rule.tag_column!r}: choose another `tag_column`"
        )
    return out


def _source_key(cfg: Config, path: str) -> str:
    """`sources[i].path` of the declaration a (glob-expanded) path comes from."""
    for i, s in enumerate(cfg.sources):
        if s.path == path or fnmatch.fnmatchcase(path, s.path):
            return f"`sources[{i}].path`"
    return "source"


def review_plan(cfg: Config) -> Plan:
    """The plan for the commands that show what a PostgreSQL target cannot make rather than
    stop at it (`cdc check` lists it with the values that do not fit, `cdc schema` writes
    it marked REFUSED): lenient for those problems only, strict (PlanError) for any other."""
    plan = resolve_plan(cfg, strict=False)
    if any(PG_REFUSED not in p for p in plan.problems):
        return resolve_plan(cfg)
    return plan


def excluded_by_rule(cfg: Config, source: str, table: str) -> bool:
    rule, _ = _match(cfg.rules, source, table)
    return rule is not None and rule.exclude


def daemon_plan(cfg: Config, stop: threading.Event | None = None) -> Plan:
    """The plan a (re)starting daemon runs: strict, except for tables no rule matches, and
    patient with a source a bot keeps locked.

    `cdc install` and `cdc check` refuse an unmapped table, so one found later appeared
    after installation (a bot's start-up `CREATE TABLE IF NOT EXISTS`). Refusing to start
    would stop every other table of every source over it, and a supervisor would turn that
    into a restart loop; instead it is left uncaptured and named, loudly and repeatedly, by
    the daemon's log, `cdc status` and the metrics (invariant 3: never silently).

    A source locked past the busy timeout (a bot holding a long write transaction) is
    waited for, up to `LOCKED_START_WAIT` s: a mapping error (exit 3, which a supervisor
    does not restart) would leave replication down over a bot's slow transaction."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + LOCKED_START_WAIT
    plan = resolve_plan(cfg, strict=False)
    said: set[str] = set()
    while plan.busy and time.monotonic() < deadline and not stop.is_set():
        for name in sorted(set(plan.busy) - said):
            log.warning("source %s is locked by another process: waiting for it", name)
        said |= set(plan.busy)
        stop.wait(0.5)
        plan = resolve_plan(cfg, strict=False)
    if plan.busy:
        raise SourceError(
            f"source(s) {', '.join(plan.busy)} stayed locked while the daemon started",
            hint="a bot holds a write transaction that long; the daemon can start once it ends",
        )
    if plan.problems and not plan.unmapped_only():
        return resolve_plan(cfg)  # raises PlanError listing every problem
    return plan


def _check_hooks(conn, source: str) -> list[str]:  # noqa: ANN001 - apsw.Connection
    """Hook capture turns triggers off on the pool's connections (cdc.hooks): a file with
    triggers of its own would see them silently skipped for every pool write."""
    own = [
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger' ORDER BY name")
        if not own_objects.is_own_trigger(r[0])
    ]
    if not own:
        return []
    return [
        f'source {source!r} has triggers of its own ({", ".join(own)}): `capture = "hooks"` '
        "would skip them for writes through the pool; use trigger capture for it"
    ]


_FOLLOW = RuleConfig(table="*")  # an FTS table no rule names: it follows its content table


def _mapping(rule: RuleConfig, source: str, table: str, rows_only: bool = False) -> TableMapping:
    as_name = (rule.as_ or table).replace("{table}", table).replace("{source}", source)
    return TableMapping(
        source=source,
        table=table,
        target=rule.target or "",
        target_table=as_name,
        tag_column=rule.tag_column if rule.merge else None,
        tag=(rule.tag or source) if rule.merge else None,
        drop_foreign_keys=rule.drop_foreign_keys,
        pg_types=dict(rule.postgres_types),
        rows_only=rows_only,
    )


def _virtual_mapping(
    t: TableInfo, rule: RuleConfig | None, source: str, path: str, mapped: list[TableMapping]
) -> tuple[TableMapping | None, str | None]:
    """Where a virtual table goes. Triggers cannot capture one; an external-content FTS
    table is derived data, so it is re-created in its content table's target and rebuilt
    from it there (docs/config.md). Anything else must be excluded, by name."""
    what = f"virtual table {t.name!r} of source {source!r}"
    if t.content_table is None:
        if rule is None:
            return None, (
                f"table {t.name!r} of source {source!r} ({path}) is matched by no rule: "
                "map it to a target or exclude it"
            )
        kind = f"a {t.module} table" if t.module else "a virtual table"
        return None, (
            f"{what} is {kind} that keeps its own rows: triggers cannot capture it; "
            "exclude it (`exclude = true`) and rebuild it in the target"
        )
    content = next((m for m in mapped if m.table.lower() == t.content_table.lower()), None)
    if content is None:
        return None, (
            f"{what} indexes {t.content_table!r}, which is not copied: "
            f"exclude {t.name!r} too, or map {t.content_table!r}"
        )
    if content.tag_column is not None:
        return None, (
            f"{what} indexes {t.content_table!r}, a merged table (its rowids are not unique "
            f"there): exclude {t.name!r}"
        )
    if rule is None:
        rule = RuleConfig(table=t.name, target=content.target)
    m = _mapping(rule, source, t.name)
    if rule.merge:
        return None, f"{what}: an FTS table cannot be merged"
    if m.target != content.target:
        return None, (
            f"{what} goes to {m.target!r} but its content table {t.content_table!r} goes to "
            f"{content.target!r}: an FTS table is rebuilt from its content, in the same target"
        )
    return m, None


def _check_foreign_keys(sp: SourcePlan) -> list[str]:
    """A foreign key that cannot hold in the target is refused unless the rule drops it: a
    bot running with `foreign_keys=ON` would otherwise fail every write after cutover."""
    problems = []
    for m in sp.tables:
        info = sp.info(m.table)
        if info is None or m.drop_foreign_keys or m.tag_column is not None:
            continue  # dropped on purpose, or a merged table (no constraints at all)
        for fk in info.foreign_keys:
            cols = ", ".join(fk.columns)
            head = f"foreign key {sp.name}.{m.table}({cols}) -> {fk.ref_table}"
            parent = sp.mapping_of(fk.ref_table)
            if parent is None:
                why = "is not copied" if sp.info(fk.ref_table) else "does not exist"
                problems.append(
                    f"{head}: {fk.ref_table!r} {why}, so the key would point at nothing in "
                    f"{m.target!r}; map it to {m.target!r} or set `drop_foreign_keys` on the "
                    f"rule of {m.table!r}"
                )
            elif parent.target != m.target:
                problems.append(
                    f"{head}: crosses targets ({m.table!r} goes to {m.target!r}, "
                    f"{fk.ref_table!r} to {parent.target!r}); move one, or set "
                    f"`drop_foreign_keys` on the rule of {m.table!r}"
                )
            elif parent.tag_column is not None:
                problems.append(
                    f"{head}: {fk.ref_table!r} is merged into {parent.target}."
                    f"{parent.target_table} (key now includes {parent.tag_column!r}), so "
                    f"the key cannot hold; set `drop_foreign_keys` on the rule of {m.table!r}"
                )
    return problems


def _check_merge(target, ttable, entries, infos) -> list[str]:
    names = ", ".join(f"{m.source}.{m.table}" for m, _ in entries)
    ttable = entries[0][0].target_table
    named = [(f"{m.source}.{m.table}", infos.get((m.source, m.table))) for m, _ in entries]
    members = [i for _, i in named]
    diff = differences(named)
    if not all(r.merge for _, r in entries):
        what = f" ({'; '.join(diff)})" if diff else " (their columns agree)"
        return [
            f"{target}.{ttable} receives {names}{what}: rename one (`as`) or declare "
            "`merge = true` with a `tag_column` on every rule involved"
        ]
    problems = []
    if len({r.tag_column for _, r in entries}) > 1:
        problems.append(f"{target}.{ttable}: merged rules disagree on `tag_column` ({names})")
    tags = [m.tag for m, _ in entries]
    if len(set(tags)) != len(tags):
        problems.append(f"{target}.{ttable}: two merged tables share one tag ({names})")
    if any(i is None or i.kind != "table" for i in members):
        return problems
    keys = {tuple(i.key) for i in members}
    if len(keys) > 1:
        problems.append(
            f"{target}.{ttable}: merged tables have different primary keys "
            f"({'; '.join(','.join(k) for k in sorted(keys))})"
        )
    clash = _type_clashes(named)
    if clash:
        problems.append(
            f"{target}.{ttable}: merged tables disagree on column types ({'; '.join(clash)}): "
            "one column would hold two kinds of value; rename one side (`as`)"
        )
    return problems


def differences(members: list[tuple[str, TableInfo | None]]) -> list[str]:
    """What tells tables apart, in words an operator can act on: key, columns only one
    side has, declared types that disagree."""
    known = [(n, i) for n, i in members if i is not None and i.kind == "table"]
    if len(known) < 2:
        return []
    out = []
    keys = {n: tuple(i.key) for n, i in known}
    if len(set(keys.values())) > 1:
        out.append(
            "keys differ: " + ", ".join(f"{n}({','.join(k) or 'rowid'})" for n, k in keys.items())
        )
    cols = {n: {c.name.lower(): c for c in i.columns} for n, i in known}
    every = set.intersection(*(set(c) for c in cols.values()))
    for n, c in cols.items():
        only = [c[k].name for k in c if k not in every]
        if only:
            out.append(f"only in {n}: {', '.join(only)}")
    out.extend(_type_clashes(known))
    return out


def _type_clashes(members: list[tuple[str, TableInfo]]) -> list[str]:
    cols = {n: {c.name.lower(): c for c in i.columns} for n, i in members}
    every = set.intersection(*(set(c) for c in cols.values()))
    out = []
    for k in sorted(every):
        aff = {n: affinity(c[k].decl_type) for n, c in cols.items()}
        if len(set(aff.values())) > 1:
            name = next(iter(cols.values()))[k].name
            out.append(f"{name} is " + " vs ".join(f"{a} in {n}" for n, a in aff.items()))
    return out


def _specificity(rule: RuleConfig) -> int:
    lit = lambda s: not any(c in s for c in "*?[")  # noqa: E731
    return 2 * lit(rule.table) + lit(rule.source)


def _match(rules: list[RuleConfig], source: str, table: str):
    hits = [
        (i, r)
        for i, r in enumerate(rules)
        if fnmatch.fnmatchcase(source, r.source) and fnmatch.fnmatchcase(table, r.table)
    ]
    if not hits:
        return None, None
    best = max(_specificity(r) for _, r in hits)
    top = [(i, r) for i, r in hits if _specificity(r) == best]
    if len(top) > 1:
        which = ", ".join(f"rules[{i}]" for i, _ in top)
        return None, f"table {table!r} of source {source!r} is matched by {which} equally: keep one"
    return top[0][1], None
