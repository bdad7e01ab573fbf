"""A bot for the cutover tests: writes rows to a legacy table until a fence refuses it, then,
once the cutover record says the stage is done, to its consolidated table; and back to the
legacy table when a fence there refuses it and the record says the stage was rolled back.
Every committed row is logged (where, id, marker), so a test can check that each is present
exactly once. A write accepted on a side the record said was fenced both before and after
it is counted (`accepted_while_fenced`): that would be a write silently accepted.

Run as `python -m tests.support.cutover_bot LEGACY TABLE TARGET_DB TARGET_TABLE RECORD OUT SEED`.
Like the real bots: stdlib sqlite3, a connection per write, timeout 5 s.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time

AFFINITY_VALUES = (("INT", 7), ("REAL", 0.5), ("FLOA", 0.5), ("DOUB", 0.5), ("BLOB", b"\x00b"))


def insert_for(conn: sqlite3.Connection, table: str, marker: str) -> tuple[str, list]:
    """An INSERT that fits the table: the rowid key left to SQLite, the first TEXT column
    gets the marker, other NOT NULL columns without a default get a value of their type."""
    cols, vals, marked = [], [], False
    for _cid, name, decl, notnull, default, pk in conn.execute(f'PRAGMA table_info("{table}")'):
        if pk:
            continue
        decl = (decl or "").upper()
        textual = not any(a in decl for a, _ in AFFINITY_VALUES)
        if textual and not marked:
            cols.append(name)
            vals.append(marker)
            marked = True
        elif notnull and default is None:
            cols.append(name)
            vals.append(next((v for a, v in AFFINITY_VALUES if a in decl), "x"))
    quoted = ", ".join(f'"{c}"' for c in cols)
    return f'INSERT INTO "{table}" ({quoted}) VALUES ({", ".join("?" * len(cols))})', vals


LEGACY_FENCED = ("fenced", "done", "finalized", "rolling_back")


def stage_state(record: str) -> str | None:
    try:
        with open(record, encoding="utf-8") as f:
            return json.load(f)["state"]
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    legacy, table, target_db, target_table, record, out, seed = sys.argv[1:8]
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    where = "legacy"
    n = refused = errors = switches = 0
    accepted_while_fenced = 0
    last_error = None
    with open(out, "a", encoding="utf-8") as log:
        while not stop:
            n += 1
            marker = f"bot{seed}-{n}"
            path, tbl = (target_db, target_table) if where == "target" else (legacy, table)
            before = stage_state(record)
            try:
                c = sqlite3.connect(path, timeout=5.0)
                try:
                    sql, vals = insert_for(c, tbl, marker)
                    with c:
                        rowid = c.execute(sql, vals).lastrowid
                finally:
                    c.close()
                after = stage_state(record)
                fenced = LEGACY_FENCED if where == "legacy" else ("rolled_back",)
                accepted_while_fenced += before in fenced and after in fenced
                log.write(json.dumps({"where": where, "id": rowid, "marker": marker}) + "\n")
                log.flush()
            except sqlite3.Error as e:
                last_error = str(e)
                if "moved to" in last_error:
                    refused += 1
                    state = stage_state(record)
                    side = "target" if state in ("done", "finalized") else "legacy"
                    if state in ("done", "finalized", "rolled_back") and side != where:
                        where, switches = side, switches + 1
                else:
                    errors += 1
            time.sleep(0.005)
    print(
        json.dumps(
            {
                "writes": n,
                "refused": refused,
                "errors": errors,
                "switches": switches,
                "where": where,
                "accepted_while_fenced": accepted_while_fenced,
                "last_error": last_error,
            }
        )
    )


if __name__ == "__main__":
    main()
