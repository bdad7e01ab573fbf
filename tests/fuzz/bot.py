"""A bot process for the daemon variant: replays a generated program on one legacy file.

Run as `python -m tests.fuzz.bot DB PROGRAM PAUSE`. PROGRAM is msgpack: a list of
[sqls, rows] (tests.fuzz.statements.Stmt). Statements run one by one as World.run does
(a failing one is counted and the rest go on; a transaction left open is rolled back),
with PAUSE seconds between actions, so the daemon, killed and restarted meanwhile, sees the
writes arrive over time. Prints one JSON line of counters on exit.
"""

from __future__ import annotations

import json
import sys
import time

import apsw
import msgspec


def main(db: str, program: str, pause: float) -> None:
    with open(program, "rb") as f:
        actions = msgspec.msgpack.decode(f.read())
    conn = apsw.Connection(db)
    conn.set_busy_timeout(10_000)
    done = errors = busy = 0
    last = None
    for sqls, rows in actions:
        try:
            if rows:
                conn.executemany(sqls[0], [tuple(r) for r in rows])
            else:
                for sql in sqls:
                    try:
                        conn.execute(sql)
                    except apsw.BusyError:
                        raise
                    except apsw.Error as e:
                        errors += 1  # as in the generated script: the next ones still run
                        last = f"{sql[:200]}: {e}"
        except apsw.BusyError:
            busy += 1
        except apsw.Error as e:
            errors += 1
            last = f"{sqls[0][:200]}: {e}"
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        done += 1
        time.sleep(pause)
    conn.close()
    print(json.dumps({"actions": done, "errors": errors, "busy": busy, "last_error": last}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
