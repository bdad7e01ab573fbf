"""cdc.pool: bounded, thread-safe lending of configured connections, with exact metrics.

Real SQLite files, real threads, real processes (the metrics file is read back by
`cdc status` in another process while the writer lives, and dropped once it has exited).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest

from cdc import pool
from cdc.config import PoolSettings, config_from_dict, load_config
from cdc.errors import ConfigError, PoolTimeout, SourceError
from cdc.pool import Pool
from cdc.pool.stats import metrics_path, read_pool_metrics
from tests.conftest import REPO, cdc_cmd, make_db, wait_until, write_config


@pytest.fixture(autouse=True)
def _fresh_pools():
    """Each test starts and ends with no configured pools in this process."""
    pool.close_all()
    pool._state = None
    yield
    pool.close_all()
    pool._state = None


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


def _write_cdc_toml(root: Path, **pool_settings) -> Path:
    make_db(root / "legacy" / "bots" / "a.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v);")
    settings = "".join(f"{k} = {json.dumps(v)}\n" for k, v in pool_settings.items())
    return write_config(
        root,
        f"""state_dir = "state"

[targets]
core = "targets/core.db"
cache = "targets/cache.db"

[[sources]]
name = "bot_{{stem}}"
path = "legacy/bots/*.db"

[[rules]]
table = "*"
target = "core"

[pool]
{settings}""",
    )


def test_the_registry_finds_targets_and_sources_by_name(tmp_path):
    pool.configure(_write_cdc_toml(tmp_path, size=2))
    with pool.connection("core") as c:
        c.execute("CREATE TABLE x(a)")
    with pool.connection("bot_a") as c:  # a source from a glob
        c.execute("INSERT INTO t(v) VALUES ('via pool')")
    with pytest.raises(ConfigError) as e, pool.connection("nope"):
        pass
    assert "nope" in str(e.value)
    names = {(m.database, m.kind) for m in pool.metrics()}
    assert names == {("core", "target"), ("bot_a", "legacy")}
    assert all(not m.hooks for m in pool.metrics())
    assert (tmp_path / "targets" / "core.db").exists()


def test_the_registry_reads_cdc_config_from_the_environment(tmp_path, monkeypatch):
    cfg = _write_cdc_toml(tmp_path)
    monkeypatch.setenv("CDC_CONFIG", str(cfg))
    with pool.connection("cache") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [m.database for m in pool.metrics()] == ["cache"]


def test_a_forked_child_starts_with_its_own_pools(tmp_path):
    pool.configure(_write_cdc_toml(tmp_path))
    with pool.connection("core") as c:
        c.execute("CREATE TABLE t(who)")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            with pool.connection("core") as c:
                c.execute("INSERT INTO t VALUES ('child')")
            (m,) = pool.metrics()  # a new pool: the parent's had one checkout already
            code = 0 if m.checkouts == 1 and m.pid == os.getpid() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pool.connection("core") as c:  # the parent's pool is untouched
        assert c.execute("SELECT who FROM t").fetchall() == [("child",)]
    (m,) = pool.metrics()
    assert m.checkouts == 2 and m.pid == os.getpid()


def test_a_hooks_source_is_captured_through_the_pool(tmp_path, pipeline_for):
    make_db(tmp_path / "bot.db", "CREATE TABLE kv(k TEXT PRIMARY KEY, v);")
    cfg = load_config(
        write_config(
            tmp_path,
            """state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "bot"
path = "bot.db"
capture = "hooks"
[[rules]]
table = "*"
target = "core"
""",
        )
    )
    p = pipeline_for(cfg)  # installs capture
    pool.configure(cfg)
    for i in range(5):
        with pool.connection("bot") as c:
            c.execute("INSERT INTO kv VALUES (?, ?)", (f"k{i}", i))
    with pool.connection("bot") as c:
        c.execute("UPDATE kv SET v = v + 1")
    (m,) = pool.metrics()
    assert m.hooks and m.extra == {"changes_captured": 10}
    p.sync()
    assert p.diffs() == []
    h = p.harvesters[0]
    assert h.hook_rows > 0 and h.foreign_rows == 0  # every change came through the pool


def test_metrics_file_is_private_and_atomic(tmp_path):
    cfg = load_config(_write_cdc_toml(tmp_path, metrics_interval=0.0))
    pool.configure(cfg)
    for _ in range(3):
        with pool.connection("core") as c:
            c.execute("SELECT 1").fetchall()
    path = Path(metrics_path(cfg.state_dir, os.getpid()))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    (mine,) = read_pool_metrics(cfg.state_dir)
    assert mine.database == "core" and mine.checkouts == 3 and mine.pid == os.getpid()
    (path.parent / "123.json").write_bytes(b"{not json")  # unreadable: skipped
    assert len(read_pool_metrics(cfg.state_dir)) == 1


_CHILD = """
import sys
from cdc import pool
pool.configure(sys.argv[1])
for i in range(20):
    with pool.connection("core") as c:
        c.execute("CREATE TABLE IF NOT EXISTS w(i)")
        c.execute("INSERT INTO w VALUES (?)", (i,))
with pool.connection("bot_a") as c:
    c.execute("SELECT count(*) FROM t").fetchall()
pool.close_all()   # publishes the figures now (the interval is long)
with pool.connection("core") as c:  # the config stays: new pools on demand
    c.execute("SELECT 1").fetchall()
print("ready", flush=True)
sys.stdin.readline()
"""


def test_cdc_status_shows_a_live_process_pools_and_drops_them_after_it_exits(tmp_path):
    cfg_path = _write_cdc_toml(tmp_path, size=3, metrics_interval=3600.0)
    cfg = load_config(cfg_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(cfg_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        pid_file = Path(metrics_path(cfg.state_dir, child.pid))
        assert stat.S_IMODE(pid_file.stat().st_mode) == 0o600

        r = cdc_cmd("status", "--json", "-c", str(cfg_path))
        assert r.returncode == 0, r.stderr
        pools = {p["database"]: p for p in json.loads(r.stdout)["pools"]}
        assert set(pools) == {"core", "bot_a"}
        core = pools["core"]
        assert core["pid"] == child.pid and core["checkouts"] == 20 and core["size"] == 3
        assert core["open"] == 0 and core["errors"] == 0 and core["kind"] == "target"
        assert pools["bot_a"]["kind"] == "legacy" and pools["bot_a"]["checkouts"] == 1

        text = cdc_cmd("status", "-c", str(cfg_path))
        assert text.returncode == 0, text.stderr
        assert f"pool core pid {child.pid}: 0/3 open, 0 in use, 20 checkouts" in text.stdout
    finally:
        child.communicate("\n", timeout=30)
    assert child.returncode == 0
    assert pid_file.exists()  # written again at exit, until a reader sees the pid gone

    r = cdc_cmd("status", "--json", "-c", str(cfg_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pools"] == []
    assert not pid_file.exists()


def test_config_checks_pool_settings(tmp_path):
    base = {"targets": {"core": "core.db"}, "sources": []}
    with pytest.raises(ConfigError, match="pool"):
        config_from_dict({**base, "pool": {"size": 0}}, tmp_path)
    with pytest.raises(ConfigError, match="synchronous"):
        config_from_dict({**base, "pool": {"synchronous": "SOMETIMES"}}, tmp_path)
