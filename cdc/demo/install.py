"""`cdc install` as the demo runs it: once at start, again (retried) for a table a bot made."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cdc.capture.install import InstallReport, install
from cdc.config import Config
from cdc.demo.daemon import DaemonProcess
from cdc.demo.folder import DemoError
from cdc.demo.show import Echo
from cdc.errors import SourceError
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan


def _install(cfg: Config, plan: Plan, echo: Echo) -> None:
    report = install(cfg, plan)
    for s in report.sources:
        rel = os.path.relpath(s.path, Path(cfg.config_path).parent)
        echo(
            f"  {s.source}: capturing {len(s.captured)} tables, {len(s.excluded)} excluded ({rel})"
        )
    echo(f"  installed: {report.tables} tables in {len(report.sources)} databases")


def _adopt(
    cfg: Config,
    cfg_path: Path,
    daemon: DaemonProcess,
    running: Plan,
    missing: list[str],
    echo: Echo,
    live: bool,
) -> tuple[DaemonProcess, Plan, bool]:
    """A bot created a table: `cdc install` again, then restart the daemon so it captures it.

    Install runs first, while the old daemon still runs: a daemon (re)started while a mapped
    table has no triggers refuses to start. Live, install is given a few seconds of retries;
    if the bots keep it locked out, the caller tries again once they have stopped.
    Returns (daemon, its plan, adopted).
    """
    if live:
        echo(f"  ! new table(s) appeared in a live legacy file: {', '.join(missing)}")
        echo("    The running daemon does not capture them: capture triggers are installed by")
        echo("    `cdc install`, and the daemon reads cdc.toml and the table list only at start.")
        echo("    Operator's fix, done now while the bots keep writing:")
    else:
        echo(f"  still not captured: {', '.join(missing)}; adopting it now that the bots stopped:")
    echo(f"    $ cdc install -c {cfg_path}")
    plan = resolve_plan(cfg)
    report = _install_retrying(cfg, plan, echo, give_up_after=4.0 if live else 30.0)
    if report is None:
        echo("      gave up for now: every attempt met 'database is locked' while a bot wrote;")
        echo("      the daemon keeps running without the new table, retried after the bots stop")
        return daemon, running, False
    echo(f"      installed: {report.tables} tables in {len(report.sources)} databases")
    code = daemon.stop()
    echo(f"    $ kill -TERM {daemon.pid}  ->  daemon exited with code {code}")
    if code != 0:
        raise DemoError(f"the daemon exited with code {code} on SIGTERM:\n" + daemon.tail())
    new = DaemonProcess(cfg_path, daemon.log_path)
    try:
        new.wait_running(cfg.state_dir)
    except BaseException:
        new.stop()
        raise
    echo(
        f"    $ cdc run -c {cfg_path}  ->  pid {new.pid}: snapshots the new table(s), "
        "resumes the others from the change log"
    )
    return new, plan, True


def _install_retrying(
    cfg: Config, plan: Plan, echo: Echo, give_up_after: float
) -> InstallReport | None:
    """`cdc install` against live bots, retried as its "database is locked" hint says.

    None if it still meets a locked database after `give_up_after` seconds.
    """
    root = Path(cfg.config_path).parent
    locked: dict[str, int] = {}
    deadline = time.monotonic() + give_up_after
    attempt = 0
    while True:
        attempt += 1
        try:
            report = install(cfg, plan)
        except SourceError as e:
            if "locked" not in e.message:
                raise
            where = os.path.relpath(e.message.split(":", 1)[0], root)
            if not locked:
                echo(f"      error: {where}: database is locked (a bot is writing); retrying")
            locked[where] = locked.get(where, 0) + 1
            if time.monotonic() > deadline:
                counts = ", ".join(f"{w} x{n}" for w, n in locked.items())
                echo(f"      {attempt} attempts, 'database is locked' on {counts}")
                return None
            time.sleep(min(0.3, 0.05 * attempt))
            continue
        if locked:
            counts = ", ".join(f"{w} x{n}" for w, n in locked.items())
            echo(f"      succeeded at attempt {attempt}; 'database is locked' on {counts}")
        return report
