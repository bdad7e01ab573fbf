"""A private PostgreSQL cluster: a throwaway server for `cdc demo --postgres` and the tests.

Why one of our own rather than the machine's server: the demo and the tests must not need
an administrator to create a role and a database on a shared server, nor leave anything
on one. The installed server's own `initdb` and `pg_ctl` make a cluster in a temporary
folder and run it there, and removing that folder removes every trace of it.

- **Which server**: Debian's `postgresql` package (server 15 on this project's machines,
  CI included) puts its programs in `/usr/lib/postgresql/<major>/bin`, off the PATH
  (its wrappers on the PATH pick a cluster by Debian's own configuration, which we do not
  use); the newest major there is taken. None installed is a `ServerMissing`: one error
  line and a hint, never a traceback.
- **Where it listens**: 127.0.0.1 only, at a port the kernel said was free, and a Unix
  socket in the cluster's own folder (never `/var/run/postgresql`, which belongs to the
  machine's server and which a non-root user cannot write).
- **Who may connect**: `trust` for the one role `initdb` creates (`ROLE`, the cluster's
  superuser), so no password exists anywhere: nothing reaches it but local processes, and
  it lives only as long as the demo or the test session.
- **As whom it runs**: PostgreSQL refuses to run as root (a server compromised through
  SQL would own the machine). When we are root, the cluster folder is given to the
  `postgres` system user (the package creates it) and `initdb`/`pg_ctl` run as that user
  through `runuser`; otherwise as ourselves.
- **Durability**: `fsync=off`. The cluster is thrown away at the end; an OS crash losing
  its last writes costs nothing, and a demo or a test suite runs much faster without it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from cdc.errors import CdcError

ROLE = "cdc"
"""The role the cluster is made for: its superuser, reached with `trust` (no password)."""

SEARCHED = "/usr/lib/postgresql/*/bin"
"""Where Debian's server packages put initdb and pg_ctl (the major version in the path)."""

INSTALL_HINT = "install the server: apt install postgresql"


class ClusterError(CdcError):
    """A private cluster could not be made, started or stopped: the program's own words
    follow (`initdb`, `pg_ctl`), with the cluster's server log where there is one."""

    exit_code = 1


class ServerMissing(ClusterError):
    """No PostgreSQL server is installed where `server_bin` looks: nothing to start a
    private cluster with. The command cannot run on this machine until one is."""


def server_bin() -> Path | None:
    """The newest installed server's bin folder (`/usr/lib/postgresql/<major>/bin`), or None."""
    found = sorted(glob.glob(f"{SEARCHED}/pg_ctl"), key=_major)
    return Path(found[-1]).parent if found else None


def require_server_bin() -> Path:
    """`server_bin()`, or a `ServerMissing` saying what to install."""
    found = server_bin()
    if found is None or not (found / "initdb").exists():
        raise ServerMissing(
            f"no PostgreSQL server installed (no initdb/pg_ctl in {SEARCHED})",
            hint=INSTALL_HINT,
        )
    return found


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def _free_port() -> int:
    """A port nothing listens on now; the server binds it a moment later (a race another
    process could win: `pg_ctl start` then fails, naming the port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _owner() -> str | None:
    """The system user the cluster runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "PostgreSQL refuses to run as root, and there is no `postgres` system user to "
            "run the private cluster as",
            hint="run as an ordinary user, or install the server package, which creates it "
            f"({INSTALL_HINT})",
        ) from None
    if shutil.which("runuser") is None:
        raise ClusterError(
            "PostgreSQL refuses to run as root, and `runuser` (util-linux) is not installed "
            "to run the private cluster as the `postgres` user",
            hint="run as an ordinary user, or install util-linux",
        )
    return "postgres"


class Cluster:
    """One running private cluster; `dsn` reaches its `postgres` database as `ROLE`.

    Made and started by the constructor (a failure removes the folder again); `close()`
    stops it and removes its folder. A context manager does both::

        with Cluster() as pg:
            url = pg.create_database("core")
    """

    def __init__(self, bin_dir: Path | None = None, prefix: str = "cdc-pg-") -> None:
        self.bin = Path(bin_dir) if bin_dir is not None else require_server_bin()
        self.user = _owner()
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = _free_port()
        try:
            if self.user:
                shutil.chown(self.root, self.user)
            self._as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", ROLE,
                            "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])  # fmt: skip
            self.start()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def dsn(self) -> str:
        """The URL of the cluster's `postgres` database, as `ROLE` (no password: trust)."""
        return self.database_dsn("postgres")

    @property
    def version(self) -> str:
        """The server's major version, as its bin folder names it (`15`)."""
        return self.bin.parent.name

    def database_dsn(self, name: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create database `name` on the cluster; its URL."""
        import psycopg  # here: only a caller that makes a database needs the driver
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_dsn(name)

    def _as_owner(self, cmd: list[str]) -> None:
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ClusterError(f"{' '.join(cmd)}: {e}") from None
        if r.returncode != 0:
            out = (r.stdout + r.stderr).strip()
            raise ClusterError(
                f"{' '.join(cmd)}: exit {r.returncode}" + (f"\n{out}" if out else ""),
                hint=f"the server's log, if it started: {self.log_path}",
            )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts,
                        "-l", str(self.log_path), "-w", "start"])  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m mode`: `fast` rolls back open transactions and shuts down
        cleanly; `immediate` ends every server process at once (nothing here is kept)."""
        self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def close(self) -> None:
        """Stop the server if it runs and remove the cluster's folder, whatever happens."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
