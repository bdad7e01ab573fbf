"""Helpers for the jarvis legacy corpus (`../shared/corpus/jarvis` beside the repo root).

The corpus ships the operator's consolidation plan (`plan.json`): per legacy file, per table,
a target database (`core`, `analytics`, `cache` or `exclude`) and a target table name (`as`).
`plan_to_config` turns it into our config dict (`cdc.config.config_from_dict`, or a `cdc.toml`
through `config_to_toml`), one literal rule per (source, table), so that every choice is
reviewable and nothing is matched by accident.

Decisions the conversion makes, whatever `resolve` says:

* `sqlite_*` tables (`sqlite_sequence`, listed in the plan as "exclude") are SQLite's own:
  they get no rule, as our inventory skips them. FTS5 shadow tables (`facts_fts_data`, ...) are
  not in the plan and need no rule either: they belong to their virtual table.
* Virtual tables (`facts_fts`, `reflections_fts`, which the plan maps to analytics) are
  excluded explicitly: triggers cannot capture them, and the FTS index is rebuilt in the
  target from `facts` / `reflections` after cutover. They are found by inspecting the file,
  not by name.
* A file the plan marks `exclude` as a whole (`database.db`, `data/alerts.db`,
  `data/recycle_test.db`) is still declared as a source, with a literal exclude rule for each
  table the plan lists and no catch-all: the files are visible in `cdc status`, nothing in
  them is captured (install skips a source with no mapped table), and a table the plan does
  not list makes `resolve_plan` fail naming it instead of vanishing into a glob.
  `recycle_test.db` holds no table at all, so it resolves to a source with nothing to do.
* A SQLite file under `legacy_root` that the plan does not mention (there is none in the
  shipped corpus; `audit_plan` says so) is declared as a source with no rule: if it holds any
  table, `resolve_plan` fails naming the table and the file, so the operator has to decide.
  A file the plan lists that is missing on disk stays a required source, so `resolve_plan`
  reports it as not found. Neither is ever silently dropped.

With `resolve=False` the table mapping is the plan as written; `resolve_plan` rejects it (four
target tables receive two different source tables). With `resolve=True` the four collisions
are resolved as `RESOLUTIONS` documents.

The last section is what the corpus test files share: where the corpus is (it is read-only:
tests work on a `copy_legacy`), the config they run, the `cdc` CLI, checks on the legacy files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import tomli_w

from cdc.config import Config, config_from_dict, load_config
from cdc.planning.plan import Plan

EXCLUDE = "exclude"
SQLITE_HEADER = b"SQLite format 3\x00"
CONTAINER_DIRS = ("data", "bots")
"""Leading folders that say nothing about a file (dropped from its source name)."""

_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")

RESOLUTIONS: dict[tuple[str, str], str] = {
    ("data/jarvis_admin.db", "users"): "admin_users",
    ("data/sentiment.db", "predictions"): "sentiment_predictions",
    ("data/jarvis_x_memory.db", "interactions"): "x_interactions",
    ("data/memory/long_term.db", "memories"): "long_term_memories",
}
"""(legacy file, table) -> new target table name: the four collisions of plan.json, all renames.

A merge (one target table, a tag column, PRIMARY KEY(tag, key)) is possible in the engine only
where the key column names agree, and even then it changes the table the bots write to after
cutover: its columns are the union of both sources' without types or constraints, and `id` is
no longer a rowid alias, so a bot's `INSERT` without an id stores NULL, the tag must be written,
and AUTOINCREMENT, defaults and UNIQUE constraints are gone. A rename keeps each bot's own
CREATE statement in the target. The side renamed is the one a prefix naming its bot
describes (as the plan already does with `telegram_*`); the other keeps the plain name.

* core.users -> `admin_users` for jarvis_admin.db: jarvis.db `users(id, name, email)` is the
  web app's account table, jarvis_admin.db `users(user_id, username, ..., spam_score,
  is_banned)` the Telegram moderation roster. The keys differ (`id` vs `user_id`), so a merge
  is refused by `resolve_plan` anyway (see `test_merge_is_refused_where_primary_keys_differ`).
* analytics.predictions -> `sentiment_predictions` for sentiment.db: jarvis_memory's
  `predictions(id INTEGER AUTOINCREMENT, prediction, confidence, ...)` are the assistant's own
  forecasts, sentiment.db's `predictions(id TEXT, symbol, sentiment_score, ...)` market calls.
  The key names agree, so the engine would accept a merge, but the key types do not (integer
  vs uuid text) and no other column is shared.
* analytics.interactions -> `x_interactions` for jarvis_x_memory.db: both keys are
  `id INTEGER PRIMARY KEY AUTOINCREMENT`, so a merge is possible, but only `id` and
  `timestamp` are shared: a chat turn (user_input, jarvis_response, feedback, session_id) and
  an X interaction (tweet_id, user_handle, interaction_type) are different records, and both
  bots rely on AUTOINCREMENT, which a merged table drops.
* cache.memories -> `long_term_memories` for memory/long_term.db: ai_memory's `memories(id
  INTEGER AUTOINCREMENT, namespace, key, value, UNIQUE(namespace, key))` vs long_term's
  `memories(id TEXT, content, embedding BLOB, ...)`. Besides being different stores, a merged
  table would lose UNIQUE(namespace, key), which is what makes the ai_memory bot's
  `INSERT OR REPLACE` an upsert: after cutover it would pile up duplicates instead.
"""


def copy_legacy(src: Path, dst: Path) -> Path:
    """Copy the legacy tree (databases and their -wal files) into `dst`, writable.

    `shutil.copytree` would copy the fixtures' read-only modes (a read-only folder stops SQLite
    from creating a journal), so files are copied by content only. `-shm` files are skipped:
    they are a rebuildable index of the -wal, never data.
    """
    for dirpath, _dirs, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            if not f.endswith("-shm"):
                shutil.copyfile(Path(dirpath) / f, dst / rel / f)
    return dst


def source_name(rel_path: str) -> str:
    """A source name from a path: `data/jarvis_admin.db` -> `jarvis_admin`.

    Leading `CONTAINER_DIRS` are dropped (`bots/twitter/engagement.db` -> `twitter_engagement`),
    the other folders joined with `_`, and characters a name may not hold become `_`.
    """
    parts = list(PurePosixPath(rel_path).with_suffix("").parts)
    while len(parts) > 1 and parts[0] in CONTAINER_DIRS:
        parts.pop(0)
    return _clean("_".join(parts))


def source_names(rel_paths: list[str]) -> dict[str, str]:
    """A unique, valid source name per path; colliding short names fall back to the full path."""
    short = {p: source_name(p) for p in rel_paths}
    counts: dict[str, int] = {}
    for n in short.values():
        counts[n] = counts.get(n, 0) + 1
    out = {
        p: n if counts[n] == 1 else _clean("_".join(PurePosixPath(p).with_suffix("").parts))
        for p, n in short.items()
    }
    if len(set(out.values())) != len(out):
        dup = sorted(n for n in set(out.values()) if list(out.values()).count(n) > 1)
        raise ValueError(f"cannot derive unique source names: {dup}")
    return out


def _clean(name: str) -> str:
    name = _NAME_OK.sub("_", name)
    return name if re.match(r"[A-Za-z0-9_]", name) else "_" + name


def is_sqlite_file(path: Path) -> bool:
    if not path.is_file() or path.name.endswith(("-wal", "-shm", "-journal")):
        return False
    with open(path, "rb") as f:
        return f.read(16) == SQLITE_HEADER


@dataclass(frozen=True)
class TableShape:
    name: str
    kind: str  # "table", "virtual" or "shadow"
    columns: tuple[str, ...] = ()
    key: tuple[str, ...] = ()


def read_tables(path: Path) -> dict[str, TableShape]:
    """Every table of the main schema, read with Python's sqlite3 (independently of `cdc`)."""
    uri = f"file:{path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        out = {}
        for name, kind in conn.execute(
            "SELECT name, type FROM pragma_table_list WHERE schema='main' "
            "AND type IN ('table','virtual','shadow') ORDER BY name"
        ):
            cols: tuple[str, ...] = ()
            key: tuple[str, ...] = ()
            if kind == "table":
                info = conn.execute(
                    "SELECT name, pk FROM pragma_table_xinfo(?) WHERE hidden=0 ORDER BY cid",
                    (name,),
                ).fetchall()
                cols = tuple(c[0] for c in info)
                key = tuple(c[0] for c in sorted((c for c in info if c[1]), key=lambda c: c[1]))
            out[name] = TableShape(name, kind, cols, key)
        return out


def is_internal(name: str) -> bool:
    """SQLite's own tables (`sqlite_sequence`, ...) and the capture tables `cdc` installs."""
    return name.lower().startswith(("sqlite_", "_cdc_"))


@dataclass
class PlanAudit:
    """plan.json checked against the files under `legacy_root`."""

    listed: list[str] = field(default_factory=list)  # plan paths, in plan order
    unlisted_files: list[str] = field(default_factory=list)  # on disk, not in the plan
    missing_files: list[str] = field(default_factory=list)  # in the plan, not on disk
    unplanned_tables: list[tuple[str, str]] = field(default_factory=list)  # on disk, no entry
    stale_tables: list[tuple[str, str]] = field(default_factory=list)  # in the plan, not on disk
    virtual_tables: list[tuple[str, str]] = field(default_factory=list)
    excluded_files: list[str] = field(default_factory=list)  # DB-level target "exclude"
    collisions: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    inconsistent: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    tables: dict[str, dict[str, TableShape]] = field(default_factory=dict)


def audit_plan(plan_json: dict, legacy_root: Path) -> PlanAudit:
    """Compare the plan with the files: what it misses, what it names wrongly, what collides.

    A collision is a target table receiving more than one source table; it is inconsistent
    when their columns (names, order or key) differ.
    """
    legacy_root = Path(legacy_root)
    dbs = plan_json["databases"]
    a = PlanAudit(listed=list(dbs))
    on_disk = sorted(
        p.relative_to(legacy_root).as_posix() for p in legacy_root.rglob("*") if is_sqlite_file(p)
    )
    a.unlisted_files = [p for p in on_disk if p not in dbs]
    for rel, entry in dbs.items():
        if entry.get("target") == EXCLUDE:
            a.excluded_files.append(rel)
        path = legacy_root / rel
        if not path.exists():
            a.missing_files.append(rel)
            continue
        tables = read_tables(path)
        a.tables[rel] = tables
        planned = entry.get("tables", {})
        for name, shape in tables.items():
            if shape.kind == "virtual":
                a.virtual_tables.append((rel, name))
            if shape.kind != "shadow" and not is_internal(name) and name not in planned:
                a.unplanned_tables.append((rel, name))
        for name, rule in planned.items():
            if name not in tables and not is_internal(name):
                a.stale_tables.append((rel, name))
            if rule["target"] == EXCLUDE or name not in tables or is_internal(name):
                continue
            if tables[name].kind != "table":
                continue
            key = (rule["target"], rule.get("as") or name)
            a.collisions.setdefault(key, []).append((rel, name))
    a.collisions = {k: v for k, v in a.collisions.items() if len(v) > 1}
    for key, members in a.collisions.items():
        shapes = {(a.tables[r][t].columns, a.tables[r][t].key) for r, t in members}
        if len(shapes) > 1:
            a.inconsistent[key] = members
    return a


def plan_to_config(plan_json: dict, legacy_root: Path, out_root: Path, resolve: bool) -> dict:
    """The config dict for the operator's plan (see the module docstring for the decisions).

    Targets are `out_root/<name>.db`, the state dir `out_root/cdc-state`; all paths absolute.
    With `resolve=True`, `RESOLUTIONS` renames one side of each collision; a collision it does
    not cover, or a resolution that no longer matches a collision of the plan, is an error
    (so the resolutions cannot silently go stale when the plan changes).
    """
    legacy_root, out_root = Path(legacy_root), Path(out_root)
    audit = audit_plan(plan_json, legacy_root)
    dbs = plan_json["databases"]
    if resolve:
        covered = {(rel, t) for members in audit.inconsistent.values() for rel, t in members}
        stale = [k for k in RESOLUTIONS if k not in covered]
        if stale:
            raise ValueError(f"resolutions for tables that no longer collide: {stale}")
        for key, members in audit.collisions.items():
            if sum(1 for m in members if m not in RESOLUTIONS) > 1:
                raise ValueError(f"unresolved collision on {key[0]}.{key[1]}: {members}")
    virtual = set(audit.virtual_tables)
    names = source_names([*dbs, *audit.unlisted_files])
    targets = sorted(
        {e["target"] for e in dbs.values()}
        | {r["target"] for e in dbs.values() for r in e.get("tables", {}).values()}
    )
    targets = [t for t in targets if t != EXCLUDE]

    sources: list[dict] = []
    rules: list[dict] = []
    for rel, entry in dbs.items():
        name = names[rel]
        sources.append({"name": name, "path": str(legacy_root / rel)})
        for table, r in entry.get("tables", {}).items():
            if is_internal(table):
                continue
            rule: dict = {"source": name, "table": table}
            if r["target"] == EXCLUDE or (rel, table) in virtual:
                rule["exclude"] = True
            else:
                as_name = r.get("as") or table
                if resolve:
                    as_name = RESOLUTIONS.get((rel, table), as_name)
                rule["target"] = r["target"]
                rule["as"] = as_name
            rules.append(rule)
    for rel in audit.unlisted_files:  # declared, with no rule: resolve_plan names its tables
        sources.append({"name": names[rel], "path": str(legacy_root / rel)})
    return {
        "state_dir": str(out_root / "cdc-state"),
        "targets": {t: str(out_root / f"{t}.db") for t in targets},
        "sources": sources,
        "rules": rules,
    }


def config_to_toml(cfg: dict) -> str:
    """Render a config dict (as `plan_to_config` makes it, plus optional `daemon`) as TOML."""
    return tomli_w.dumps(cfg)


# -- shared by the corpus tests (tests/test_corpus*.py) ---------------------------------------

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "jarvis"
REPO = Path(__file__).resolve().parents[2]
DAEMON = {"poll_interval": 0.05, "trim_interval": 0.2}
WAIT = 30.0  # seconds; each wait polls, this is only the give-up bound


def corpus_root() -> Path:
    """`CORPUS`, or skip the test that needs it when it is not beside the repo."""
    if not (CORPUS / "plan.json").is_file() or not (CORPUS / "legacy").is_dir():
        pytest.skip(f"jarvis corpus not found at {CORPUS} (expected ../shared beside the repo)")
    return CORPUS


def read_plan_json(corpus: Path) -> dict:
    return json.loads((corpus / "plan.json").read_text(encoding="utf-8"))


def read_manifest(corpus: Path) -> dict[str, dict[str, int]]:
    """Row counts per legacy file and table, as the corpus ships them."""
    data = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    return {d["path"]: d["tables"] for d in data["databases"]}


def make_config(plan_json: dict, legacy: Path, out: Path, resolve: bool):
    data = plan_to_config(plan_json, legacy, out, resolve)
    data["daemon"] = dict(DAEMON)
    out.mkdir(parents=True, exist_ok=True)
    return data, config_from_dict(data, out)


def write_resolved_config(plan_json: dict, legacy: Path, out: Path) -> tuple[Path, Config]:
    """The resolved plan as a real `cdc.toml` in `out`, and the config loaded from it."""
    data, _ = make_config(plan_json, legacy, out, resolve=True)
    toml = out / "cdc.toml"
    toml.write_text(config_to_toml(data), encoding="utf-8")
    return toml, load_config(toml)


def sqlite_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_sqlite_file(p))


def cdc_objects(legacy: Path) -> list[tuple[str, str]]:
    """Every object sqlite-cdc could have added to a legacy file."""
    found = []
    for p in sqlite_files(legacy):
        with contextlib.closing(sqlite3.connect(f"file:{p}?mode=ro", uri=True)) as c:
            rows = c.execute(
                "SELECT name FROM sqlite_master WHERE name LIKE '\\_cdc\\_%' ESCAPE '\\'"
            )
            found += [(p.relative_to(legacy).as_posix(), r[0]) for r in rows]
    return found


def assert_nothing_orphaned(plan: Plan, plan_json: dict, legacy: Path) -> None:
    """Every table of every legacy file is mapped or excluded (read independently of `cdc`)."""
    names = source_names(list(plan_json["databases"]))
    files = sorted(p.relative_to(legacy).as_posix() for p in sqlite_files(legacy))
    assert sorted(names) == files, "a legacy file is missing from the plan (or vice versa)"
    for rel in files:
        sp = plan.source(names[rel])
        assert Path(sp.path) == legacy / rel, (sp.path, rel)
        handled = {m.table for m in sp.tables} | set(sp.excluded) | set(sp.uncapturable)
        for name, shape in read_tables(legacy / rel).items():
            if is_internal(name) or shape.kind == "shadow":
                continue
            assert name in handled, f"{rel}: table {name} is neither mapped nor excluded"
        assert not (set(sp.excluded) & {m.table for m in sp.tables}), (rel, sp.excluded)


def spawn_daemon(toml: Path, log: Path) -> subprocess.Popen:
    """`cdc run` as its own process, output into `log`."""
    with open(log, "wb") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", "cdc", "run", "-c", str(toml)],
            cwd=REPO,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )


def run_cli(*args: object, timeout: float = WAIT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cdc", args[0], "-c", str(args[1]), *map(str, args[2:])]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def plan_to_mapping(plan_json: dict, rows: list, resolve: bool) -> list:
    """Fill the inventory's `migration_mapping.csv` rows (`cdc.mapping.MappingRow`) from
    plan.json: its target and `as` per table, `exclude` as written. With `resolve`, the four
    collisions get `RESOLUTIONS`. A table plan.json does not list keeps an empty target (the
    plan then names it as unmapped)."""
    import msgspec

    dbs = plan_json["databases"]
    out = []
    for r in rows:
        entry = dbs.get(r.database, {})
        rule = entry.get("tables", {}).get(r.table)
        if rule is None:
            out.append(r)
            continue
        as_name = rule.get("as") or r.table
        if resolve:
            as_name = RESOLUTIONS.get((r.database, r.table), as_name)
        target = rule["target"]
        out.append(
            msgspec.structs.replace(
                r,
                target=target,
                as_="" if target == EXCLUDE or as_name == r.table else as_name,
                note=rule.get("note", ""),
            )
        )
    return out
