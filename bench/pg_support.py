"""What the PostgreSQL benches share (test_pg_snapshot, test_pg_lag): a private cluster the
way `bench/test_pg_apply.py` starts one (`tests/support/postgres.py`: initdb/pg_ctl in a
temporary folder, as the `postgres` user when run as root), a fresh database on it per
round, and a config file that names a PostgreSQL target (`config_from_dict` refuses one:
only `load_config(..., postgres=True)` takes it, as `cdc run` does).

A bench module never imports another one; these live here for that reason."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import Cluster, server_bin


def start_cluster() -> Iterator[Cluster]:
    """Body of a module-scoped fixture: a running cluster, stopped after the module; a skip
    with the reason where no server (or no psycopg) is installed."""
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    if server_bin() is None:
        pytest.skip("no PostgreSQL server installed (Debian: postgresql)")
    c = Cluster(server_bin())
    try:
        yield c
    finally:
        c.close()


def fresh_database(cluster: Cluster, name: str) -> str:
    """An empty database `name` on the cluster (dropped first if a round left one): its DSN."""
    import psycopg

    with psycopg.connect(cluster.dsn, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return cluster.dsn.rsplit("/", 1)[0] + "/" + name


def pg_toml(root: Path, dsn: str, source: str, path: Path, daemon: str = "") -> Path:
    """`root/cdc.toml`: one source, every table to one PostgreSQL target `core`."""
    p = root / "cdc.toml"
    p.write_text(
        f'state_dir = "{root}/state"\n[daemon]\n{daemon}'
        f'[targets]\ncore = "{dsn}"\n[[sources]]\nname = "{source}"\npath = "{path}"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\n'
    )
    return p


def table_digest(dsn: str, table: str, key: str = "id") -> tuple[int, str]:
    """(rows, md5 of every row's text in key order): two tables of one shape compare equal
    by value, whatever loaded them."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        n, digest = c.execute(
            f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t.\"{key}\")) "
            f'FROM "{table}" t'
        ).fetchone()
    return n, digest


# -- lag: the two clocks of bench/test_lag.py on a PostgreSQL target ---------------------------

# `landed`: a row trigger on the target table stamps each row as the apply inserts it, inside
# the apply's transaction (clock_timestamp() is read per row, as julianday('now') per
# statement in the SQLite trigger). The server runs on this host: one clock.
PG_LANDED_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_landed (id bigint PRIMARY KEY, landed float8 NOT NULL)",
    "CREATE OR REPLACE FUNCTION bench_landed_fn() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN INSERT INTO bench_landed VALUES (NEW.id, extract(epoch FROM clock_timestamp())) "
    "ON CONFLICT DO NOTHING; RETURN NULL; END $$",
    'CREATE TRIGGER bench_landed_ins AFTER INSERT ON "{table}" '
    "FOR EACH ROW EXECUTE FUNCTION bench_landed_fn()",
)

# The same on a SQLite target (as bench/test_lag.py adds it, which a bench cannot import).
SQLITE_LANDED_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_landed (id INTEGER PRIMARY KEY, landed REAL NOT NULL)",
    'CREATE TRIGGER IF NOT EXISTS bench_landed_ins AFTER INSERT ON "{table}" BEGIN '
    "INSERT OR IGNORE INTO bench_landed VALUES "
    "(NEW.id, (julianday('now') - 2440587.5) * 86400.0); END",
)


class PgPoller(threading.Thread):
    """`bench.conftest.Poller` against PostgreSQL: notes when each row of `table` is first
    visible to a reader (autocommit: every poll sees what has committed)."""

    def __init__(self, dsn: str, table: str, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.dsn, self.table, self.interval = dsn, table, interval
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            sql = f'SELECT id FROM "{self.table}" WHERE id > %s ORDER BY id'
            last = 0
            while not self.stop.is_set():
                ids = conn.execute(sql, (last,)).fetchall()
                now = time.time()
                for (i,) in ids:
                    self.seen[i] = now
                if ids:
                    last = ids[-1][0]
                time.sleep(self.interval)
