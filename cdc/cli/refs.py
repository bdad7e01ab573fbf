"""`cdc refs SRC...`: every reference to a legacy database in Python code, what it
becomes, and (`--fix`) the rewrite of what is unambiguous. Registered on the `cdc` group
by cdc.cli."""

from __future__ import annotations

import sys

import click

from cdc.cli.base import EXIT_UNREVIEWED_REFS, _load, _run, cli, config_option


@cli.command()
@config_option
@click.argument("src", nargs=-1, required=True, type=click.Path())
@click.option("--stage", default=None, metavar="TARGET", help="Only references to this stage.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option(
    "--markdown",
    "markdown",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write a Markdown summary per stage to FILE.",
)
@click.option("--fix", is_flag=True, help="Print the diff that rewrites what is unambiguous.")
@click.option("--write", is_flag=True, help="With --fix: apply that diff to the files.")
def refs(config_path, src, stage, as_json, markdown, fix, write) -> None:  # noqa: ANN001
    """Find every path and SQL statement in Python code that names a legacy database or
    table, and say what it becomes. Exit 0 when no unreviewed reference (to the stage, if
    given) is left, 14 otherwise. A comment `# cdc-refs: reviewed` marks one as looked at."""
    from cdc.application import refs_fix
    from cdc.application.names import legacy_names
    from cdc.application.refs import find_refs
    from cdc.application.refs_render import render_json, render_markdown, render_text
    from cdc.errors import ConfigError

    if write and not fix:
        _run(lambda: _raise(ConfigError("--write applies --fix's rewrite: add --fix")))
    cfg = _load(config_path)
    names = _run(lambda: legacy_names(cfg))
    report = _run(lambda: find_refs(list(src), names, stage))
    if fix:
        edits: dict[str, list[refs_fix.Edit]] = {}
        for r in report.references:
            if r.fixable and r.edit is not None:
                edits.setdefault(r.file, []).append(r.edit)
        # with --json the diff goes to stderr, so stdout stays one JSON document
        click.echo(_run(lambda: refs_fix.fix_files(edits, write)), nl=False, err=as_json)
        if write:
            report = _run(lambda: find_refs(list(src), names, stage))
    if markdown:
        with open(markdown, "w", encoding="utf-8") as f:
            f.write(render_markdown(report))
    if as_json:
        sys.stdout.buffer.write(render_json(report))
        sys.stdout.flush()
    elif not fix or write:
        click.echo(render_text(report), nl=False)
    sys.exit(0 if report.ok_for(stage) else EXIT_UNREVIEWED_REFS)


def _raise(e: Exception) -> None:
    raise e
