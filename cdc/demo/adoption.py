"""A table a bot creates while the daemon runs, shown as the product handles it today: a
rule maps it, so the running daemon adopts it by itself (it resolves the plan again,
installs capture on the new table in one short transaction, snapshots it and resumes every
other table from the change log), with no `cdc install` and no restart by the operator.
The demo only watches for the moment the new table is captured."""

from __future__ import annotations

import time

import apsw

from cdc.capture.triggers import installed_tables
from cdc.demo.daemon import DaemonProcess
from cdc.demo.show import Echo
from cdc.planning.plan import Plan


def announce(missing: list[str], daemon: DaemonProcess, echo: Echo) -> None:
    echo(f"  ! new table(s) appeared in a live legacy file: {', '.join(missing)}")
    echo("    A rule maps them, so the running daemon adopts them itself: it resolves the plan")
    echo("    again, installs capture on them in one short transaction, snapshots them and")
    echo(f"    resumes the other tables from the change log (same process, pid {daemon.pid}).")


def captured(plan: Plan, missing: list[str]) -> bool:
    """Whether every `source.table` of `missing` has capture installed in its file (a short
    read; a file a bot keeps busy counts as not yet)."""
    for name in missing:
        source, table = name.split(".", 1)
        try:
            conn = apsw.Connection(plan.source(source).path, flags=apsw.SQLITE_OPEN_READONLY)
        except apsw.Error:
            return False
        try:
            conn.set_busy_timeout(200)
            if table not in installed_tables(conn):
                return False
        except apsw.Error:
            return False
        finally:
            conn.close()
    return True


def say_captured(missing: list[str], since: float, daemon: DaemonProcess, echo: Echo) -> None:
    echo(
        f"    {', '.join(missing)}: captured by the same daemon (pid {daemon.pid}, still "
        f"running), {time.monotonic() - since:.1f}s after the demo saw it; no operator action"
    )


def wait_captured(
    plan: Plan, missing: list[str], since: float, daemon: DaemonProcess, echo: Echo, wait: float
) -> bool:
    """After the bots stopped: the adoption must have happened, or happen now."""
    deadline = time.monotonic() + wait
    while not captured(plan, missing):
        if time.monotonic() > deadline or not daemon.alive():
            return False
        time.sleep(0.2)
    say_captured(missing, since, daemon, echo)
    return True
