"""What every `cdc` command shares: the command group, the `-c` option, loading the
config, and the one place an engine error (`CdcError`) becomes one line on stderr, an
optional hint and the error class's exit code (`_run`). The command modules (`cdc.cli`,
`cdc.cli.controls`, `cdc.cli.history`, `cdc.cli.planning`, `cdc.cli.manual`) import this and nothing of
each other.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import click

from cdc.config import Config, load_config
from cdc.errors import CdcError

EXIT_TIMEOUT = 75
# Results that are not errors, documented in docs/cli-json.md (one table for every command).
EXIT_DIVERGED = 10  # a verified table differs (keys named in the output)
EXIT_NOT_PROVEN = 11  # nothing found wrong, but something could not be proven (see reason)
EXIT_UNREVIEWED_REFS = 14  # `cdc refs`: an unreviewed reference to moved data is left
EXIT_WRONG_ANSWER = 15  # `cdc queries`: a query answers differently on the consolidated file
EXIT_OVER_BUDGET = 16  # `cdc queries`: right answers, a consolidated p95 over the budget

T = TypeVar("T")

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    default="cdc.toml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Path to cdc.toml.",
)


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except CdcError as e:
        _fail(e)


def _fail(e: CdcError) -> NoReturn:
    _report(e)
    sys.exit(e.exit_code)


def _report(e: CdcError) -> None:
    """The one place an error reaches the operator: one line, then the hint if any."""
    click.echo(f"error: {e.message}", err=True)
    if e.hint:
        click.echo(f"hint: {e.hint}", err=True)


_loaded: Config | None = None  # this command's config: names the key of a file error


def _load(path: str, postgres: bool = False) -> Config:
    """`postgres`: the command takes PostgreSQL targets (`cdc check`, `schema`, `install`,
    `run`, `status`, `verify`, `wait`); the others refuse a config that has one, by name."""
    global _loaded
    _loaded = _run(lambda: load_config(path, postgres=postgres))
    return _loaded


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text (default) or one JSON object each (source/table/target/offset).",
)
def cli(verbose: int, log_format: str | None) -> None:
    """sqlite-cdc: replicate live legacy SQLite databases into consolidated ones."""
    from cdc import log_output as logfmt

    # Whatever the caller's umask, nothing we create (state dir, change log, targets,
    # reports, and the apply worker's files) is readable or writable by group or world.
    os.umask(os.umask(0o077) | 0o077)

    logfmt.configure(logging.WARNING - 10 * min(verbose, 2), log_format)


@cli.group(name="log")
def log_group() -> None:
    """Inspect the change log."""
