"""`cdc demo --postgres`: the private PostgreSQL server that holds the `core` target.

The demo must run on a laptop with nothing configured, so it brings its own server: a
private cluster of the installed PostgreSQL (`cdc.postgres.cluster`), in a temporary
folder, on 127.0.0.1 at a free port, and one database, `core`, on it. The demo says where
the server runs when it starts it and when it stops it; `run_demo` stops it and removes
its folder however the demo ends. Its log is copied into the demo folder first, so what
the server said outlives it.

"However the demo ends" includes a SIGTERM (a CI job's timeout, `kill`): Python's default
for it ends the process without running `finally`, which would leave the server running
from a temporary folder; `sigterm_unwinds` makes it unwind like Ctrl-C instead.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from cdc.demo.show import Echo
from cdc.postgres.cluster import ROLE, Cluster, require_server_bin

DATABASE = "core"
LOG_NAME = "postgres.log"  # the server's log, copied into the demo folder at the end


def start_server(echo: Echo) -> tuple[Cluster, str]:
    """A running private cluster and the URL of its new `core` database. No server
    installed is a `ServerMissing` (one error line, with what to install)."""
    bin_dir = require_server_bin()
    cluster = Cluster(bin_dir, prefix="cdc-demo-pg-")
    try:
        url = cluster.create_database(DATABASE)
    except BaseException:
        cluster.close()
        raise
    who = f"as the system user {cluster.user}" if cluster.user else "as this user"
    echo(
        f"  PostgreSQL {cluster.version}: a private cluster ({bin_dir}/initdb, pg_ctl) in "
        f"{cluster.root}, on 127.0.0.1:{cluster.port}, run {who}, trust for role {ROLE} only"
    )
    echo(f"  database {DATABASE}: {url}  (the `core` target; analytics and cache stay files)")
    return cluster, url


def stop_server(cluster: Cluster, demo_path: Path, echo: Echo) -> None:
    """Stop the cluster and remove its folder, keeping a copy of its log in the demo."""
    kept = demo_path / LOG_NAME
    try:
        shutil.copyfile(cluster.log_path, kept)
    except OSError:
        kept = None
    try:
        cluster.stop("fast")
    except Exception as e:  # noqa: BLE001 - the folder goes whatever the server said
        echo(f"  PostgreSQL did not stop cleanly ({e}); ending it")
    finally:
        cluster.close()
    log = f"; its log: {kept}" if kept else ""
    echo(
        f"  stopped the private PostgreSQL server (127.0.0.1:{cluster.port}) and removed "
        f"{cluster.root}{log}"
    )


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside: SIGTERM raises SystemExit(143) in the main thread, so every `finally`
    runs (the server stopped, its folder removed). Elsewhere than the main thread, where no
    handler can be set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, _frame: object) -> None:
        sys.exit(128 + signum)

    before = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
