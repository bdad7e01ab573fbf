"""`cdc pause`, `resume`, `throttle`, `panic`: live controls of a running daemon
(docs/controls.md). Registered on the `cdc` group by cdc.cli."""

from __future__ import annotations

import functools
import sys

import click

from cdc.cli.base import EXIT_TIMEOUT, _load, _run, cli, config_option
from cdc.config import Config


def _control_what(fn, panic: bool = False):  # noqa: ANN001, ANN202
    """The options of `cdc pause` and `cdc resume`: what to pause or resume."""
    opts = [
        click.option(
            "--harvest",
            "what",
            flag_value="harvest",
            default=True,
            help="Harvesting of the sources NAMES (the default).",
        ),
        click.option("--apply", "what", flag_value="apply", help="Applying to the targets NAMES."),
        click.option("--both", "what", flag_value="both", help="Harvest and apply, everything."),
        click.option("--cutover", "what", flag_value="cutover", help="New cutovers."),
    ]
    if panic:
        opts.append(click.option("--panic", "what", flag_value="panic", help="Lift a panic stop."))
    for opt in reversed([config_option, click.argument("names", nargs=-1), *opts]):
        fn = opt(fn)
    return fn


@cli.command()
@_control_what
def pause(config_path: str, names: tuple[str, ...], what: str) -> None:
    """Pause harvesting of the sources NAMES (default: all): the daemon stops reading their
    legacy files, and their capture rows wait there. --apply: stop applying to the targets
    NAMES; --both: everything; --cutover: refuse new cutovers. Kept across restarts until
    `cdc resume` (docs/controls.md)."""
    _steer(config_path, what, names, True)


@cli.command()
@functools.partial(_control_what, panic=True)
def resume(config_path: str, names: tuple[str, ...], what: str) -> None:
    """Undo `cdc pause` (same options); --panic lifts a panic stop so `cdc run` may start."""
    _steer(config_path, what, names, False)


def _steer(config_path: str, what: str, names: tuple[str, ...], on: bool) -> None:
    from cdc.control import controls

    cfg = _load(config_path)
    _show_controls(cfg, _run(lambda: controls.steer(cfg, what, list(names), on)))


def _show_controls(cfg: Config, now) -> None:  # noqa: ANN001 - cdc.controls.Controls
    from cdc.control.controls import describe
    from cdc.status_file import daemon_running

    for line in describe(now) or ["no controls in force"]:
        click.echo(line)
    if daemon_running(cfg):
        click.echo("the running daemon follows within about a second")
    else:
        click.echo("the daemon is not running; it follows these when it starts")


@cli.command()
@config_option
@click.argument("sources", nargs=-1)
@click.option(
    "--max-changes-per-second",
    type=float,
    default=None,
    help="Harvest at most this many changes per second, per source.",
)
@click.option(
    "--max-lock-ms",
    type=float,
    default=None,
    help="Keep each harvest read transaction under this many ms (adaptive batch size).",
)
@click.option("--off", is_flag=True, help="Remove the throttle.")
def throttle(
    config_path: str,
    sources: tuple[str, ...],
    max_changes_per_second: float | None,
    max_lock_ms: float | None,
    off: bool,
) -> None:
    """Slow down the harvest of SOURCES (default: all) so their bots feel it less. The
    limits replace any earlier throttle of those sources; kept until `--off`."""
    from cdc.control import controls

    cfg = _load(config_path)
    now = _run(
        lambda: controls.throttle(cfg, list(sources), max_changes_per_second, max_lock_ms, off)
    )
    _show_controls(cfg, now)


@cli.command()
@config_option
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the daemon to stop.",
)
def panic(config_path: str, timeout: float) -> None:
    """Stop the daemon at once (harvest, apply and its worker) and keep it stopped: it exits
    with code 9 and refuses to start until `cdc resume --panic`. Exit 0 once it stopped,
    75 if it still runs after --timeout."""
    from cdc.control import controls
    from cdc.status_file import daemon_running

    cfg = _load(config_path)
    running = daemon_running(cfg)
    _run(lambda: controls.set_panic(cfg.state_dir, True))
    click.echo(f"panic stop requested ({controls.control_dir(cfg.state_dir)}/panic)")
    if not controls.wait_daemon_gone(cfg, timeout):
        click.echo(f"the daemon still runs after {timeout:g}s", err=True)
        sys.exit(EXIT_TIMEOUT)
    what = "the daemon is stopped" if running else "no daemon was running"
    click.echo(f"{what}; it will not start until `cdc resume --panic`")
