"""The `cdc.toml` an operator would write for the demo files.

Written line by line rather than with tomli-w (which `cdc plan` uses): the demo's file is
read by people, and its `[verify]` lines carry comments a TOML writer cannot emit.

Every table gets an explicit, literal rule (reviewable, and it pins the renames and the merge),
and every source also gets a `table = "*"` fallback to its default target: the bots may create
tables at start-up (`--alter`), and a table that appears in a live file must still have a home.
That also exercises the precedence rule the engine promises: a literal pattern beats a glob.
A `[verify]` section makes the daemon's continuous verifier start a pass every few seconds, so
the live phase of a short demo shows it proving the tables equal while the bots write.

`cdc demo --postgres` gives `core` the URL of a database on the demo's private PostgreSQL
cluster instead of a file (`core = "postgresql://cdc@127.0.0.1:<port>/core"`); the other
targets stay SQLite files, as in a plan that moves one stage to a server first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdc.demo.legacy_file import LegacyFile

TARGETS: dict[str, str] = {
    "core": "consolidated/core.db",
    "analytics": "consolidated/analytics.db",
    "cache": "consolidated/cache.db",
}

DEFAULT_TARGET: dict[str, str] = {
    "trading": "core",
    "buy_tracker": "core",
    "telegram": "core",
    "x_memory": "core",
    "llm_costs": "analytics",
    "metrics": "analytics",
    "rate_limiter": "cache",
    "file_cache": "cache",
}
"""Where each source's tables go unless OVERRIDES says otherwise."""

MERGE = {"merge": True, "tag_column": "source"}
OVERRIDES: dict[tuple[str, str], dict[str, object]] = {
    # same name, different columns, same key column (`id TEXT`): one target table, tagged
    ("trading", "trades"): MERGE,
    ("buy_tracker", "trades"): MERGE,
    ("trading", "test"): {"exclude": True},
    # same name, unrelated tables: renamed apart
    ("telegram", "users"): {"as": "telegram_users"},
    ("x_memory", "users"): {"as": "x_users"},
    ("telegram", "memories"): {"as": "telegram_memories"},
    ("x_memory", "memories"): {"as": "x_memories"},
}


VERIFY = [
    "continuous = true      # the daemon verifies table after table while the bots write",
    "rows_per_second = 0    # no pace limit: the demo's files are small",
    "cycle_pause = 2.0      # a new pass every 2 s, so a short demo sees several",
]
"""The demo's `[verify]` section: the daemon's continuous verifier, paced for a short demo."""


def demo_config_toml(
    root: Path, files: Iterable[LegacyFile], state_dir: str = "state", core: str | None = None
) -> str:
    """The config text for `files`, meant to be saved as `root/cdc.toml`.

    Paths in it are relative to `root` (the config's folder), so the demo tree can be moved.
    `core`: the target's PostgreSQL URL instead of its file (`cdc demo --postgres`).
    """
    root = Path(root)
    targets = TARGETS | ({"core": core} if core else {})
    lines = [f"state_dir = {_s(state_dir)}", "", "[targets]"]
    lines += [f"{name} = {_s(path)}" for name, path in targets.items()]
    lines += ["", "[verify]", *VERIFY]
    rules: list[dict[str, object]] = []
    for f in files:
        if f.source not in DEFAULT_TARGET:
            raise ValueError(f"no demo plan for source {f.source!r}")
        rel = f.path if not f.path.is_absolute() else f.path.relative_to(root)
        lines += ["", "[[sources]]", f"name = {_s(f.source)}", f"path = {_s(rel.as_posix())}"]
        target = DEFAULT_TARGET[f.source]
        for table in f.tables:
            rule: dict[str, object] = {"source": f.source, "table": table}
            extra = OVERRIDES.get((f.source, table), {})
            if not extra.get("exclude"):
                rule["target"] = target
            rule.update(extra)
            rules.append(rule)
        rules.append({"source": f.source, "table": "*", "target": target})
    for rule in rules:
        lines += ["", "[[rules]]"] + [f"{k} = {_value(val)}" for k, val in rule.items()]
    return "\n".join(lines) + "\n"


def write_demo_config(
    root: Path, files: Iterable[LegacyFile], name: str = "cdc.toml", core: str | None = None
) -> Path:
    """Write `demo_config_toml` next to the legacy tree and return its path."""
    path = Path(root) / name
    path.write_text(demo_config_toml(root, files, core=core), encoding="utf-8")
    return path


def _value(x: object) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, str):
        return _s(x)
    raise TypeError(f"unsupported TOML value {x!r}")


def _s(x: str) -> str:
    """A TOML basic string: JSON's escapes are valid TOML, except that TOML also bans DEL."""
    return json.dumps(x, ensure_ascii=False).replace("\x7f", "\\u007f")
