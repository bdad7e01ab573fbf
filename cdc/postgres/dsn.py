"""A PostgreSQL target is named by its URL in `cdc.toml` (`core = "postgresql://cdc@db1/core"`).

The URL never carries a password: `cdc.toml` is read by people, copied into tickets and
shown by `cdc status`. libpq takes it from `PGPASSWORD` or `~/.pgpass` (PGPASSFILE)
instead, and a URL that carries one is refused by the config check. Parsed with the
standard library, not psycopg: the config is read by every bot that imports `cdc.pool`,
which must stay light.
"""

from __future__ import annotations

SCHEMES = ("postgresql", "postgres")


def is_postgres(target: str) -> bool:
    """Whether a target names a PostgreSQL database rather than a SQLite file."""
    return target.split("://", 1)[0].lower() in SCHEMES and "://" in target


def problems(name: str, target: str) -> list[str]:
    """What is wrong with a PostgreSQL target's URL, in the config check's words."""
    from urllib.parse import parse_qs, urlsplit  # here: 3 ms a bot importing cdc.pool saves

    try:
        u = urlsplit(target)
        u.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:
        return [f"`targets.{name}`: not a PostgreSQL URL ({e})"]
    out = []
    if u.password is not None or "password" in parse_qs(u.query):
        out.append(
            f"`targets.{name}`: the URL carries a password; put it in PGPASSWORD or "
            "~/.pgpass (`cdc docs postgres`), never in cdc.toml"
        )
    if not u.path.strip("/"):
        out.append(f"`targets.{name}`: the URL names no database (postgresql://host/DBNAME)")
    return out


def redacted(target: str) -> str:
    """The URL as it may be shown: any password replaced, whatever the check said."""
    from urllib.parse import urlsplit

    u = urlsplit(target)
    if u.password is None:
        return target
    host = u.hostname or ""
    port = f":{u.port}" if u.port else ""
    return u._replace(netloc=f"{u.username}:***@{host}{port}").geturl()


TABLE_KEYS = {"kind", "dsn", "schema"}


def from_table(name: str, table: dict) -> str:
    """`[targets.NAME]` with `kind = "postgres"`, `dsn` and an optional `schema`, as the one
    URL every part of the product takes: the schema travels as the session's search_path
    (libpq's `options`), so every unqualified name of ours and of the plan lands there.
    Raises ValueError with the config check's words."""
    from urllib.parse import quote

    unknown = sorted(set(table) - TABLE_KEYS)
    if unknown:
        raise ValueError(f"`targets.{name}`: unknown key `{unknown[0]}` (kind, dsn, schema)")
    if table.get("kind") != "postgres":
        raise ValueError(f'`targets.{name}`: a target table needs `kind = "postgres"`')
    dsn = table.get("dsn")
    if not isinstance(dsn, str) or not is_postgres(dsn):
        raise ValueError(f"`targets.{name}`: `dsn` must be a postgresql:// URL")
    schema = table.get("schema")
    if schema is None:
        return dsn
    if not isinstance(schema, str) or not schema or '"' in schema or "\\" in schema:
        raise ValueError(f"`targets.{name}`: `schema` must be a name without quotes")
    spaced = schema.replace(" ", "\\ ")  # libpq splits `options` at unescaped spaces
    option = quote(f'-csearch_path="{spaced}"', safe="")
    return f"{dsn}{'&' if '?' in dsn else '?'}options={option}"
