"""How long the trim of a million harvested capture rows holds a bot's write lock.

The trim deletes capture rows the change log already holds, in a write transaction on the
bots' file: while it runs, no bot commits (rollback journal and WAL alike: one writer).
Before, it was one `DELETE ... WHERE seq <= through`; now it is slices of `trim_slice`
rows, one write transaction each, with the lock let go between them
(`Harvester._maybe_trim`).

A template legacy file gets capture installed on one table and 1M capture rows (the
shape the triggers write: tid, op, one key). Each round copies it twice and trims one copy
the old way (the unbounded DELETE, in `write_transaction` on an `open_legacy` connection,
as the harvester did) and the other through a real `Harvester` whose position covers every
row; the order alternates between rounds. A lock hold is timed from the moment
`BEGIN IMMEDIATE` starts to the moment its `COMMIT` has finished, with SQLite's own trace
events on the connection (`trace_v2`). The figure is the longest hold of each trim; the
medians over the rounds are compared. The sliced trim's wall time, lock time and number of
transactions are recorded too.
"""

from __future__ import annotations

import statistics
import time

import msgspec
import pytest

from bench.support import SCALE, copy_db, create_db, install_capture, make_config, scaled
from cdc.capture import triggers as capture
from cdc.capture.harvester import Harvester
from cdc.changelog.segments import LogWriter
from cdc.planning.resolve import resolve_plan
from cdc.sqlconn import open_legacy, write_transaction

ROWS = scaled(1_000_000, 1000)
ROUNDS = max(1, round(5 * min(1.0, SCALE)))
OLD_TRIM = (
    f"DELETE FROM {capture.CHANGES} WHERE seq <= ? AND seq < "
    f"(SELECT max(seq) FROM {capture.CHANGES})"
)


def _template(path: str, journal: str) -> None:
    create_db(path, journal, ("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)",))
    install_capture(path, ["kv"])
    c = open_legacy(path)
    with write_transaction(c):
        c.execute(
            f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
            f"INSERT INTO {capture.CHANGES}(seq, tid, op, k1) SELECT i, 1, 1, i FROM s",
            (ROWS,),
        )
    c.close()


class LockHolds:
    """Write transactions on one connection, BEGIN IMMEDIATE to the end of COMMIT."""

    def __init__(self, conn) -> None:  # noqa: ANN001 - an apsw.Connection
        self.holds: list[float] = []
        self._began = 0.0
        mask = 0x01 | 0x02  # SQLITE_TRACE_STMT, SQLITE_TRACE_PROFILE
        conn.trace_v2(mask, self._event, id="lock-holds")

    def _event(self, ev: dict) -> None:
        sql = ev.get("sql", "")
        if ev["code"] == 0x01 and sql.startswith("BEGIN IMMEDIATE"):
            self._began = time.perf_counter()
        elif ev["code"] == 0x02 and sql == "COMMIT":
            self.holds.append(time.perf_counter() - self._began)


def _old_trim(path: str) -> list[float]:
    conn = open_legacy(path)
    holds = LockHolds(conn)
    with write_transaction(conn):
        conn.execute(OLD_TRIM, (ROWS,))
    conn.close()
    return holds.holds


def _sliced_trim(root, path: str) -> tuple[list[float], float]:
    cfg = make_config(root, {"bot": path}, trim_interval=0.0)
    (sp,) = resolve_plan(cfg).sources
    writer = LogWriter(cfg.log_dir)
    h = Harvester(sp, writer, cfg.daemon)
    h.open()
    h.position = msgspec.structs.replace(h.position, through_seq=ROWS)  # all harvested
    holds = LockHolds(h.conn)
    t = time.perf_counter()
    h._maybe_trim()
    wall = time.perf_counter() - t
    left = h.conn.execute(f"SELECT count(*) FROM {capture.CHANGES}").fetchone()[0]
    h.close()
    writer.close()
    assert left == 1, left  # everything but the newest row
    return holds.holds, wall


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_trim_lock_hold(benchmark, summary, tmp_path, journal):
    tpl = str(tmp_path / "template.db")
    _template(tpl, journal)
    old, new, walls, counts = [], [], [], []
    last: dict = {}
    for i in range(ROUNDS):
        root = tmp_path / f"r{i}"
        root.mkdir()
        a, b = str(root / "old.db"), str(root / "new.db")
        copy_db(tpl, a)
        copy_db(tpl, b)

        def sliced(root=root, b=b) -> None:
            last["holds"], last["wall"] = _sliced_trim(root, b)

        if i % 2:
            old.append(max(_old_trim(a)))
        if i == ROUNDS - 1:
            benchmark.pedantic(sliced, rounds=1, iterations=1)
        else:
            sliced()
        if not i % 2:
            old.append(max(_old_trim(a)))
        new.append(max(last["holds"]))
        walls.append(last["wall"])
        counts.append(len(last["holds"]))
    med_old, med_new = statistics.median(old), statistics.median(new)
    benchmark.extra_info.update(
        {
            "rows": ROWS,
            "rounds": ROUNDS,
            "longest_hold_ms_old": [round(v * 1e3, 1) for v in old],
            "longest_hold_ms_sliced": [round(v * 1e3, 1) for v in new],
            "median_longest_hold_ms": {
                "old": round(med_old * 1e3, 1),
                "sliced": round(med_new * 1e3, 1),
            },
            "sliced_transactions": counts,
            "sliced_wall_ms": [round(v * 1e3, 1) for v in walls],
        }
    )
    summary(
        f"trim of {ROWS} capture rows, {journal:6}: longest lock hold median "
        f"{med_old * 1e3:7.1f} ms unbounded, {med_new * 1e3:6.1f} ms sliced "
        f"({statistics.median(counts):.0f} transactions, wall {statistics.median(walls) * 1e3:.0f} ms)"
    )
