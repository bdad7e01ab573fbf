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
