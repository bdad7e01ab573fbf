"""Opening SQLite files the way this tool must: never creating a legacy file by accident.

One small function per connection setting, as apsw's best practice suggests, so every
connection we make is configured the same way. apsw errors are converted to our own
hierarchy here, at the edge.
"""

from __future__ import annotations

import os
import time

import apsw

from cdc.errors import SourceError, TargetError
from cdc.fsutil import PRIVATE_FILE, makedirs_private

PASS_NAME = "cdc_fence_pass"  # see cdc.fence
# True in a trigger fired by anyone but sqlite-cdc's own connections (`allow_writes`).
NOT_OURS = f"NOT EXISTS (SELECT 1 FROM pragma_module_list WHERE name = '{PASS_NAME}')"


class _NoTables:
    """A virtual-table module that is never used: its name is the pass (`cdc.fence`)."""

    def Create(self, *_args):  # noqa: ANN002, ANN201, N802 - apsw's protocol
        raise apsw.SQLError(f"{PASS_NAME} is a marker, not a table")

    Connect = Create


def allow_writes(conn: apsw.Connection) -> None:
    """Let this (sqlite-cdc's own) connection write through fences (`cdc.fence`). Fences
    made before 0.2 look for a function of that name, newer ones for a module."""
    conn.create_scalar_function(PASS_NAME, lambda: 1, 0, deterministic=True)
    conn.create_module(PASS_NAME, _NoTables())


def open_legacy(path: str, busy_timeout_ms: int = 5000, readonly: bool = False) -> apsw.Connection:
    """Open an existing legacy DB. A missing file is an error, never a new empty database."""
    if not os.path.exists(path):
        raise SourceError(f"{path}: legacy database not found", hint="check `sources` in cdc.toml")
    if os.path.isdir(path):
        raise SourceError(
            f"{path}: is a folder, not a database file", hint="check `sources` in cdc.toml"
        )
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE
    try:
        conn = apsw.Connection(path, flags=flags)
        set_busy_timeout(conn, busy_timeout_ms)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except apsw.ReadOnlyError:
            # A hot journal: a writer (a bot, or our way back) died mid-transaction in
            # rollback-journal mode, and only a read-write connection may roll it back.
            # Any bot's next open would do the same; do it now and read again.
            conn.close()
            apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE).execute(
                "SELECT count(*) FROM sqlite_master"
            ).fetchall()
            conn = apsw.Connection(path, flags=flags)
            set_busy_timeout(conn, busy_timeout_ms)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except apsw.NotADBError as e:
        raise SourceError(f"{path}: not a SQLite database (or corrupt): {e}") from e
    except apsw.CorruptError as e:
        raise SourceError(f"{path}: database is corrupt: {e}") from e
    except apsw.CantOpenError as e:
        raise SourceError(f"{path}: cannot open: {e}") from e
    except apsw.PermissionsError as e:
        raise SourceError(f"{path}: permission denied: {e}") from e
    except apsw.IOError as e:
        raise SourceError(f"{path}: cannot read: {e}") from e
    if not readonly:
        try:
            _check_writable(conn, path)
        except BaseException:
            conn.close()
            raise
    return conn


def _check_writable(conn: apsw.Connection, path: str) -> None:
    """A read-write open silently falls back to read-only on a write-protected file, and a
    rollback-journal database needs its folder writable too (SQLite creates `-journal`
    next to the file for every write). Both would fail later, half-way through a write
    (install, trim); say so at once, naming the file."""
    hint = "the daemon and `cdc install` write to the legacy files: run them as the bots' user, on a writable mount"
    if conn.readonly("main"):
        raise SourceError(
            f"{path}: read-only (file or file system): capture cannot be installed or harvested",
            hint=hint,
        )
    wal = conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    folder = os.path.dirname(path) or "."
    if not wal and not os.access(folder, os.W_OK):
        raise SourceError(
            f"{path}: its folder {folder} is not writable: SQLite cannot create the "
            "rollback journal a write needs there",
            hint=hint,
        )


def create_private(path: str) -> None:
    """Create a missing target (and its missing folders) for its owner only: 0600 file,
    0700 folders, whatever the umask. SQLite gives `-wal` and `-shm` the database's mode.
    An existing file or folder keeps its mode (the operator's choice)."""
    if os.path.exists(path):
        return
    parent = os.path.dirname(path)
    if parent:
        makedirs_private(parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def open_target(path: str, busy_timeout_ms: int = 5000) -> apsw.Connection:
    """Open (creating if needed) a consolidated DB in WAL mode with synchronous=NORMAL.

    NORMAL keeps every commit across a process crash (kill -9); a power loss may roll back
    the newest commits, rows and checkpoint together, so they are simply applied again
    from the log. The one thing that must never happen is a checkpoint that rolls back
    behind a log segment we deleted: `make_durable` is called before any deletion.
    """
    try:
        create_private(path)
    except OSError as e:
        raise TargetError(f"{path}: cannot create target database: {e.strerror or e}") from e
    # URI names for the legacy files a copied range attaches read-only (`replicator.
    # copy_range`); a target path is never one (`./` keeps a name starting "file:" a path)
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI
    try:
        conn = apsw.Connection(path if not path.startswith("file:") else "./" + path, flags=flags)
        set_busy_timeout(conn, busy_timeout_ms)
        set_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        # Fewer, larger WAL checkpoints: the applier writes in big transactions and is the
        # only writer until cutover (measured: 2000-row commits 25% faster, bench/README.md).
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        # After a rollback the target's tables are fenced for the bots, while replication
        # keeps them current for the next cutover.
        allow_writes(conn)
    except apsw.Error as e:
        raise TargetError(f"{path}: cannot open target database: {e}") from e
    return conn


class BusyWait:
    """A busy handler that polls every half millisecond instead of SQLite's 1..100 ms steps.

    SQLite's own busy timeout sleeps in growing steps, so a harvester that meets a bot's
    commit often oversleeps by tens of milliseconds: that was most of our replication lag
    on rollback-journal files. `timeout_ms` may be changed between calls (the trim uses a
    short budget and retries later instead of queueing behind busy bots).
    """

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self._start = 0.0

    def __call__(self, prior_calls: int) -> bool:
        now = time.monotonic()
        if prior_calls == 0:
            self._start = now
        if (now - self._start) * 1000.0 >= self.timeout_ms:
            return False
        time.sleep(0.0005 if prior_calls < 40 else 0.002)
        return True


def set_busy_timeout(conn: apsw.Connection, ms: int) -> BusyWait:
    handler = BusyWait(ms)
    conn.set_busy_handler(handler)
    return handler


def set_wal(conn: apsw.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL").fetchall()


class write_transaction:  # noqa: N801 - used like a function: `with write_transaction(conn):`
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error).

    A deferred transaction that reads first and writes later cannot wait for a busy
    database: when another connection wrote in between, SQLite refuses the upgrade at
    once (SQLITE_BUSY, or BUSY_SNAPSHOT in WAL) without calling the busy handler. Taking
    the write lock up front makes the busy timeout apply, so our short writes queue behind
    a bot's commit instead of failing.
    """

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> apsw.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except apsw.Error:
                if self.conn.in_transaction:  # a failed COMMIT leaves it open: end it
                    self.conn.execute("ROLLBACK")
                raise
        if self.conn.in_transaction:  # SQLite may already have rolled back (e.g. FULL)
            self.conn.execute("ROLLBACK")


class read_transaction:  # noqa: N801 - used like a function: `with read_transaction(conn):`
    """BEGIN ... COMMIT around a consistent read; always leaves the connection idle.

    A read that fails half-way (busy, schema change) must not leave a transaction open:
    the next harvest's BEGIN would fail and, in rollback-journal mode, our SHARED lock
    would block the bots' commits.
    """

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> apsw.Connection:
        self.conn.execute("BEGIN")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if not self.conn.in_transaction:
            return
        try:
            self.conn.execute("COMMIT")
        except apsw.Error:
            # A corrupt page read inside the transaction fails the COMMIT too, and SQLite
            # may have ended the transaction already: a ROLLBACK then fails with "no
            # transaction is active", which must not hide the read's own error.
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except apsw.Error:
                    if exc_type is None:
                        raise
            if exc_type is None:
                raise
