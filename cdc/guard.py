"""The guard left at a finalized legacy path: a stale bot must fail, not read frozen data
or get a new empty database.

SQLite creates a missing database file on open, so the path must never be empty: the
original keeps its inode under `<path>.cdc-moved` (a hard link, made first), and then a
small text file replaces the path in one atomic rename. Its first bytes are not a SQLite
header, so any connection fails on first use with "file is not a database", and a person
who looks at the file reads where the data went. Only done when no other process has the
file (or its -wal/-shm/-journal) open, which `/proc` tells on Linux; the processes that
still do are named, since they are the stale bots.
"""

from __future__ import annotations

import os
import stat
import time

import apsw

from cdc.errors import CdcError
from cdc.fsutil import fsync_dir

MAGIC = b"sqlite-cdc: this database has moved"
MOVED_SUFFIX = ".cdc-moved"


class GuardError(CdcError):
    exit_code = 13


def is_guard(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def holders(path: str) -> list[int]:
    """PIDs other than ours with the database or a side file of it open (Linux /proc;
    processes we may not inspect are not seen: run as the bots' user or root)."""
    names = {os.path.realpath(path + s) for s in ("", "-wal", "-shm", "-journal")}
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in names:
                    out.append(int(pid))
                    break
            except OSError:
                continue
    return sorted(out)


def guard(path: str, message: str, wait: float = 5.0) -> str:
    """Move the legacy database aside and leave the guard; returns where the original is.

    Waits up to `wait` seconds for other processes to close the file (the daemon's
    harvester lets go of a released file within a harvest), then refuses, naming them."""
    moved = path + MOVED_SUFFIX
    if is_guard(path):
        return moved
    deadline = time.monotonic() + wait
    while (pids := holders(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pids:
        raise GuardError(
            f"{path} is still open by process(es) {', '.join(map(str, pids))}: stale bots?",
            hint="switch or stop them, then run `cdc finalize` again (nothing was moved)",
        )
    conn = apsw.Connection(path)
    try:  # one self-contained file: fold the WAL in and leave WAL mode
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    finally:
        conn.close()
    if not os.path.exists(moved):
        os.link(path, moved)
    tmp = path + ".cdc-guard.tmp"
    # The guard gets the original's owner and mode (without group/world write): a stale
    # bot must be able to open it and read "moved", not fail on a permission instead.
    st = os.stat(moved)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o022)
        if os.geteuid() == 0:
            os.fchown(fd, st.st_uid, st.st_gid)
        f.write(MAGIC + b"\n" + message.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # the path is never missing, not even for an instant
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return moved
