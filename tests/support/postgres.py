"""A private PostgreSQL cluster for the tests that need a real server.

Debian's `postgresql` package (server 15) is on this project's machines, CI included; its
`initdb` and `pg_ctl` make a throwaway cluster in a temporary folder, listening on
127.0.0.1 at a free port and a socket in the same folder, with `trust` authentication for
the one test role. PostgreSQL refuses to run as root, so when the suite runs as root the
cluster belongs to the `postgres` system user (the package creates it). Tests skip, with
the reason, where no server is installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

ROLE = "cdc"


def server_bin() -> Path | None:
    """The newest installed server's bin folder (`/usr/lib/postgresql/<major>/bin`)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_major)
    return Path(found[-1]).parent if found else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One running cluster; `dsn` reaches its `postgres` database as the test role."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="cdc-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)
        self._as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", ROLE,
                        "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])  # fmt: skip
        self.start()

    @property
    def dsn(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, cmd: list[str]) -> None:
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}{r.stderr}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts,
                        "-l", str(self.root / "server.log"), "-w", "start"])  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
