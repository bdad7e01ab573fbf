"""A private PostgreSQL cluster for the tests that need a real server.

The cluster itself is product code (`cdc.postgres.cluster`, which `cdc demo --postgres`
starts too): Debian's `postgresql` package (server 15) is on this project's machines, CI
included; its `initdb` and `pg_ctl` make a throwaway cluster in a temporary folder,
listening on 127.0.0.1 at a free port and a socket in the same folder, with `trust`
authentication for the one test role, run as the `postgres` system user when the suite
runs as root. Tests skip, with the reason, where no server is installed (`server_bin()`
is None).
"""

from __future__ import annotations

from cdc.postgres.cluster import ROLE, Cluster, server_bin

__all__ = ["ROLE", "Cluster", "server_bin"]
