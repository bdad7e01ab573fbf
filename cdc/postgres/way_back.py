"""The rollback window's objects in a PostgreSQL target: capture of the bots' writes, fences.

A SQLite target is captured with the legacy files' own triggers (`cdc.capture`); a
PostgreSQL target gets the same two things in its own terms:

- **Capture.** An AFTER row trigger per table writes the keys a write touched into
  `_cdc_changes` (the key as text: every mapped type prints and parses back exactly, with
  the function's own `extra_float_digits` and `bytea_output`, whatever the bot's session
  sets). The way back reads each key's row as it is now (`read_changes`), as the SQLite
  backflow does. Our own connections set `cdc.replicator = on` for their session
  (`mark_ours`), and the triggers pass over their writes: PostgreSQL can tell them apart,
  which SQLite triggers cannot (they remove their capture rows in the apply's own
  transaction instead).
- **Order.** A sequence value is taken when a row is written, not when its transaction
  commits: a reader going by it would step over a row whose transaction commits later,
  and lose it. So a capture row gets its place in the way back's order (`ord`) only once
  it is committed, from one assigner at a time (`assign`, under an advisory lock): a
  transaction still in flight gets a later `ord` than every row read so far, never an
  earlier one.
- **Fences.** A BEFORE statement trigger on INSERT, UPDATE, DELETE and TRUNCATE raises
  the fence's message (starting `sqlite-cdc:`, as a SQLite fence's) for every session but
  ours. Fencing first takes each table's SHARE ROW EXCLUSIVE lock, so every bot
  transaction that wrote there has ended, and the capture sequence the fence records
  covers all of them.

TRUNCATE of a captured table is refused by name: it leaves no key to carry back.
Not covered (docs/postgres.md, Limits): DDL by a stale writer on a fenced target table
(PostgreSQL runs no trigger for it without an event trigger, which needs a superuser).
"""

from __future__ import annotations

import hashlib
import time
import uuid

from cdc.errors import FENCE_PREFIX, TargetError
from cdc.sqlident import lit, q

CHANGES = "_cdc_changes"
META = "_cdc_way_back"
ORD = "_cdc_changes_ord"
OURS = "cdc.replicator"  # a session setting: set on our connections only
_ASSIGN_LOCK = 0x6364635F776221  # advisory lock id of the assigner ("cdc_wb!")
LOCK_TIMEOUT = "5s"  # a fence waits no longer for a bot's open transaction

REFUSE_FUNCTION = (
    "CREATE OR REPLACE FUNCTION _cdc_refuse() RETURNS trigger LANGUAGE plpgsql AS $cdc$ "
    f"BEGIN IF current_setting('{OURS}', true) = 'on' THEN RETURN NULL; END IF; "
    "RAISE EXCEPTION USING MESSAGE = TG_ARGV[0], ERRCODE = '55000'; END $cdc$"
)
SETUP = (
    f"CREATE TABLE IF NOT EXISTS {CHANGES} (id bigserial PRIMARY KEY, ord bigint, "
    "tbl text NOT NULL, k text[] NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {CHANGES}_by_ord ON {CHANGES} (ord)",
    f"CREATE INDEX IF NOT EXISTS {CHANGES}_unassigned ON {CHANGES} (id) WHERE ord IS NULL",
    f"CREATE SEQUENCE IF NOT EXISTS {ORD}",
    f"CREATE TABLE IF NOT EXISTS {META} (k text PRIMARY KEY, v text NOT NULL)",
    REFUSE_FUNCTION,
)


def mark_ours(conn) -> None:  # noqa: ANN001 - a psycopg connection
    """Our session's writes pass the fences and are not captured (for the session)."""
    conn.execute(f"SELECT set_config('{OURS}', 'on', false)")


def make_schema(conn) -> None:  # noqa: ANN001
    """The schema a target's URL names (`[targets.X] schema`, the session's search_path),
    made if it does not exist yet: everything of ours and of the plan is created there."""
    if conn.execute("SELECT current_schema()").fetchone()[0] is not None:
        return
    (path,) = conn.execute("SELECT current_setting('search_path')").fetchone()
    first = path.split(",")[0].strip()
    name = first[1:-1].replace('""', '"') if first.startswith('"') else first
    if name and not name.startswith("$"):
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q(name)}")


def _fn(prefix: str, table: str) -> str:
    """A function or trigger name of ours for `table`, within PostgreSQL's 63 bytes."""
    return f"_cdc_{prefix}_" + hashlib.sha1(table.encode()).hexdigest()[:16]


def key_columns(conn, table: str) -> list[str]:  # noqa: ANN001
    """The table's primary key columns, in key order."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY "
        "AS u(attnum, n) ON true JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = u.attnum WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
        "ORDER BY u.n",
        (q(table),),
    ).fetchall()
    return [r[0] for r in rows]


def install(conn, tables: list[str]) -> str:  # noqa: ANN001
    """Capture `tables` (idempotent), in the caller's transaction; returns the install id
    (a new one only the first time: backflow checkpoints name it)."""
    for sql in SETUP:
        conn.execute(sql)
    for t in tables:
        key = key_columns(conn, t)
        if not key:
            raise TargetError(f"table {t!r} of the PostgreSQL target has no primary key")
        conn.execute(_capture_function(t, key))
        conn.execute(
            f"CREATE OR REPLACE TRIGGER {_fn('cap', t)} AFTER INSERT OR UPDATE OR DELETE "
            f"ON {q(t)} FOR EACH ROW EXECUTE FUNCTION {_fn('cap', t)}()"
        )
        message = f"{FENCE_PREFIX} TRUNCATE of {t} cannot be carried back to its legacy files"
        conn.execute(
            f"CREATE OR REPLACE TRIGGER {_fn('trunc', t)} BEFORE TRUNCATE ON {q(t)} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION _cdc_refuse({lit(message)})"
        )
    conn.execute(
        f"INSERT INTO {META} VALUES ('install_id', %s) ON CONFLICT DO NOTHING",
        (uuid.uuid4().hex,),
    )
    return install_id(conn) or ""


def _capture_function(table: str, key: list[str]) -> str:
    old = ", ".join(f"OLD.{q(k)}::text" for k in key)
    new = ", ".join(f"NEW.{q(k)}::text" for k in key)
    same = " AND ".join(f"OLD.{q(k)} IS NOT DISTINCT FROM NEW.{q(k)}" for k in key)
    ins = f"INSERT INTO {CHANGES}(tbl, k) VALUES ({lit(table)}, ARRAY[%s])"
    return (
        f"CREATE OR REPLACE FUNCTION {_fn('cap', table)}() RETURNS trigger LANGUAGE plpgsql "
        "SET extra_float_digits = 3 SET bytea_output = 'hex' AS $cdc$ BEGIN "
        f"IF current_setting('{OURS}', true) = 'on' THEN RETURN NULL; END IF; "
        f"IF TG_OP <> 'INSERT' THEN {ins % old}; END IF; "
        f"IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NOT ({same})) THEN {ins % new}; END IF; "
        "RETURN NULL; END $cdc$"
    )


def is_capturing(conn, tables: list[str]) -> bool:  # noqa: ANN001
    """Whether every one of `tables` has its capture trigger (one catalog read: what a
    cutover checks under its fence instead of installing again)."""
    if install_id(conn) is None:
        return False
    names = [_fn("cap", t) for t in tables]
    (n,) = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s)", (names,)
    ).fetchone()
    return n == len(set(names))


def install_id(conn) -> str | None:  # noqa: ANN001
    if conn.execute(f"SELECT to_regclass('{META}')").fetchone()[0] is None:
        return None
    row = conn.execute(f"SELECT v FROM {META} WHERE k = 'install_id'").fetchone()
    return row[0] if row else None


def assign(conn) -> int:  # noqa: ANN001
    """Give committed capture rows their place in the order (see the module's docstring),
    in the caller's transaction; returns the highest place given so far (0: none)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ASSIGN_LOCK,))
    conn.execute(
        f"UPDATE {CHANGES} SET ord = nextval('{ORD}') WHERE id IN "
        f"(SELECT id FROM {CHANGES} WHERE ord IS NULL ORDER BY id)"
    )
    return conn.execute(f"SELECT coalesce(max(ord), 0) FROM {CHANGES}").fetchone()[0]


def fence(conn, dsn: str, homes: dict[str, str], note: str) -> tuple[int, float, dict]:  # noqa: ANN001
    """Fence `homes` (target table -> where its rows live now) in the caller's
    transaction, after every bot transaction on them ended (their locks); returns the
    capture order reached then, the time, and the identity counters (for the legacy
    files)."""
    tables = sorted(homes)
    conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    conn.execute(f"LOCK TABLE {', '.join(q(t) for t in tables)} IN SHARE ROW EXCLUSIVE MODE")
    conn.execute(REFUSE_FUNCTION)
    for t in tables:
        message = f"{FENCE_PREFIX} table {t} of {dsn} moved to {homes[t]}; {note}"
        conn.execute(
            f"CREATE OR REPLACE TRIGGER {_fn('fence', t)} BEFORE INSERT OR UPDATE OR DELETE "
            f"OR TRUNCATE ON {q(t)} FOR EACH STATEMENT EXECUTE FUNCTION _cdc_refuse({lit(message)})"
        )
    return assign(conn), time.time(), identity_values(conn, tables)


def unfence(conn, tables: list[str]) -> list[str]:  # noqa: ANN001
    """Lift the fences of `tables` (those that had one), in the caller's transaction (one
    catalog read: a cutover does this under its fence)."""
    lifted = set(fenced(conn, tables))
    for t in tables:
        if t in lifted:
            conn.execute(f"DROP TRIGGER {_fn('fence', t)} ON {q(t)}")
    return [t for t in tables if t in lifted]


def fenced(conn, tables: list[str]) -> list[str]:  # noqa: ANN001
    """The tables among `tables` whose fence trigger is in place."""
    names = {_fn("fence", t): t for t in tables}
    rows = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgname = ANY(%s)", (list(names),)
    ).fetchall()
    return [names[r[0]] for r in rows]


def identity_values(conn, tables: list[str]) -> dict[str, int]:  # noqa: ANN001
    """Per table, the highest value its identity column handed out (tables without one,
    or whose counter never moved, are left out)."""
    out = {}
    for t in tables:
        for col in _identity_columns(conn, t):
            (last,) = conn.execute(
                "SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, %s)::regclass)",
                (q(t), col),
            ).fetchone()
            if last is not None:
                out[t] = max(out.get(t, 0), last)
    return out


def carry_identity(conn, counters: dict[str, int]) -> dict[str, int]:  # noqa: ANN001
    """Move each table's identity counter past both its highest key and the legacy
    AUTOINCREMENT counter (`counters`), so a bot's first insert cannot take an id a
    legacy row has or had. Returns the values set."""
    out = {}
    for t in sorted(counters):
        for col in _identity_columns(conn, t):
            top = conn.execute(f"SELECT max({q(col)}) FROM {q(t)}").fetchone()[0]
            value = max(top or 0, counters[t] or 0)
            if value > 0:
                conn.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, %s), %s, true)", (q(t), col, value)
                )
                out[t] = value
    return out


def identity_tables(conn, tables: list[str]) -> list[str]:  # noqa: ANN001
    return [t for t in tables if _identity_columns(conn, t)]


def _identity_columns(conn, table: str) -> list[str]:  # noqa: ANN001
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attidentity <> '' AND NOT attisdropped",
        (q(table),),
    ).fetchall()
    return [r[0] for r in rows]


def trim(conn, through: int) -> None:  # noqa: ANN001
    """Capture rows every legacy file has (the order's sequence never restarts)."""
    conn.execute(f"DELETE FROM {CHANGES} WHERE ord <= %s", (through,))


def remove(conn, tables: list[str]) -> int:  # noqa: ANN001
    """The end of the rollback window: every object of ours leaves the target's tables.
    Returns how many tables were captured (0: nothing was)."""
    if install_id(conn) is None:
        return 0
    n = 0
    for t in tables:
        if conn.execute("SELECT to_regclass(%s)", (q(t),)).fetchone()[0] is None:
            continue
        for prefix in ("cap", "trunc", "fence"):
            conn.execute(f"DROP TRIGGER IF EXISTS {_fn(prefix, t)} ON {q(t)}")
        conn.execute(f"DROP FUNCTION IF EXISTS {_fn('cap', t)}()")
        n += 1
    for sql in (f"DROP TABLE IF EXISTS {CHANGES}", f"DROP SEQUENCE IF EXISTS {ORD}"):
        conn.execute(sql)
    conn.execute(f"DROP TABLE IF EXISTS {META}")
    conn.execute("DROP FUNCTION IF EXISTS _cdc_refuse()")
    return max(n, 1)


CARRIED = ("bigint", "double precision", "text", "bytea", "numeric")  # cdc.postgres.types


def columns(conn, table: str) -> list[tuple[str, str]]:  # noqa: ANN001
    """(name, PostgreSQL type) of each column of `table`, in order."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (q(table),),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def read_changes(
    conn,  # noqa: ANN001
    table: str,
    cols: list[tuple[str, str]],
    key: list[str],
    lo: int,
    hi: int,
) -> list[tuple[int, list, list | None]]:
    """The keys of `table` captured with order in (lo, hi], one per key (its newest
    place), each with its row as it is now (None: gone), in the caller's snapshot. A
    column of a type the mapping does not carry (a bot's ALTER on the target) comes as
    its text."""
    types = dict(cols)
    keyed = [f"c.k[{i + 1}]::{types[k]}" for i, k in enumerate(key)]
    join = " AND ".join(f"t.{q(k)} = {e}" for k, e in zip(key, keyed, strict=True))
    picked = [f"t.{q(n)}" if ty in CARRIED else f"t.{q(n)}::text" for n, ty in cols]
    rows = conn.execute(
        f"SELECT c.ord, t.ctid IS NOT NULL, {', '.join(keyed + picked)} FROM "
        f"(SELECT k, max(ord) AS ord FROM {CHANGES} WHERE tbl = %s AND ord > %s AND ord <= %s "
        f"GROUP BY k) c LEFT JOIN {q(table)} t ON {join} ORDER BY c.ord",
        (table, lo, hi),
    ).fetchall()
    n = len(key)
    return [(r[0], list(r[2 : 2 + n]), list(r[2 + n :]) if r[1] else None) for r in rows]
