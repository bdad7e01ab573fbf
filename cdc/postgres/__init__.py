"""PostgreSQL as a target (docs/postgres.md), built in steps. So far: how a value crosses
(`types`: the mapping from affinity to a PostgreSQL type, and the values it refuses) and
how a target is named (`dsn`). The plan's census of what the legacy columns hold lives in
`cdc.planning.pg_fit`. Replicating into PostgreSQL is not built yet: opening such a
target is refused by name (`cdc.sqlconn.open_target`).
"""
