"""`cdc inventory`, `cdc plan`, `cdc schema`: from a folder of SQLite files to a checked
cdc.toml (docs/planning.md). Registered on the `cdc` group by cdc.cli."""

from __future__ import annotations

import sys

import click

from cdc.cli.base import _load, _run, cli, config_option


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the inventory files.",
)
@click.option(
    "--mapping",
    "mapping",
    default=None,
    type=click.Path(dir_okay=False),
    help="An earlier migration_mapping.csv whose decisions are carried over.",
)
@click.option(
    "--progress/--no-progress",
    "progress",
    default=None,
    help="Progress bar on stderr (default: on a terminal, from 20 databases).",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="A target database name, recorded for `cdc plan` (repeatable, or a,b,c).",
)
@click.option(
    "--default-target",
    "defaults",
    multiple=True,
    metavar="GLOB=TARGET",
    help="Prefill empty target cells of tables whose database (or DBGLOB:TABLEGLOB) "
    "matches; first match wins; TARGET may be `exclude` (repeatable).",
)
def inventory(
    dirs: tuple[str, ...],
    out_dir: str,
    mapping: str | None,
    progress: bool | None,
    targets: tuple[str, ...],
    defaults: tuple[str, ...],
) -> None:
    """Find every SQLite database under DIRS (read-only) and write the inventory files."""
    from cdc.planning.inventory_report import run_inventory, summary_lines

    bar = _ProgressBar(progress)
    try:
        result = _run(
            lambda: run_inventory(
                dirs, out_dir, mapping, progress=bar, targets=targets, defaults=defaults
            )
        )
    finally:
        bar.close()
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for line in summary_lines(result):
        click.echo(line)


class _ProgressBar:
    """A click progress bar, made on the first report, once the number of databases is known."""

    def __init__(self, forced: bool | None) -> None:
        self.forced = forced
        self.bar = None

    def __call__(self, done: int, total: int, _relpath: str) -> None:
        if self.bar is None and done == 1:
            show = self.forced if self.forced is not None else sys.stderr.isatty() and total >= 20
            if show:
                self.bar = click.progressbar(length=total, label="inventory", file=sys.stderr)
                self.bar.__enter__()
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@cli.command(name="plan")
@click.option(
    "--inventory",
    "inventory_path",
    default="inventory.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="inventory.json written by `cdc inventory`.",
)
@click.option(
    "--mapping",
    "mapping_path",
    default="migration_mapping.csv",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The filled-in mapping (CSV), a plan file (.json/.yaml/.yml), or a cdc.toml "
    "whose [targets] and [[rules]] to use.",
)
@click.option("--out", "out_path", default="cdc.toml", show_default=True, help="Config to write.")
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="Allowed target name (repeatable, or a,b,c); default: the plan file's, else "
    "the inventory's.",
)
@click.option(
    "--default-target",
    "defaults",
    multiple=True,
    metavar="GLOB=TARGET",
    help="Target for rows still empty whose database (or DBGLOB:TABLEGLOB) matches; "
    "first match wins; TARGET may be `exclude` (repeatable).",
)
@click.option("--targets-dir", default="consolidated", show_default=True)
@click.option("--state-dir", default="cdc-state", show_default=True)
def plan_cmd(
    inventory_path, mapping_path, out_path, targets, defaults, targets_dir, state_dir
) -> None:  # noqa: ANN001
    """Turn an inventory and a mapping into a checked cdc.toml (written only if it passes)."""
    from cdc.planning.planner import make_plan

    res = _run(
        lambda: make_plan(
            inventory_path,
            mapping_path,
            out_path,
            list(targets) or None,
            targets_dir,
            state_dir,
            defaults=list(defaults),
            on_note=lambda note: click.echo(f"note: {note}", err=True),
        )
    )
    for t, n in sorted(res.targets.items()):
        click.echo(f"{t}: {n} tables")
    click.echo(
        f"ok: wrote {res.config_path} ({len(res.plan.sources)} sources, "
        f"{sum(res.targets.values())} tables mapped, {res.excluded} excluded, "
        f"{res.fts} FTS tables rebuilt in their target)"
    )


@cli.command()
@config_option
@click.option("--out", "out_dir", default=".", show_default=True, help="Folder to write into.")
def schema(config_path: str, out_dir: str) -> None:
    """Write each target's DDL (<target>_schema.sql) and schema_comparison.md."""
    from cdc.planning.resolve import review_plan
    from cdc.planning.schema_out import write_schema

    cfg = _load(config_path, postgres=True)  # it reads no target
    plan = _run(lambda: review_plan(cfg))  # what PostgreSQL cannot make: marked REFUSED
    for p in write_schema(plan, out_dir):
        click.echo(f"wrote {p}")
