"""The daemon's own view of itself, written atomically to the state dir every half second.

`cdc status` combines it with what it reads directly from the legacy files, the log and
the targets, so status works (and says so) when the daemon is down.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
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
    lost_tables: dict[str, str] = {}  # captured tables gone (dropped/renamed): what happened


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
    """Readers (`cdc status`, the daemon) see the old file or the new one, never half.

    On a full disk (the state dir's, shared with the change log) no new file can be made,
    and a status frozen at the moment the disk filled would hide the very error an
    operator looks for. So every file is written with room to grow (trailing spaces, valid
    JSON: `_with_room`), and on a full disk it is rewritten in place, inside the space it
    holds (`_overwrite_in_place`); `read_json` reads again if it meets it half written.
    """
    data = msgspec.json.encode(value)
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover temporary file may have other bits
        with os.fdopen(fd, "wb") as f:
            f.write(_with_room(data))
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a half-written tmp holds space the change log needs
        if not _overwrite_in_place(path, data):
            raise


ROOM = 4096  # bytes a status file may grow by while the disk is full (the error texts)


def _with_room(data: bytes) -> bytes:
    """`data` padded with spaces to whole 4 KiB blocks, at least `ROOM` (or half its own
    size) more than it needs: what the source and target errors of a full disk add to the
    status must fit in place (a few hundred bytes each)."""
    size = len(data) + max(ROOM, len(data) // 2)
    return data + b" " * (-(-size // 4096) * 4096 - len(data))


def _overwrite_in_place(path: str, data: bytes) -> bool:
    """Write `data` over the existing file at `path` without allocating: only when it fits
    in the blocks the file already holds. A shorter text is padded with spaces (still
    valid JSON), so the file keeps its room for the next write. False: it cannot be done."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if len(data) > max(st.st_size, st.st_blocks * 512):
            return False
        if len(data) < st.st_size:
            data += b" " * (st.st_size - len(data))
        try:
            os.pwrite(fd, data, 0)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)


FULL_BELOW = 64 * 1024  # free bytes under which a disk is full to SQLite (a WAL index: 32 KiB)


def full_disk_note(path: str) -> str:
    """A note for errors whose own text does not say that the disk is full (SQLite's
    "disk I/O error" when there is no room for a WAL index): "(its disk is full: N bytes
    free)" when the disk holding the file `path` is, else an empty string."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return ""
    return f" (its disk is full: {free} bytes free)" if free < FULL_BELOW else ""


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
    """The file decoded, or None when it is missing or undecodable. A file rewritten in
    place (full disk, see `write_json_atomic`) may be met half written: read it again."""
    for attempt in range(3):
        try:
            with open(path, "rb") as f:
                return _decoder(type_).decode(f.read())
        except FileNotFoundError:
            return None
        except msgspec.DecodeError:
            if attempt == 2:
                return None
            time.sleep(0.01)
    return None


def write_status(state_dir: str, status: DaemonStatus) -> None:
    write_json_atomic(os.path.join(state_dir, STATUS_FILE), status)


def read_status(state_dir: str) -> DaemonStatus | None:
    return read_json(os.path.join(state_dir, STATUS_FILE), DaemonStatus)


class DaemonState(msgspec.Struct):
    state: str
    pid: int | None = None
    updated_at: float | None = None
    error: str | None = None
    started_at: float | None = None


def daemon_state(ds: DaemonStatus | None, now: float) -> DaemonState:
    """What the status file says of the daemon, checked against its pid and its age."""
    if ds is None:
        return DaemonState("not started")
    state = ds.state
    live = state in ("running", "restarting")  # the process says it goes on
    if live and not _pid_alive(ds.pid):
        state = "dead"
    elif live and now - ds.updated_at > 10:
        state = "stalled"
    return DaemonState(state, ds.pid, ds.updated_at, ds.error, ds.started_at)


def daemon_running(cfg) -> bool:  # noqa: ANN001 - a cdc.config.Config
    """Whether a live daemon owns this state dir (by its status file and its pid)."""
    ds = read_status(cfg.state_dir)
    return ds is not None and daemon_state(ds, time.time()).state == "running"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
