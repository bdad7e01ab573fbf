"""The guard left at a finalized legacy path: a stale bot must fail, not read frozen data
or get a new empty database, and the failure must say where the data went.

SQLite creates a missing database file on open, so the path must never be empty: the
original keeps its inode under `<path>.cdc-moved` (a hard link, made first), and then the
guard replaces the path in one atomic rename. The guard is a small valid SQLite database,
because an invalid file only yields "file is not a database", which reads like
corruption. SQLite lets a database say a custom message on every read and write of a
name: each legacy table becomes a view over a table that does not exist and whose name
is the message, so preparing any statement on it fails with "no such table:
main.sqlite-cdc: table T of PATH moved to TARGET (table X) at TIME; ...". Its header's
write version is above what SQLite writes, so SQLite opens it read-only: a bot's
`CREATE TABLE` of a new name fails ("attempt to write a readonly database") instead of
keeping data in the guard. The header's read version matches the original's journal
mode, so the bot's own `PRAGMA journal_mode` at start still succeeds. `_cdc_moved` lists
the messages for a person with the sqlite3 shell.

Only done when no other process has the file (or its -wal/-shm/-journal) open, which
`/proc` tells on Linux; the processes that still do are named, since they are the stale
bots. The text guards of earlier versions are still recognized.
"""

from __future__ import annotations

import os
import stat
import time

import apsw

from cdc.errors import CdcError
from cdc.fsutil import fsync_dir
from cdc.sqlident import q

MAGIC = b"sqlite-cdc: this database has moved"  # the text guard of earlier versions
MOVED_SUFFIX = ".cdc-moved"
APPLICATION_ID = 0x63646367  # "cdcg" in the header: what tells a guard without SQLite
INFO_TABLE = "_cdc_moved"
_HEADER = b"SQLite format 3\x00"


class GuardError(CdcError):
    exit_code = 13


def is_guard(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(72)
    except OSError:
        return False
    if head.startswith(MAGIC):
        return True
    return head.startswith(_HEADER) and int.from_bytes(head[68:72], "big") == APPLICATION_ID


def is_guard_conn(conn: apsw.Connection) -> bool:
    """The same test on an open connection (a plain open() of a file this process has
    SQLite connections on would drop their POSIX locks)."""
    return conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


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


def guard(path: str, messages: dict[str, str], wait: float = 5.0) -> str:
    """Move the legacy database aside and leave the guard; returns where the original is.

    `messages`: each legacy table name -> what a stale bot using it must read. Waits up
    to `wait` seconds for other processes to close the file (the daemon's harvester lets
    go of a released file within a harvest), then refuses, naming them."""
    moved = path + MOVED_SUFFIX
    if is_guard(path):
        return moved
    deadline = time.monotonic() + wait
    while (pids := holders(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pids:
        raise GuardError(
            f"{path} is still open by process(es) {', '.join(map(str, pids))}: stale bots?",
            hint=f"switch or stop them, then run `cdc finalize` again; {path} was not moved",
        )
    conn = apsw.Connection(path)
    try:  # one self-contained file: fold the WAL in and leave WAL mode
        wal = conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    finally:
        conn.close()
    if not os.path.exists(moved):
        os.link(path, moved)
    tmp = path + ".cdc-guard.tmp"
    for p in (tmp, tmp + "-journal"):
        if os.path.exists(p):
            os.unlink(p)
    _write_guard(tmp, messages, wal, os.stat(moved))
    os.replace(tmp, path)  # the path is never missing, not even for an instant
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return moved


def _write_guard(tmp: str, messages: dict[str, str], wal: bool, st: os.stat_result) -> None:
    """The guard database at `tmp`, with the original's owner and mode (without
    group/world write): a stale bot must be able to open it and read the message, not
    fail on a permission instead."""
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # SQLite keeps it
    conn = apsw.Connection(tmp)
    try:
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        with conn:
            conn.execute(f"CREATE TABLE {INFO_TABLE}(legacy_table TEXT PRIMARY KEY, message TEXT)")
            for table, msg in sorted(messages.items()):
                # A view over a table dropped right after: reading or writing the view
                # then fails at prepare, naming the missing table, that is the message.
                conn.execute(f"CREATE TABLE {q(msg)}(x)")
                conn.execute(f"CREATE VIEW {q(table)} AS SELECT * FROM {q(msg)}")
                conn.execute(f"DROP TABLE {q(msg)}")
                conn.execute(f"INSERT INTO {INFO_TABLE} VALUES (?, ?)", (table, msg))
        conn.execute("VACUUM")
    finally:
        conn.close()
    fd = os.open(tmp, os.O_RDWR)
    try:
        # Write version 3: SQLite opens the file read-only. Read version: the journal mode
        # the bots set (1 rollback, 2 WAL), so their `PRAGMA journal_mode` is a no-op.
        os.pwrite(fd, bytes([3, 2 if wal else 1]), 18)
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o022)
        if os.geteuid() == 0:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fsync(fd)
    finally:
        os.close(fd)
