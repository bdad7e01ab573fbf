"""cdc.pool: bounded, thread-safe lending of configured connections: borrowing, waiting,
timeouts, what a returned connection is cleaned of, and the settings applied to it.

Real SQLite files, real threads. The registry (pools found by name from cdc.toml), forked
processes, the metrics file and `cdc status` are test_pool_registry.py; every test starts
with no configured pool (this folder's conftest.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import apsw
import pytest

from cdc.config import PoolSettings
from cdc.errors import PoolTimeout, SourceError
from cdc.pool import Pool
from tests.conftest import make_db, wait_until


@contextlib.contextmanager
def _raw_conn(path: str):
    conn = apsw.Connection(path)
    try:
        yield conn
    finally:
        conn.close()


def _target_pool(tmp_path: Path, **settings) -> Pool:
    s = PoolSettings(**{"checkout_timeout": 30.0, **settings})
    return Pool("core", str(tmp_path / "core.db"), s, is_target=True)


def test_many_threads_share_a_bounded_pool(tmp_path):
    p = _target_pool(tmp_path, size=4)
    with p.connection() as c:
        c.execute("CREATE TABLE w(thread INTEGER, i INTEGER, PRIMARY KEY (thread, i))")
    threads_n, per_thread = 16, 200
    raws: set[int] = set()
    max_open = 0
    lock = threading.Lock()
    failures: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def work(t: int) -> None:
        nonlocal max_open
        try:
            start.wait()
            for i in range(per_thread):
                with p.connection() as c:
                    with c:  # a savepoint, committed at its end
                        c.execute("INSERT INTO w VALUES (?, ?)", (t, i))
                    m = p.metrics()
                    with lock:
                        raws.add(id(c.raw))
                        max_open = max(max_open, m.open)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock: a worker never finished"
    assert not failures, failures[0]
    m = p.metrics()
    p.close()

    assert len(raws) <= 4 and max_open <= 4
    assert m.open <= 4 and m.in_use == 0
    assert m.checkouts == threads_n * per_thread + 1
    assert m.waits > 0 and m.wait_seconds_max > 0
    assert m.wait_seconds_total >= m.wait_seconds_max
    assert m.timeouts == 0 and m.errors == 0 and m.replaced == 0
    assert m.longest_hold_seconds > 0 and m.current_longest_hold_seconds == 0
    with sqlite3.connect(tmp_path / "core.db") as check:
        rows = set(check.execute("SELECT thread, i FROM w"))
    assert rows == {(t, i) for t in range(threads_n) for i in range(per_thread)}


def test_no_connection_is_lent_to_two_threads_at_once(tmp_path):
    p = _target_pool(tmp_path, size=3)
    holders: dict[int, int] = {}
    lock = threading.Lock()
    clashes: list[int] = []

    def work() -> None:
        for _ in range(300):
            with p.connection() as c:
                key = id(c.raw)
                with lock:
                    if key in holders:
                        clashes.append(key)
                    holders[key] = threading.get_ident()
                c.execute("SELECT 1").fetchall()
                with lock:
                    del holders[key]

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    p.close()
    assert not clashes


def test_borrowers_opening_a_new_target_at_once_all_get_a_connection(tmp_path):
    """SQLite may refuse the switch of a new file to WAL as busy, without calling the busy
    handler, while another connection is switching it (found by the test above)."""

    def work(p: Pool, failures: list[BaseException]) -> None:
        try:
            for _ in range(20):
                with p.connection() as c:
                    c.execute("SELECT 1").fetchall()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    for round_ in range(30):
        p = _target_pool(tmp_path / str(round_), size=3 + round_ % 6)
        failures: list[BaseException] = []
        threads = [threading.Thread(target=work, args=(p, failures)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        m = p.metrics()
        p.close()
        assert not failures, failures[0]
        assert m.errors == 0 and m.checkouts == 8 * 20
        with _raw_conn(p.path) as c:
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_borrower_times_out_when_every_connection_is_held(tmp_path):
    p = _target_pool(tmp_path, size=2, checkout_timeout=0.2)
    with p.connection(), p.connection():
        with pytest.raises(PoolTimeout) as e, p.connection():
            pass
        assert e.value.exit_code == 8 and e.value.hint
        m = p.metrics()
        assert m.timeouts == 1 and m.in_use == 2 and m.open == 2
        assert m.current_longest_hold_seconds > 0
    with p.connection():  # free again
        pass
    m = p.metrics()
    p.close()
    assert m.checkouts == 3 and m.timeouts == 1 and m.in_use == 0


def test_a_waiting_borrower_gets_the_connection_handed_back(tmp_path):
    p = _target_pool(tmp_path, size=1)
    got = threading.Event()
    held = threading.Event()

    def borrower() -> None:
        held.wait()
        with p.connection():
            got.set()

    t = threading.Thread(target=borrower)
    t.start()
    with p.connection():
        held.set()
        wait_until(lambda: p._waiters, 10, what="the borrower to queue")
        assert not got.is_set()
    t.join(timeout=10)
    m = p.metrics()
    p.close()
    assert got.is_set() and m.waits == 1 and m.checkouts == 2 and m.open == 1


def test_a_transaction_left_open_is_rolled_back_and_counted(tmp_path):
    p = _target_pool(tmp_path, size=1)
    with p.connection() as c:
        c.execute("CREATE TABLE t(x)")
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO t VALUES (1)")
    with p.connection() as c:  # the same connection, idle again, no write lock held
        assert not c.in_transaction
        assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    m = p.metrics()
    assert m.errors == 1 and "rolled back" in m.last_error
    # Another connection of the same SQLite library (two copies of the library in one
    # process do not see each other's locks): no lock was left behind.
    other = apsw.Connection(str(tmp_path / "core.db"))
    other.execute("INSERT INTO t VALUES (2)")
    other.close()
    p.close()


def test_an_exception_is_counted_and_the_connection_returned(tmp_path):
    p = _target_pool(tmp_path, size=1)
    with pytest.raises(ZeroDivisionError), p.connection() as c:
        c.execute("CREATE TABLE t(x)")
        c.execute("BEGIN")
        c.execute("INSERT INTO t VALUES (1)")
        raw = c.raw
        1 / 0  # noqa: B018 - the bot's bug
    with p.connection() as c:
        assert c.raw is raw and not c.in_transaction
        assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    m = p.metrics()
    p.close()
    assert m.errors == 1 and m.replaced == 0 and "ZeroDivisionError" in m.last_error


def test_a_closed_connection_is_replaced(tmp_path):
    p = _target_pool(tmp_path, size=1)
    with pytest.raises(apsw.ConnectionClosedError), p.connection() as c:
        first = c.raw
        c.raw.close()
        c.execute("SELECT 1")
    with p.connection() as c:
        assert c.raw is not first
        assert c.execute("SELECT 1").fetchone()[0] == 1
    m = p.metrics()
    p.close()
    assert m.replaced == 1 and m.errors == 1 and m.open == 1


def test_a_cursor_kept_past_the_block_does_not_keep_its_read_lock(tmp_path):
    p = _target_pool(tmp_path, size=1)
    with p.connection() as c:
        c.execute("CREATE TABLE t(x)")
        c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(10)])
        kept = c.execute("SELECT x FROM t")
        next(kept)
        first = c.raw
    with p.connection() as c:
        assert c.raw is not first
    m = p.metrics()
    p.close()
    assert m.replaced == 1 and m.errors == 1 and "unfinished query" in m.last_error


def test_settings_are_applied_to_targets(tmp_path):
    s = dict(busy_timeout_ms=1234, synchronous="OFF", foreign_keys=True)
    p = _target_pool(tmp_path / "sub", **s)
    with p.connection() as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 0
        assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        assert not c.execute(
            "SELECT 1 FROM pragma_module_list WHERE name = 'cdc_fence_pass'"
        ).fetchall(), "pool connections are the bots': fences must refuse them"
    p.close()
    assert (tmp_path / "sub" / "core.db").exists()


def test_settings_are_applied_to_legacy_files_and_their_journal_mode_is_kept(tmp_path):
    path = make_db(tmp_path / "bot.db", "CREATE TABLE t(x);")  # rollback journal
    s = PoolSettings(legacy_synchronous="EXTRA", foreign_keys=False, busy_timeout_ms=777)
    p = Pool("bot", str(path), s, is_target=False)
    with p.connection() as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 3
        assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 0
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] == 777
    m = p.metrics()
    p.close()
    assert m.kind == "legacy"


def test_a_writer_waits_for_another_connections_lock(tmp_path):
    path = make_db(tmp_path / "bot.db", "CREATE TABLE t(x);")
    p = Pool("bot", str(path), PoolSettings(busy_timeout_ms=20000), is_target=False)
    holder = apsw.Connection(str(path))  # sqlite3's own library would not see apsw's locks
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES ('holder')")
    released = threading.Event()

    def release_later() -> None:
        time.sleep(0.3)
        released.set()
        holder.execute("COMMIT")

    t = threading.Thread(target=release_later)
    t.start()
    with p.connection() as c:
        c.execute("INSERT INTO t VALUES ('pool')")  # waits on the lock instead of failing
        assert released.is_set()
    t.join()
    holder.close()
    p.close()
    with sqlite3.connect(path) as check:
        assert sorted(r[0] for r in check.execute("SELECT x FROM t")) == ["holder", "pool"]


def test_a_missing_legacy_file_is_an_error_and_never_created(tmp_path):
    missing = tmp_path / "gone" / "bot.db"
    p = Pool("bot", str(missing), PoolSettings(), is_target=False)
    with pytest.raises(SourceError), p.connection():
        pass
    m = p.metrics()
    p.close()
    assert not missing.exists() and not missing.parent.exists()
    assert m.errors == 1 and m.open == 0 and m.checkouts == 0


def test_writes_a_fence_refuses_are_counted(tmp_path):
    """A stale bot on the pool: every write a cutover's fence refuses is in the pool's
    `fenced` count (cdc_pool_fenced_writes_total), whether the bot catches it or not."""
    from cdc.capture import fence
    from cdc.capture import triggers as capture
    from cdc.errors import FencedWrite
    from cdc.inventory import list_tables

    db = make_db(tmp_path / "core.db", "CREATE TABLE kv(k TEXT PRIMARY KEY, v);")
    with _raw_conn(str(db)) as c:
        capture.install(c, list_tables(c), str(db))
        fence.fence(c, "bot", str(db), {"kv": "elsewhere"}, stage="core")
    p = _target_pool(tmp_path)
    try:
        for _ in range(2):  # caught inside the `with`: the checkout itself ends well
            with p.connection() as conn, pytest.raises(FencedWrite):
                conn.execute("INSERT INTO kv VALUES ('a', 1)")
        with pytest.raises(FencedWrite), p.connection() as conn:  # out of the `with`
            conn.executemany("INSERT INTO kv VALUES (?, ?)", [("b", 2)])
        m = p.metrics()
        assert (m.fenced, m.checkouts) == (3, 3), m
    finally:
        p.close()
