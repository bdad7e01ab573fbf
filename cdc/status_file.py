"""The daemon's own view of itself, written atomically to the state dir every half second.

`cdc status` combines it with what it reads directly from the legacy files, the log and
the targets, so status works (and says so) when the daemon is down.
"""

from __future__ import annotations

import os
import threading
from typing import TypeVar

import msgspec

T = TypeVar("T")


class SourceRuntime(msgspec.Struct):
    path: str
    harvested: int = 0
    through_seq: int = 0
    snapshot_rows: int = 0
    snapshot_done: bool = False
    snapshot: str = "pending"
    errors: int = 0
    last_error: str | None = None
    capture: str = "triggers"
    hook_rows: int = 0  # hook capture: changes written by pool connections
    foreign_rows: int = 0  # hook capture: changes by writers outside the pool (triggers)
    heartbeat_at: float = 0.0  # start of the last harvest that read this file to its end


class TargetRuntime(msgspec.Struct):
    path: str
    applied: int = 0
    offset: int = 0
    last_lag: float | None = None
    last_error: str | None = None


class BackflowRuntime(msgspec.Struct):
    """One cut-over stage's way back (`cdc.backflow`): target capture sequences."""

    path: str
    state: str = "running"
    captured_seq: int = 0  # newest change the bots made in the target
    applied: dict[str, int] = {}  # per legacy source: the target sequence it has
    behind: int = 0  # captured_seq minus the lowest applied
    events: int = 0  # written back since the daemon started
    last_error: str | None = None


class DaemonStatus(msgspec.Struct):
    pid: int
    state: str
    started_at: float
    updated_at: float
    log_end: int
    sources: dict[str, SourceRuntime] = {}
    targets: dict[str, TargetRuntime] = {}
    backflow: dict[str, BackflowRuntime] = {}
    error: str | None = None


STATUS_FILE = "daemon-status.json"


def write_json_atomic(path: str, value: msgspec.Struct) -> None:
    """Readers (`cdc status`, the daemon) see the old file or the new one, never half."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.encode(value))
    os.replace(tmp, path)


_decoders: dict[type, msgspec.json.Decoder] = {}
_decoders_lock = threading.Lock()


def _decoder(type_: type[T]) -> msgspec.json.Decoder:
    """One decoder per type, made under a lock: msgspec 0.22 can crash when several threads
    make their first typed decode of one Struct at the same moment (the daemon's threads
    all read status files)."""
    with _decoders_lock:
        dec = _decoders.get(type_)
        if dec is None:
            dec = _decoders[type_] = msgspec.json.Decoder(type_)
        return dec


def read_json(path: str, type_: type[T]) -> T | None:
    try:
        with open(path, "rb") as f:
            return _decoder(type_).decode(f.read())
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def write_status(state_dir: str, status: DaemonStatus) -> None:
    write_json_atomic(os.path.join(state_dir, STATUS_FILE), status)


def read_status(state_dir: str) -> DaemonStatus | None:
    return read_json(os.path.join(state_dir, STATUS_FILE), DaemonStatus)
