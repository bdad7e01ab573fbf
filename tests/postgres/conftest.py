from __future__ import annotations

import pytest

from tests.support.postgres import Cluster, server_bin


@pytest.fixture(scope="session")
def pg_cluster():
    """One private PostgreSQL cluster for the session (tests/support/postgres.py)."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server installed (Debian: postgresql)")
    cluster = Cluster(bin_dir)
    yield cluster
    cluster.close()


@pytest.fixture
def pg(pg_cluster):
    """A fresh database on the cluster, dropped after the test: its DSN."""
    import psycopg

    name = f"t{abs(hash(object()))}"
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield pg_cluster.dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
