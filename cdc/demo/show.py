"""How the demo prints each step's facts (files, plan, daemon log, bots) for an operator."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

from cdc.config import Config
from cdc.demo.bots import BotProcess
from cdc.demo.folder import DemoError
from cdc.demo.legacy_file import LegacyFile
from cdc.planning.inventory_report import run_inventory, summary_lines
from cdc.planning.pg_fit import pg_misfits, pg_orphans
from cdc.planning.plan import Plan
from cdc.planning.resolve import review_plan
from cdc.planning.schema_out import write_schema
from cdc.postgres.dsn import is_postgres

Echo = Callable[[str], object]


def _wrap(first: str, text: str, width: int = 100) -> str:
    return textwrap.fill(
        text,
        width,
        initial_indent=first,
        subsequent_indent=" " * len(first),
        break_on_hyphens=False,
    )


def _indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + ln if ln else ln for ln in text.splitlines())


def _show_files(files: list[LegacyFile], echo: Echo) -> None:
    w = max(len(f.path.as_posix()) for f in files)
    echo(f"  {'source':<13} {'file':<{w}}  {'journal':<7}  tables")
    for f in files:
        echo(f"  {f.source:<13} {f.path.as_posix():<{w}}  {f.journal:<7}  {', '.join(f.tables)}")


def _show_check(plan: Plan, echo: Echo) -> None:
    n = sum(len(s.tables) for s in plan.sources)
    excluded = [f"{s.name}.{t}" for s in plan.sources for t in s.excluded + s.uncapturable]
    echo(
        f"  ok: {len(plan.sources)} sources, {n} tables mapped onto {len(plan.targets)} "
        f"targets ({', '.join(plan.targets)}), {len(excluded)} excluded "
        f"({', '.join(excluded) or 'none'})"
    )
    merged = sorted(
        {f"{m.target}.{m.target_table}" for s in plan.sources for m in s.tables if m.tag_column}
    )
    renamed = [
        f"{m.source}.{m.table} -> {m.target}.{m.target_table}"
        for s in plan.sources
        for m in s.tables
        if m.target_table != m.table
    ]
    if merged:
        echo(f"  merged (tagged by source): {', '.join(merged)}")
    if renamed:
        echo(_wrap("  renamed: ", ", ".join(renamed)))


def _show_pg_check(cfg: Config, echo: Echo) -> None:
    """`cdc check`'s census for a PostgreSQL target: every legacy value bound for it counted
    against its PostgreSQL type. A misfit stops the demo as it stops `cdc check` (exit 3)."""
    plan = review_plan(cfg)
    misfits = list(plan.problems) + [m.line() for m in pg_misfits(cfg, plan)]
    if misfits:
        raise DemoError(
            f"`cdc check`: {len(misfits)} thing(s) PostgreSQL cannot hold as the legacy files "
            "do:\n  - " + "\n  - ".join(misfits),
            hint="the demo's data should fit: this is a bug of the demo or of the census",
        )
    pg = [t for t, where in plan.targets.items() if is_postgres(where)]
    bound = [m for s in plan.sources for m in s.tables if m.target in pg]
    echo(
        _wrap(
            "  ",
            f"PostgreSQL census (`cdc check`): every legacy value of the {len(bound)} tables "
            f"bound for {', '.join(pg)} fits its PostgreSQL type (no `postgres_types` rule "
            "needed: the demo's times are TEXT columns holding TEXT)",
        )
    )
    for w in pg_orphans(cfg, plan):  # the keys are added NOT VALID, as `cdc check` warns
        echo(_wrap("  warning: ", w.line()))


def _show_daemon_log(log_path: Path, echo: Echo) -> None:
    """What the daemon's log says an operator should know: schema drift followed, errors."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    added: dict[str, list[str]] = {}
    for ln in lines:
        head, sep, col = ln.partition(": added column ")
        if sep:
            added.setdefault(head.rsplit("target ", 1)[-1], []).append(col)
    if added:
        echo("  daemon log: columns it added to consolidated tables (merged-table widening and")
        echo("  the bots' ALTER TABLEs):")
        for target, cols in sorted(added.items()):
            echo(_wrap(f"    {target}: ", ", ".join(cols)))
    bad = [ln for ln in lines if " ERROR " in ln or " CRITICAL " in ln]
    if bad:
        echo(f"  daemon log: {len(bad)} line(s) at ERROR or above:")
        for ln in bad[:5]:
            echo(f"    | {ln}")


def _show_bots(bots: list[BotProcess], codes: list[int], echo: Echo) -> int:
    """Print each bot's stats; return the error count (a missing stats file counts as one)."""
    total_ops = total_errors = 0
    echo("")
    echo("  bots:")
    for b, code in zip(bots, codes, strict=True):
        try:
            s = b.read_stats()
        except (OSError, ValueError):
            echo(f"    {b.kind:<12} exit {code}: no stats written (see {b.stats_file.parent}/)")
            total_errors += 1
            continue
        ops, errors = int(s["ops"]), int(s["errors"])
        total_ops += ops
        total_errors += errors + (code != 0)
        echo(
            f"    {b.kind:<12} {ops:>6} ops  {errors:>3} errors  "
            f"longest write {float(s['max_stall_ms']):7.1f} ms  exit {code}"
        )
        for msg, n in dict(s.get("error_messages") or {}).items():
            echo(f"      {n} x {msg}")
    echo(f"    {'total':<12} {total_ops:>6} ops  {total_errors:>3} errors")
    return total_errors


def _show_next(cfg_path: Path, root: Path, cfg: Config, echo: Echo) -> None:
    core = cfg.targets.get("core", next(iter(cfg.targets.values())))
    look = (
        f"psql {core} -c '\\dt'" if is_postgres(core) else f"sqlite3 {core} .tables",
        "look at the consolidated data",
    )
    steps = [
        (f"cdc status -c {cfg_path}", "positions and backlog, per source and target"),
        (f"cdc run -c {cfg_path}", "resume replication (Ctrl-C or SIGTERM stops it)"),
        (f"cdc verify -c {cfg_path} --report {root / 'validation'}", "prove it again, any time"),
        (f"cdc cutover cache -c {cfg_path}", "with `cdc run` going: cut the stage over for real"),
        (f"python -m cdc.demo.bots --root {root} --bot trader --seconds 30", "more writes"),
        look,
        (f"cdc uninstall -c {cfg_path}", "remove every trigger from the legacy files"),
    ]
    w = max(len(cmd) for cmd, _ in steps)
    echo("next, as an operator:")
    for cmd, why in steps:
        echo(f"  {cmd:<{w}}  # {why}")
    echo(f"  logs: {root / 'daemon.log'} (daemon), {root / 'bot-stats'}/ (bots)")
    if is_postgres(core):
        echo(
            _wrap(
                "  ",
                f"core's private PostgreSQL server was stopped and removed with the demo: the "
                f"commands that read core need a server at {core} again",
            )
        )


def _show_inventory(legacy: Path, out: Path, echo: Echo) -> None:
    """`cdc inventory` on the demo's legacy folder: what an operator reads before mapping."""
    run = run_inventory([str(legacy)], str(out))
    for line in summary_lines(run)[:2]:
        echo(f"  {line}")
    for c in run.inventory.table_collisions:
        where = ", ".join(p.database for p in c.places)
        echo(f"    {c.table}: {'same columns' if c.agree else 'columns differ'} ({where})")
    echo(f"  wrote {', '.join(run.written)} in {out}")


def _show_schema(plan: Plan, out: Path, echo: Echo) -> None:
    """`cdc schema`: the DDL the replicator will create the targets from, for review."""
    written = write_schema(plan, out)
    echo(_wrap("  schema: ", ", ".join(p.name for p in written) + f" in {out}"))
