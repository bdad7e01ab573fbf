"""The operator's configuration (`cdc.toml`), decoded and checked with msgspec.

Decoding catches type and key mistakes with the key path; `_check` catches the mistakes that
are well-typed but meaningless (a rule naming an unknown target, a merge with no target).
Everything that needs the legacy files themselves (globs, orphans, collisions) is checked
later, when the plan is resolved against the files (see `cdc.plan`).
All paths are made absolute relative to the config file's folder, so the daemon does not
depend on the directory it was started from.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import tomllib
from pathlib import Path

import msgspec

from cdc.errors import CdcError, ConfigError, SourceError, TargetError
from cdc.postgres.dsn import is_postgres
from cdc.postgres.dsn import problems as pg_problems

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-{}]*$")
# Source and target names become parts of file names (`control/pause-harvest.<source>`,
# `cutover/<target>.json`): with the longest prefix and suffix they stay under the usual
# 255-byte limit of a file name. A `{stem}` source's expanded name is checked by the plan.
MAX_NAME = 128
MAX_NAME_BYTES = 200


class SourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A legacy database, or a glob of them.

    With a glob, `name` must contain `{stem}` (the file name without extension) so that each
    matched file gets its own source name.
    """

    name: str
    path: str
    required: bool = True
    capture: str = "triggers"  # or "hooks": writers using `cdc.pool` are captured in-process


class RuleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"as_": "as"}):
    """Where a legacy table goes.

    `source` and `table` are globs (fnmatch). A rule whose table pattern has no glob
    characters is more specific than one that has; the most specific matching rule wins and
    two equally specific matches are an error.
    """

    table: str
    source: str = "*"
    target: str | None = None
    as_: str | None = None
    exclude: bool = False
    merge: bool = False
    tag_column: str = "source"
    tag: str | None = None
    drop_foreign_keys: bool = False  # drop FKs that cannot hold in the target (docs/config.md)
    # a PostgreSQL target: column -> its type instead of the one its affinity maps to
    postgres_types: dict[str, str] = {}


class DaemonSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Tuning knobs; the defaults suit a few dozen small, busy legacy files."""

    poll_interval: float = 0.5
    harvest_batch: int = 20000
    snapshot_chunk: int = 2000
    # "reference": a chunk goes through the log as its key range, and the apply side copies
    # its rows from the legacy file inside SQLite (fast); "log": the rows go through the
    # log (`cdc rebuild` can then rebuild the initial copy from the log alone); "auto":
    # by reference for tables of more than 100,000 rows, through the log for the others
    snapshot_copy: str = "auto"
    apply_batch: int = 20000
    segment_bytes: int = 64 * 1024 * 1024
    trim_interval: float = 1.0
    trim_slice: int = 20000  # capture rows deleted per trim transaction (a bot waits one)
    busy_timeout_ms: int = 5000
    watch: bool = True
    apply_worker: bool = True  # apply in a child process (both cores); False: a thread


class PoolSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How `cdc.pool` opens and lends connections (docs/pool.md). One place for the
    settings every bot used to pick for itself."""

    size: int = 8  # connections per database and process, at most
    checkout_timeout: float = 10.0  # seconds a borrower waits for a free connection
    busy_timeout_ms: int = 5000
    synchronous: str = "NORMAL"  # targets (WAL); legacy files keep FULL unless said here
    legacy_synchronous: str = "FULL"
    foreign_keys: bool = False
    metrics_interval: float = 1.0  # seconds between two writes of a process's metrics file
    record_queries: bool = False  # statements, counts, latencies: cdc.pool.recorded


class LogSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What happens to change-log segments every target has applied. `delete` (default)
    frees the space; `archive` moves them to `archive_dir`, keeping the whole history for
    `cdc history` and `cdc rebuild` (docs/history.md) at the cost of the disk they take."""

    retention: str = "delete"  # or "archive"
    archive_dir: str = ""  # default: <state_dir>/log-archive


class VerifySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The verifier's pace. It reads the bots' files, so it goes in small chunks (each one
    short read transaction) and, inside the daemon, at a bounded rate."""

    continuous: bool = True  # the daemon verifies table after table, forever
    chunk_rows: int = 1000
    rows_per_second: float = 20000.0  # legacy rows per second in the daemon; 0: no limit
    cycle_pause: float = 60.0  # seconds between two full passes in the daemon
    settle_timeout: float = 10.0  # how long a changing row may take to be caught settled
    max_report_keys: int = 100  # diverged keys listed per table (all are counted)


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    targets: dict[str, str]
    sources: list[SourceConfig]
    rules: list[RuleConfig] = []
    state_dir: str = "cdc-state"
    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)
    verify: VerifySettings = msgspec.field(default_factory=VerifySettings)
    pool: PoolSettings = msgspec.field(default_factory=PoolSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    config_path: str = ""

    @property
    def log_dir(self) -> str:
        return os.path.join(self.state_dir, "log")

    @property
    def log_archive_dir(self) -> str:
        """Where `retention = "archive"` moves applied segments (same names, same format)."""
        return self.log.archive_dir or os.path.join(self.state_dir, "log-archive")

    def capture_of(self, source: str) -> str:
        """How a (possibly glob-expanded) source is captured: "triggers" or "hooks"."""
        for s in self.sources:
            if fnmatch.fnmatchcase(source, s.name.replace("{stem}", "*")):
                return s.capture
        return "triggers"


def load_config(path: str | os.PathLike[str], postgres: bool = False) -> Config:
    """Read, decode, check and absolutize a config file.

    `postgres`: accept PostgreSQL targets. Only the commands built for them take them
    (`cdc check`, `schema`, `install`, `run`, `status`, `verify`, `wait`; docs/postgres.md): any
    other that opens a target would take its URL for a file name."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found", hint="create one (see `cdc docs config`)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: invalid TOML: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})"
        ) from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    if "config_path" in data:
        raise ConfigError(f"{path}: unknown key `config_path`")
    data = _target_tables(data, str(path))
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{path}: {_validation_message(e, data)}") from e
    base = path.resolve().parent
    cfg = _absolutize(cfg, base, str(path.resolve()))
    problems = _check(cfg) + ([] if postgres else _not_yet(cfg))
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return cfg


def _not_yet(cfg: Config) -> list[str]:
    return [
        f"`targets.{name}`: a PostgreSQL target is taken only by `cdc check`, `schema`, "
        "`install`, `run`, `status`, `verify`, `wait`, `cutover`, `rollback` and `finalize` "
        "so far (`cdc docs postgres`)"
        for name, target in cfg.targets.items()
        if is_postgres(target)
    ]


def _target_tables(data: dict, where: str) -> dict:
    """`[targets.NAME]` tables (a PostgreSQL target with its schema) as their URLs."""
    from cdc.postgres.dsn import from_table

    targets = data.get("targets")
    if not isinstance(targets, dict) or not any(isinstance(v, dict) for v in targets.values()):
        return data
    try:
        urls = {k: from_table(k, v) if isinstance(v, dict) else v for k, v in targets.items()}
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return {**data, "targets": urls}


def config_from_dict(data: dict, base_dir: str | os.PathLike[str]) -> Config:
    """Build a config from Python data (used by the demo and tests that write no file)."""
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"<config>: {_validation_message(e, data)}") from e
    cfg = _absolutize(cfg, Path(base_dir).resolve(), "<config>")
    problems = _check(cfg) + _not_yet(cfg)
    if problems:
        raise ConfigError("<config>: " + "; ".join(problems))
    return cfg


_AT = re.compile(r"^(?P<what>.*) - at `\$(?P<where>[^`]*)`$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`$")


def _validation_message(e: msgspec.ValidationError, data: object) -> str:
    """msgspec's `Expected int, got str - at $.daemon.poll_interval` as the operator
    wrote it: `daemon.poll_interval`: expected int, got str."""
    text = str(e)
    m = _AT.match(text)
    if m is None:
        return text
    what, where = m["what"], m["where"].lstrip(".")
    if "[...]" in where:  # a table's value: msgspec does not say which key
        where = _name_dict_key(where, data)
    for pattern, say in ((_UNKNOWN, "unknown key"), (_MISSING, "required key missing")):
        k = pattern.match(what)
        if k:
            key = f"{where}.{k['key']}" if where else k["key"]
            return f"`{key}`: {say}"
    what = what[:1].lower() + what[1:]
    return f"`{where}`: {what}" if where else what


def _name_dict_key(where: str, data: object) -> str:
    """`targets[...]` -> `targets.core`: the first key whose value is not a string."""
    head = where.split("[...]", 1)[0]
    table = data.get(head) if isinstance(data, dict) else None
    if isinstance(table, dict):
        for k, v in table.items():
            if not isinstance(v, str):
                return f"{head}.{k}"
    return where


def key_of_path(cfg: Config, path: str) -> str | None:
    """Which key of the config a file belongs to (`state_dir`, `targets.core`,
    `sources[0]`, `log.archive_dir`), for a message about a file the engine could not
    read or write. The most specific (longest) declared path that contains it wins."""
    path = os.path.abspath(path)
    found: list[tuple[int, str]] = []

    def under(root: str, key: str, is_file: bool) -> None:
        inside = path == root or path.startswith(root.rstrip(os.sep) + os.sep)
        if is_file:  # a database and its -journal/-wal/-shm, or the folder holding it
            inside = path.startswith(root) or path == os.path.dirname(root)
        if inside:
            found.append((len(root), key))

    under(cfg.state_dir, "state_dir", False)
    if cfg.log.archive_dir:
        under(cfg.log.archive_dir, "log.archive_dir", False)
    for name, p in cfg.targets.items():
        under(p, f"targets.{name}", True)
    for i, s in enumerate(cfg.sources):
        if not _is_glob(s.path):
            under(s.path, f"sources[{i}].path", True)
        elif fnmatch.fnmatchcase(path, s.path) or fnmatch.fnmatchcase(path, s.path + "-*"):
            found.append((len(s.path), f"sources[{i}].path"))
    return max(found)[1] if found else None


def file_error(e: OSError, cfg: Config | None) -> CdcError:
    """An OSError that reached the CLI (a read-only file system, a missing permission, a
    full disk, a file where a folder must be) as one line naming the file and, when the
    file belongs to one, the config key: a source's, a target's, or the state dir's."""
    name = e.filename if e.filename is not None else ""
    what = e.strerror or str(e)
    key = key_of_path(cfg, os.fsdecode(name)) if cfg is not None and name else None
    where = f" (`{key}` in {cfg.config_path})" if key and cfg is not None else ""
    msg = f"{os.fsdecode(name)}: {what}{where}" if name else what
    if key is None or key in ("state_dir", "log.archive_dir"):
        hint = (
            f"`{key}` must be a folder the daemon's user can create and write (it holds "
            "the lock, the change log, status files and controls)"
            if key
            else None
        )
        return CdcError(msg, hint=hint)
    if key.startswith("targets."):
        return TargetError(msg, hint="the target's folder must be writable by the daemon's user")
    return SourceError(msg, hint="run as the bots' user, with the legacy files writable")


def _abs(base: Path, p: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(p)))


def _absolutize(cfg: Config, base: Path, config_path: str) -> Config:
    return msgspec.structs.replace(
        cfg,
        state_dir=_abs(base, cfg.state_dir),
        log=msgspec.structs.replace(
            cfg.log, archive_dir=_abs(base, cfg.log.archive_dir) if cfg.log.archive_dir else ""
        ),
        targets={k: v if is_postgres(v) else _abs(base, v) for k, v in cfg.targets.items()},
        sources=[msgspec.structs.replace(s, path=_abs(base, s.path)) for s in cfg.sources],
        config_path=config_path,
    )


def _check(cfg: Config) -> list[str]:
    """Every problem at once, in the file's order: the operator fixes the config in one
    go instead of one error per run."""
    return [
        *_check_targets(cfg),
        *_check_sources(cfg),
        *_check_rules(cfg),
        *_check_settings(cfg),
    ]


def _check_targets(cfg: Config) -> list[str]:
    """Target names end up in file names (validation reports) and stage names."""
    problems: list[str] = []
    if not cfg.targets:
        problems.append("`targets` is empty: declare at least one target database")
    for name in cfg.targets:
        if not _NAME.match(name) or "{" in name:
            problems.append(f"`targets.{name}`: target names use letters, digits, _ . -")
        elif len(name) > MAX_NAME:
            problems.append(f"`targets.{name[:20]}...`: at most {MAX_NAME} characters")
        if is_postgres(cfg.targets[name]):
            problems.extend(pg_problems(name, cfg.targets[name]))
    paths = list(cfg.targets.values())
    if len(set(paths)) != len(paths):
        problems.append("`targets`: two targets share one file")
    return problems


def _check_sources(cfg: Config) -> list[str]:
    """A source written to as a target, or two sources under one name, would mix
    their changes in the log."""
    problems: list[str] = []
    paths = list(cfg.targets.values())
    seen: set[str] = set()
    for i, s in enumerate(cfg.sources):
        key = f"`sources[{i}]`"
        if not _NAME.match(s.name):
            problems.append(f"{key}.name {s.name!r}: use letters, digits, _ . - (and {{stem}})")
        elif len(s.name.replace("{stem}", "")) > MAX_NAME:
            problems.append(f"{key}.name {s.name[:20]!r}...: at most {MAX_NAME} characters")
        if _is_glob(s.path) and "{stem}" not in s.name:
            problems.append(f"{key}.name {s.name!r}: a glob path needs `{{stem}}` in the name")
        if s.name in seen:
            problems.append(f"{key}.name {s.name!r}: declared twice")
        seen.add(s.name)
        if s.path in paths:
            problems.append(f"{key}.path is also a target file")
        if s.capture not in ("triggers", "hooks"):
            problems.append(f'{key}.capture {s.capture!r}: use "triggers" or "hooks"')
    return problems


def _check_rules(cfg: Config) -> list[str]:
    """A rule is checked on its own here; whether its patterns match any table waits
    for the legacy files (`cdc.plan`)."""
    problems: list[str] = []
    for i, r in enumerate(cfg.rules):
        key = f"`rules[{i}]`"
        if r.exclude and (r.target or r.merge or r.as_):
            problems.append(f"{key}: `exclude` cannot be combined with target/as/merge")
        elif not r.exclude and r.target is None:
            problems.append(f"{key}: give `target` or `exclude = true`")
        elif r.target is not None and r.target not in cfg.targets:
            known = ", ".join(sorted(cfg.targets))
            problems.append(f"{key}.target {r.target!r}: no such target (known: {known})")
        if r.merge and not r.tag_column:
            problems.append(f"{key}.tag_column: a merge needs a tag column name")
        if not r.table:
            problems.append(f"{key}.table: empty pattern")
        for col, ty in r.postgres_types.items():
            from cdc.postgres.types import BY_AFFINITY  # here: the pool's import stays light

            PG_TYPES = tuple(BY_AFFINITY.values())  # noqa: N806
            if ty not in PG_TYPES:
                problems.append(
                    f"{key}.postgres_types.{col} {ty!r}: use one of "
                    + ", ".join(f'"{t}"' for t in PG_TYPES)
                    + " (the types whose values are carried exactly: `cdc docs postgres`)"
                )
    return problems


def _check_settings(cfg: Config) -> list[str]:
    """Sizes and timeouts are well-typed at zero or below, yet meaningless: a batch of no
    rows, a poll that never waits."""
    problems: list[str] = []
    d = cfg.daemon
    for field in ("harvest_batch", "snapshot_chunk", "apply_batch", "segment_bytes", "trim_slice"):
        if getattr(d, field) <= 0:
            problems.append(f"`daemon.{field}` must be positive")
    if d.poll_interval <= 0:
        problems.append("`daemon.poll_interval` must be positive")
    if d.snapshot_copy not in ("auto", "reference", "log"):
        problems.append(
            f'`daemon.snapshot_copy` {d.snapshot_copy!r}: use "auto", "reference" or "log"'
        )
    if cfg.log.retention not in ("delete", "archive"):
        problems.append(f'`log.retention` {cfg.log.retention!r}: use "delete" or "archive"')
    p = cfg.pool
    if p.size <= 0 or p.checkout_timeout <= 0 or p.busy_timeout_ms < 0:
        problems.append("`pool.size` and `pool.checkout_timeout` must be positive")
    for field in ("synchronous", "legacy_synchronous"):
        if getattr(p, field).upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            problems.append(f"`pool.{field}`: use OFF, NORMAL, FULL or EXTRA")
    v = cfg.verify
    for field in ("chunk_rows", "settle_timeout", "max_report_keys"):
        if getattr(v, field) <= 0:
            problems.append(f"`verify.{field}` must be positive")
    for field in ("rows_per_second", "cycle_pause"):
        if getattr(v, field) < 0:
            problems.append(f"`verify.{field}` cannot be negative")
    return problems


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def expand_sources(cfg: Config) -> list[tuple[str, str, bool]]:
    """(name, absolute path, required) for each declared source, globs expanded. Here, with
    the config, because the bots' pool needs it and nothing else of the planning."""
    out = []
    for s in cfg.sources:
        if any(c in s.path for c in "*?["):
            matches = sorted(glob.glob(s.path, recursive=True))
            if not matches:
                out.append((s.name, s.path, s.required))  # reported as matching nothing
            for p in matches:
                out.append((s.name.replace("{stem}", Path(p).stem), p, s.required))
        else:
            out.append((s.name, s.path, s.required))
    return out
