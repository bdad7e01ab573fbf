"""One error hierarchy for the whole product.

Engine code raises these with the context an operator needs (file, table, position) and,
where there is one, a hint saying what to do. Only the CLI prints them.
"""

from __future__ import annotations

import apsw


class CdcError(Exception):
    """Root of every error sqlite-cdc raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(CdcError):
    """The configuration file is unreadable, malformed or inconsistent."""

    exit_code = 2


class PlanError(CdcError):
    """The mapping of legacy tables onto targets is incomplete or contradictory."""

    exit_code = 3


class SourceError(CdcError):
    """A legacy database is missing, unreadable, corrupt or not installed."""

    exit_code = 4


class LogCorruptError(CdcError):
    """The change log holds a damaged frame that is not a torn tail."""

    exit_code = 5


class TargetError(CdcError):
    """A consolidated database refused a write or is in an unexpected state."""

    exit_code = 6


class TargetBusyError(TargetError):
    """A consolidated database is locked or full right now; retrying later is safe."""


class DaemonError(CdcError):
    """The daemon could not start or another instance already owns the state dir."""

    exit_code = 7


class PoolTimeout(CdcError):
    """No pooled connection came free within `pool.checkout_timeout` (cdc.pool): every
    connection of that database is lent out, and held longer than the borrower would wait."""

    exit_code = 8


class PanicStop(CdcError):
    """An operator asked for a panic stop (`cdc panic`, the `control/panic` file): the daemon
    stops harvesting and applying at once, exits with this code, and refuses to start again
    until `cdc resume --panic` removes the file (docs/controls.md)."""

    exit_code = 9


# What every fence message starts with (a bot matches on it), and the hint a pooled bot
# gets with a `FencedWrite`: shared by the capture (which raises) and the pool (which
# lends), so that lending a connection needs nothing of the capture.
FENCE_PREFIX = "sqlite-cdc:"
FENCED_HINT = "the table moved at a cutover: switch this bot to its new home (`cdc docs pool`)"


class FencedWrite(CdcError, apsw.ConstraintError):
    """A write through `cdc.pool` met a fence (`cdc.fence`): the table moved at a cutover
    (or back at a rollback) and this copy is read-only. The fence's trigger reaches every
    other bot as SQLITE_CONSTRAINT, the class of a UNIQUE conflict, which bots often catch
    to skip a duplicate; this subclass of `apsw.ConstraintError` keeps such a bot working
    as before, yet lets a careful one tell the refusal apart (and never swallow it)."""

    exit_code = 12
    result = apsw.SQLITE_CONSTRAINT
    extendedresult = apsw.SQLITE_CONSTRAINT_TRIGGER
    error_offset = -1


class UnreviewedReferences(CdcError):
    """`cdc cutover --refs`: application code still names the stage's legacy files or
    tables and no one has reviewed it (`cdc refs`, docs/application.md): after the
    cutover it would write to a fenced file or recreate an empty one."""

    exit_code = 14
