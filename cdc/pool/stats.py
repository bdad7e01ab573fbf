"""What a process's connection pools report, and how `cdc status` gets it from another process.

The pools live inside the bots' processes and `cdc status` runs in its own, so each process
publishes its figures as one small JSON file, `<state_dir>/pools/<pid>.json`, replaced
atomically (write a temporary file, rename). A reader sees the old file or the new one,
never half, and drops the files of processes that have gone.

Evolution rule (the file is read by other versions of `cdc status`): fields are only
added, always with a default; readers ignore fields they do not know.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import msgspec

from cdc.fsutil import makedirs_private

log = logging.getLogger(__name__)

POOLS_DIR = "pools"


class PoolMetrics(msgspec.Struct):
    """One database's pool in one process. Counters are totals since the pool was made."""

    database: str  # the name given to `pool.connection` (a target or a source)
    path: str
    pid: int
    size: int  # most connections the pool may open
    open: int = 0  # connections open now (idle + in use)
    idle: int = 0
    in_use: int = 0
    checkouts: int = 0
    waits: int = 0  # checkouts that found no free connection and waited
    wait_seconds_total: float = 0.0
    wait_seconds_max: float = 0.0
    timeouts: int = 0  # borrowers that gave up (`PoolTimeout`)
    errors: int = 0  # exceptions out of a `with`, transactions left open, failed opens
    fenced: int = 0  # writes a cutover's fence refused (`FencedWrite`): a stale bot
    longest_hold_seconds: float = 0.0  # over every returned checkout
    current_longest_hold_seconds: float = 0.0  # of a connection still lent out
    created_at: float = 0.0
    updated_at: float = 0.0
    kind: str = "target"  # "target" (consolidated) or "legacy"
    replaced: int = 0  # broken connections closed and replaced
    last_error: str | None = None
    hooks: bool = False  # connections carry in-process capture (cdc.hooks)
    extra: dict[str, int] = {}  # counters the capture reports (e.g. changes captured)


class PoolMetricsFile(msgspec.Struct):
    """The content of `<state_dir>/pools/<pid>.json`."""

    pid: int
    written_at: float
    pools: list[PoolMetrics] = []
    proc_start: int | None = None  # the process's start time (Linux clock ticks): pid reuse


_decoder = msgspec.json.Decoder(PoolMetricsFile)
_encoder = msgspec.json.Encoder()
_write_lock = threading.Lock()


def pools_dir(state_dir: str) -> str:
    return os.path.join(state_dir, POOLS_DIR)


def metrics_path(state_dir: str, pid: int) -> str:
    return os.path.join(pools_dir(state_dir), f"{pid}.json")


def process_start(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux), to tell a process from a
    later one that got the same pid. None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def write_pool_metrics(state_dir: str, pools: list[PoolMetrics]) -> None:
    """Replace this process's metrics file. The folder is 0700 and the file 0600: paths and
    pids of the bots are nobody else's business."""
    pid = os.getpid()
    folder = pools_dir(state_dir)
    value = PoolMetricsFile(pid, time.time(), pools, process_start(pid))
    data = _encoder.encode(value)
    with _write_lock:  # threads of one process share the temporary file's name
        makedirs_private(folder)  # a bot may start first: the state dir is made 0700 too
        tmp = os.path.join(folder, f".{pid}.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a leftover temporary file may have other bits
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, metrics_path(state_dir, pid))


def read_pool_metrics(state_dir: str) -> list[PoolMetrics]:
    """Every live process's pools, ordered by database then pid. A file whose process has
    gone is deleted; an unreadable file is skipped (it may belong to another user)."""
    folder = pools_dir(state_dir)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out: list[PoolMetrics] = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if not (dot and ext == "json" and stem.isdigit()):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                content = _decoder.decode(f.read())
        except (OSError, msgspec.DecodeError):
            continue
        if not _alive(content):
            _remove(path)
            continue
        out.extend(content.pools)
    out.sort(key=lambda m: (m.database, m.pid))
    return out


def _alive(content: PoolMetricsFile) -> bool:
    try:
        os.kill(content.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    if content.proc_start is not None:
        now = process_start(content.pid)
        if now is not None and now != content.proc_start:
            return False  # the pid now belongs to another process
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as e:
        log.debug("cannot remove stale pool metrics %s: %s", path, e)
