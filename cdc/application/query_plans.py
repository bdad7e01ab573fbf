"""EXPLAIN QUERY PLAN of a query on both sides, what got worse, and the index that mends it.

Latency over twenty runs on a test copy can hide what a plan shows at once: a SEARCH by an
index that became a SCAN reads every row, and the cost grows with the table, not with the
answer. So both plans are compared line by line, by the name each table has in the query
(the rewrite keeps the legacy name as alias, so both plans name a table alike):

- a table the legacy plan SEARCHes (by an index or the primary key) that the consolidated
  plan only SCANs;
- a `USE TEMP B-TREE FOR <clause>` the consolidated plan has more often than the legacy
  one (a sort the legacy file read from an index in order).

The suggested index is the legacy one, on the consolidated table, with the tag column
first for a merged table (every read of a merged table filters on it by equality, so the
legacy columns keep their use after it), named `<target table>__<legacy index>`.
"""

from __future__ import annotations

import re
from collections import Counter

import apsw
import msgspec

from cdc.application.rewrite import Rewritten
from cdc.sqlident import q

_ACCESS = re.compile(
    r"^(SCAN|SEARCH) (\S+)(?: AS \S+)?(?: USING (?:COVERING )?(?:INDEX (\S+)|"
    r"(INTEGER PRIMARY KEY|PRIMARY KEY)))?(?: \((.*)\))?"
)
_TEMP = re.compile(r"^USE TEMP B-TREE FOR (.+)$")


class Regression(msgspec.Struct, frozen=True):
    kind: str  # "scan" (was a SEARCH) or "temp-b-tree"
    table: str  # the name in the query (alias); "" for a temp B-tree
    detail: str  # in words, both plans' lines


class SuggestedIndex(msgspec.Struct, frozen=True):
    name: str
    table: str  # the consolidated table
    columns: list[str]  # as written in the CREATE INDEX: quoted, with COLLATE / DESC
    legacy_index: str  # what it restores ("PRIMARY KEY" for a legacy key)
    sql: str  # CREATE INDEX IF NOT EXISTS ...


class AppliedIndex(msgspec.Struct, frozen=True):
    target: str
    sql: str
    created: bool  # False: it was there already


def explain(conn: apsw.Connection, sql: str, params: object) -> list[str]:
    """The plan's detail lines, indented two spaces per level as the sqlite3 shell does."""
    rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    depth: dict[int, int] = {0: -1}
    out = []
    for node, parent, _unused, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        out.append("  " * depth[node] + str(detail))
    return out


def _accesses(
    plan: list[str], tags: dict[str, str] | None = None
) -> tuple[dict[str, list[str]], Counter[str]]:
    """(table name -> how each access reads it, temp B-tree clauses counted). A SEARCH of a
    merged table by its tag alone (`(bot=?)`, the primary key's prefix) reads every row of
    the member: it counts as a SCAN."""
    access: dict[str, list[str]] = {}
    temps: Counter[str] = Counter()
    for line in plan:
        text = line.strip()
        m = _ACCESS.match(text)
        if m:
            how = "SEARCH" if m.group(1) == "SEARCH" else "SCAN"
            tag = (tags or {}).get(m.group(2))
            index = m.group(3) or m.group(4) or ""
            if how == "SEARCH" and tag and (m.group(5) or "").replace(" ", "") == f"{tag}=?":
                how, index = "SCAN", f"(a SEARCH by {tag} alone) {index}"
            access.setdefault(m.group(2), []).append(f"{how} {index}".strip())
        t = _TEMP.match(text)
        if t:
            temps[t.group(1)] += 1
    return access, temps


def regressions(
    legacy: list[str], consolidated: list[str], rewritten: Rewritten
) -> list[Regression]:
    tags = {u.alias: u.tag_column for u in rewritten.tables if u.tag_column}
    old, old_temps = _accesses(legacy)
    new, new_temps = _accesses(consolidated, tags)
    out: list[Regression] = []
    for name, reads in old.items():
        searched = [r for r in reads if r.startswith("SEARCH")]
        now = new.get(name, [])
        if searched and now and not any(r.startswith("SEARCH") for r in now):
            out.append(
                Regression(
                    "scan",
                    name,
                    f"{name}: legacy {searched[0]}, consolidated {now[0]} (every row read)"
                    + (" of the member" if name in tags else ""),
                )
            )
    for clause, n in new_temps.items():
        if n > old_temps.get(clause, 0):
            out.append(
                Regression(
                    "temp-b-tree",
                    "",
                    f"USE TEMP B-TREE FOR {clause}: consolidated {n}, legacy {old_temps[clause]}",
                )
            )
    return out


def legacy_indexes(legacy_plan: list[str]) -> list[tuple[str, str]]:
    """(name in the query, index or key) the legacy plan reads tables by."""
    old, _ = _accesses(legacy_plan)
    out = []
    for name, reads in old.items():
        for r in reads:
            how = r.split(" ", 1)[1] if " " in r else ""
            if how:
                out.append((name, how))
    return out


def suggest(
    legacy: apsw.Connection,
    target: apsw.Connection,
    rewritten: Rewritten,
    legacy_plan: list[str],
    found: list[Regression],
) -> list[SuggestedIndex]:
    """The legacy indexes a regressed plan no longer uses, as consolidated indexes that
    are not there yet. Only for a plan that regressed: an index nobody misses costs every
    write of the bots."""
    if not found:
        return []
    uses = {u.alias: u for u in rewritten.tables}
    scanned = {r.table for r in found if r.kind == "scan"}
    sorting = any(r.kind == "temp-b-tree" for r in found)
    out: list[SuggestedIndex] = []
    for name, how in legacy_indexes(legacy_plan):
        use = uses.get(name)
        if use is None or not (name in scanned or sorting):
            continue
        cols = _legacy_columns(legacy, use.table, how)
        if not cols:
            continue
        if use.tag_column:
            cols = [q(use.tag_column), *cols]
        if _has_index(target, use.target_table, cols):
            continue
        label = "pk" if how.endswith("PRIMARY KEY") else how
        idx = f"{use.target_table}__{label}"
        sql = f"CREATE INDEX IF NOT EXISTS {q(idx)} ON {q(use.target_table)}({', '.join(cols)})"
        s = SuggestedIndex(idx, use.target_table, cols, how, sql)
        if s not in out:
            out.append(s)
    return out


def _legacy_columns(conn: apsw.Connection, table: str, how: str) -> list[str]:
    """The key columns of the index (or primary key) the legacy plan used, as an index
    definition writes them; [] for an expression index (not suggested: its terms would
    have to be rewritten too)."""
    if how.endswith("PRIMARY KEY"):
        info = conn.execute(f"PRAGMA table_info({q(table)})").fetchall()
        pk = sorted((r[5], r[1]) for r in info if r[5])
        return [q(name) for _, name in pk]
    cols = []
    for _seq, cid, name, desc, coll, key in conn.execute(f"PRAGMA index_xinfo({q(how)})"):
        if not key:
            continue
        if cid == -2 or name is None:
            return []
        term = q(name)
        if coll and coll.upper() != "BINARY":
            term += f" COLLATE {q(coll)}"
        if desc:
            term += " DESC"
        cols.append(term)
    return cols


def _has_index(conn: apsw.Connection, table: str, cols: list[str]) -> bool:
    """An index whose leading columns are these already exists (by any name)."""
    want = [c.split(" ", 1)[0].strip('"').replace('""', '"').lower() for c in cols]
    for _seq, name, *_ in conn.execute(f"PRAGMA index_list({q(table)})").fetchall():
        have = [
            (r[2] or "").lower()
            for r in conn.execute(f"PRAGMA index_xinfo({q(name)})").fetchall()
            if r[5]
        ]
        if have[: len(want)] == want:
            return True
    return False


def create_indexes(path: str, sqls: list[str], busy_timeout_ms: int = 5000) -> list[bool]:
    """Create the indexes on a consolidated file, one short write transaction; whether
    each was new.

    Safe while `cdc run` applies to the same file: an index is DDL on the target, not
    data. The apply's transactions and this one take the write lock in turn (the busy
    timeout waits for the other), the apply's statements name columns, never an index,
    and an index changes no row, so nothing the replicator or the verifier compares can
    differ. The bots' writes get slower by the index's upkeep, which is why only indexes a
    plan regression asks for are suggested."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        made = []
        with conn:
            for sql in sqls:
                before = conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()[0][0]
                conn.execute(sql)
                after = conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()[0][0]
                made.append(after > before)
        return made
    finally:
        conn.close()
