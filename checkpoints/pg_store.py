"""A PostgreSQL target's positions, in the target itself (as `checkpoints.store` keeps a
SQLite target's): the applied log offset and event count (`_cdc_checkpoint`), and, per
source, the capture sequence applied through (`_cdc_source_applied`), all written in the
apply's own transaction (`replicator.pg_apply`) and read by `cdc status`."""

from __future__ import annotations

CONSUMER = "replicator"
SETUP = (
    "CREATE TABLE IF NOT EXISTS _cdc_checkpoint (consumer text PRIMARY KEY, "
    "log_offset bigint NOT NULL, events bigint NOT NULL, updated_at double precision)",
    "CREATE TABLE IF NOT EXISTS _cdc_source_applied (source text PRIMARY KEY, "
    "install_id text, through_seq bigint NOT NULL, events bigint NOT NULL, "
    "updated_at double precision)",
    "CREATE TABLE IF NOT EXISTS _cdc_pg_shapes (source text, tbl text, shape bytea NOT NULL, "
    "PRIMARY KEY (source, tbl))",
    # tables whose initial copy the target has whole (forgotten at a reset)
    "CREATE TABLE IF NOT EXISTS _cdc_snapshots (source text, tbl text, PRIMARY KEY (source, tbl))",
)


def pg_target_state(dsn: str) -> tuple[int, int, float | None, dict[str, int]]:
    """(applied log offset, events, when, through_seq per source), read without writing;
    0s when the target has none yet. A server that cannot be reached reads as nothing
    applied (status shows the whole log as its backlog, never a false "caught up")."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as c:
            have = c.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename IN ('_cdc_checkpoint', '_cdc_source_applied')"
            ).fetchone()[0]
            if have < 2:
                return 0, 0, None, {}
            row = c.execute(
                "SELECT log_offset, events, updated_at FROM _cdc_checkpoint WHERE consumer = %s",
                (CONSUMER,),
            ).fetchone()
            seqs = dict(c.execute("SELECT source, through_seq FROM _cdc_source_applied"))
    except psycopg.OperationalError:
        return 0, 0, None, {}
    return (row[0], row[1], row[2], seqs) if row else (0, 0, None, seqs)


def pg_snapshots_done(dsn: str, source: str) -> set[str]:
    """The tables of `source` whose initial copy the target has whole (none when the
    server cannot be reached: "copying" is the safe answer)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as c:
            if c.execute("SELECT to_regclass('_cdc_snapshots')").fetchone()[0] is None:
                return set()
            rows = c.execute("SELECT tbl FROM _cdc_snapshots WHERE source = %s", (source,))
            return {r[0] for r in rows}
    except psycopg.OperationalError:
        return set()
