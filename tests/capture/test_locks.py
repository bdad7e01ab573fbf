"""Locks on live rollback-journal files: the daemon waits for the bots, never the reverse.

Everything is real: SQLite files in tmp dirs, a `cdc run` process, and bots as their own
processes (tests/support/lock_bot.py, stdlib `sqlite3`, like the legacy bots). The test process
watches the daemon through its status file and the targets only, never by opening a bot's
file while a bot is measured (that would be one more lock holder the bots feel).

Timings are printed (`pytest -s`), never asserted, except functional limits: a bot with a
5 s busy timeout fails when it waits 5 s, so "zero failures" is the limit that matters.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import apsw
import pytest

from cdc.capture import triggers as capture
from cdc.config import load_config
from cdc.planning.resolve import resolve_plan
from cdc.status_file import read_status
from checkpoints.store import target_state
from tests.conftest import REPO, cdc_cmd, make_db, wait_until, write_config
from tests.support.lock_bot import SCHEMA
from verifier import compare_plan
from verifier.continuous import read_verifier_status

HOLD_SECONDS = 10.0

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[daemon]
{daemon}
{sources}
[[rules]]
table = "*"
target = "core"
as = "{{source}}_{{table}}"
"""


def _config(root: Path, names: list[str], daemon: str = "") -> Path:
    sources = "".join(f'[[sources]]\nname = "{n}"\npath = "legacy/{n}.db"\n' for n in names)
    return write_config(root, CONFIG.format(daemon=daemon, sources=sources))


def _seed(n: int) -> str:
    """`n` rows in two tables, one transaction (a commit per row costs fsyncs: seconds)."""
    rows = "".join(
        f"INSERT INTO positions(symbol, qty, px) VALUES ('P{i}', {i}, {i}.5);"
        f"INSERT INTO kv VALUES ('seed{i}', {i});"
        for i in range(n)
    )
    return f"BEGIN;{rows}COMMIT;"


@pytest.fixture
def bots():
    """Starts `tests.support.lock_bot` processes; any still running at teardown is killed."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.support.lock_bot", *args],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        if not p.stdout.closed:
            p.communicate(timeout=30)


def _line(proc: subprocess.Popen, timeout: float) -> dict:
    """The next JSON line a bot prints, waiting at most `timeout` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"bot {proc.args[3:]} printed nothing in {timeout}s"
    line = proc.stdout.readline()
    assert line, f"bot {proc.args[3:]} exited {proc.wait()} without output"
    return json.loads(line)


def _finish(bots: list[subprocess.Popen]) -> list[dict]:
    for b in bots:
        b.send_signal(signal.SIGTERM)
    return [json.loads(b.communicate(timeout=30)[0].splitlines()[-1]) for b in bots]


def _source_errors(cfg) -> dict[str, tuple[int, str | None]]:
    """Per source, from the daemon's status file: (errors counted, last error)."""
    ds = read_status(cfg.state_dir)
    return {n: (s.errors, s.last_error) for n, s in ds.sources.items()} if ds else {}


def _diffs(cfg) -> list:
    return [d for d in compare_plan(resolve_plan(cfg)) if not d.equal]


def _by_phase(marks: dict[str, float], stats: dict) -> dict[str, dict]:
    """A bot's errors and its longest operation (when over 50 ms) in each phase of a test;
    `marks` maps each phase's name to its start (wall clock), in order, then "end"."""
    out = {}
    for a, b in pairwise(marks):
        slow = [ms for t, ms in stats["slow_ops"] if marks[a] <= t < marks[b]]
        out[a] = {
            "seconds": round(marks[b] - marks[a], 2),
            "errors": sum(marks[a] <= t < marks[b] for t in stats["error_times"]),
            "max_stall_ms": round(max(slow), 1) if slow else "<50",
        }
    return out


def _reader_blocked(db: Path) -> bool:
    """Whether a reader with no busy timeout is refused now (EXCLUSIVE or PENDING held)."""
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], timeout=0)\n"
            "try:\n"
            "    c.execute('SELECT count(*) FROM kv').fetchall()\n"
            "except sqlite3.OperationalError as e:\n"
            "    print(e)\n",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return "database is locked" in r.stdout


@pytest.mark.parametrize("mode", ["immediate", "exclusive", "spill"])
def test_bot_holding_the_write_lock_for_10s(tmp_path, daemons, bots, mode):
    """A bot holds a write transaction 10 s on one file (RESERVED; EXCLUSIVE from BEGIN
    EXCLUSIVE; EXCLUSIVE reached by spilling its page cache). The daemon waits without an
    error, the other files keep replicating meanwhile, the holder's COMMIT goes through
    (its 5 s busy timeout is not used up by us), and afterwards everything is equal."""
    names = ["held", "b1", "b2"]
    for n in names:
        make_db(tmp_path / "legacy" / f"{n}.db", SCHEMA + _seed(200))
    cfg_path = _config(tmp_path, names, "trim_interval = 0.2\nharvest_batch = 2000")
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    cfg = load_config(cfg_path)
    core = cfg.targets["core"]
    d = daemons(cfg_path)
    d.wait_synced()

    marks = {"bots start": time.time()}
    writers = [
        bots("write", str(tmp_path / "legacy" / f"{n}.db"), "600", "5", str(i))
        for i, n in enumerate(("b1", "b2"))
    ]
    release = tmp_path / "release"
    held_db = tmp_path / "legacy" / "held.db"
    holder = bots("hold", str(held_db), mode, str(HOLD_SECONDS), str(release))
    try:
        held = _line(holder, 30)
        marks["hold"] = time.time()
        assert held["event"] == "holding", held
        # what the holder holds: RESERVED lets readers in, EXCLUSIVE does not
        assert _reader_blocked(held_db) == (mode != "immediate")

        # While it holds: the other files' changes reach the target, three times over.
        base = target_state(core)[3]
        seen_errors: list = []
        rounds = 0

        def others_moved() -> bool:
            nonlocal rounds
            seen_errors.extend((n, e) for n, e in _source_errors(cfg).items() if e != (0, None))
            applied = target_state(core)[3]
            if all(applied.get(n, 0) > base.get(n, 0) for n in ("b1", "b2")):
                base.update(applied)
                rounds += 1
            return rounds >= 3

        wait_until(others_moved, 30, 0.2, "b1 and b2 to replicate during the hold")
        assert holder.poll() is None, "the holder stopped holding early"
        assert seen_errors == []
        assert d.proc.poll() is None
    finally:
        release.touch()  # it commits once it has held HOLD_SECONDS
    done = _line(holder, HOLD_SECONDS + 30)
    marks["after the commit"] = time.time()
    assert done["event"] == "committed", done  # not "database is locked"
    assert done["held_s"] >= HOLD_SECONDS
    assert holder.wait(timeout=30) == 0
    print(
        f"\n[{mode}] holder: writes {held['write_ms']:.1f} ms, held {done['held_s']:.1f} s, "
        f"COMMIT {done['commit_ms']:.1f} ms"
    )

    time.sleep(0.5)
    stats = _finish(writers)
    marks["end"] = time.time()
    for s in stats:
        print(f"[{mode}] 5 s bot: {_brief(s)}\n    {_by_phase(marks, s)}")
    assert [s["errors"] for s in stats] == [0, 0], stats
    st = d.wait_synced()
    assert [s["last_error"] for s in st["sources"]] == [None] * 3
    assert set(_source_errors(cfg).values()) == {(0, None)}, _source_errors(cfg)
    assert d.stop() == 0
    assert _diffs(cfg) == []
    t = apsw.Connection(core, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = 400 if mode == "spill" else 20
        assert t.execute("SELECT v FROM held_kv WHERE k = 'held'").fetchall() == [(rows,)]
    finally:
        t.close()


BIG_ROWS = 200_000
LOAD_DAEMON = "snapshot_chunk = 1000\ntrim_interval = 0.05\nharvest_batch = 1000"


def _brief(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("error_times", "slow_ops")}


def _load_setup(root: Path) -> Path:
    """One rollback-journal file with a big table (its snapshot takes 200 chunks) and the
    bot's tables; capture is not installed yet (the bot will be running when it is)."""
    path = root / "legacy" / "busy.db"
    make_db(path, SCHEMA + _seed(100))
    c = apsw.Connection(str(path))
    try:
        c.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT, v REAL, pad BLOB)")
        with c:
            c.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO big SELECT i, 'row ' || i, i * 0.25, randomblob(40) FROM n",
                (BIG_ROWS,),
            )
    finally:
        c.close()
    return _config(root, ["busy"], LOAD_DAEMON)


def _run_load(tmp_path: Path, daemons, bots, timeout: str, mix: str = "safe") -> tuple[dict, dict]:
    """A bot with busy timeout `timeout` writes all the time while capture is installed
    and the daemon starts, snapshots `big` chunk by chunk, harvests and trims. Returns the
    bot's counters and what the daemon did meanwhile, with the bot's errors per phase.
    `mix` "deferred": the bot's transactions read before they write (tests/support/lock_bot.py)."""
    cfg_path = _load_setup(tmp_path)
    cfg = load_config(cfg_path)
    db = tmp_path / "legacy" / "busy.db"
    bot = bots("write", str(db), "600", timeout, "7", mix)
    marks = {"bot alone": time.time()}
    time.sleep(1.0)  # the bot alone first, for comparison
    marks["cdc install"] = time.time()
    r = cdc_cmd("install", "-c", str(cfg_path))
    assert r.returncode == 0, r.stderr
    marks["daemon start + snapshot"] = time.time()
    d = daemons(cfg_path)

    def snapshot_done():
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited: {d.output()}")
        ds = read_status(cfg.state_dir)
        return ds and ds.pid == d.proc.pid and ds.sources["busy"].snapshot_done and ds

    ds = wait_until(snapshot_done, 60, 0.1, "the snapshot of `big`")
    marks["stream + trims"] = time.time()
    time.sleep(2.0)  # the stream and its trims under the bot's load, snapshot over
    stats = _finish([bot])[0]
    marks["end"] = time.time()
    errors = _source_errors(cfg)
    figures = {
        "snapshot_rows": ds.sources["busy"].snapshot_rows,
        "bot_by_phase": _by_phase(marks, stats),
        "daemon_errors": errors,
    }
    st = d.wait_synced()
    assert st["sources"][0]["last_error"] is None
    assert d.stop() == 0
    assert errors == {"busy": (0, None)}
    assert _diffs(cfg) == []
    c = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        left, top = c.execute(f"SELECT count(*), max(seq) FROM {capture.CHANGES}").fetchone()
    finally:
        c.close()
    figures["capture_rows"] = {"captured": top, "left untrimmed": left}
    assert figures["snapshot_rows"] >= BIG_ROWS
    assert left < top / 2, "the trims did not run: the test did not test them"
    return stats, figures


def test_bot_with_5s_busy_timeout_never_fails(tmp_path, daemons, bots):
    """Install, daemon start, a 200-chunk snapshot, harvests and a trim every 50 ms: a bot
    with the common 5 s busy timeout, writing all the while, sees zero errors."""
    stats, figures = _run_load(tmp_path, daemons, bots, "5")
    print(f"\n5 s bot: {_brief(stats)}\ndaemon: {figures}")
    assert stats["ops"] > 100
    assert stats["errors"] == 0, stats["by_error"]


def test_bot_without_busy_timeout(tmp_path, daemons, bots):
    """A bot with no busy timeout (timeout=0) fails at once whenever it meets any other
    lock holder, and in rollback-journal mode our reads hold SHARED, briefly. So no zero
    can be promised: the failures are counted and printed. What is guaranteed: they are
    only SQLITE_BUSY ("database is locked", the bot may simply retry), the daemon reports
    nothing, and every write the bot did commit is replicated exactly."""
    stats, figures = _run_load(tmp_path, daemons, bots, "0")
    print(f"\ntimeout-0 bot: {_brief(stats)}\ndaemon: {figures}")
    assert stats["ops"] > 100
    assert set(stats["by_error"]) <= {"OperationalError: database is locked"}, stats


def test_bot_reading_before_writing_in_a_deferred_transaction(tmp_path, daemons, bots):
    """`BEGIN; SELECT ...; UPDATE ...` with a 5 s busy timeout: when its UPDATE needs the
    RESERVED lock while another connection holds it (another bot, or our trim or install
    for a few milliseconds), SQLite answers SQLITE_BUSY at once without calling the busy
    handler (waiting could deadlock: the bot holds SHARED, which the other's COMMIT waits
    for). No busy timeout helps there; `BEGIN IMMEDIATE` does. Guaranteed: that is the only
    step such a bot can fail at, always with "database is locked", and what it commits is
    replicated exactly. The count is printed."""
    stats, figures = _run_load(tmp_path, daemons, bots, "5", "deferred")
    print(f"\ndeferred read-then-write 5 s bot: {_brief(stats)}\ndaemon: {figures}")
    assert stats["ops"] > 100
    assert set(stats["by_error"]) <= {"OperationalError: database is locked"}, stats
    assert set(stats["by_step"]) <= {"write after read"}, stats


def _held_setup(root: Path, daemon: str = "", extra: str = "") -> tuple[Path, Path]:
    db = make_db(root / "legacy" / "held.db", SCHEMA + _seed(50))
    cfg_path = _config(root, ["held"], "trim_interval = 0.2\n" + daemon)
    cfg_path.write_text(cfg_path.read_text() + extra)
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    return db, cfg_path


def test_daemon_started_during_an_exclusive_hold_waits(tmp_path, daemons, bots):
    """A daemon (re)started while a bot holds EXCLUSIVE for 10 s waits for it, then runs.
    (A 2 s busy timeout: the start looks at the file twice, and two default 5 s waits
    would outlast the hold by chance.)"""
    db, cfg_path = _held_setup(tmp_path, "busy_timeout_ms = 2000")
    release = tmp_path / "release"
    release.touch()  # commit as soon as HOLD_SECONDS have passed
    holder = bots("hold", str(db), "exclusive", str(HOLD_SECONDS), str(release))
    assert _line(holder, 30)["event"] == "holding"
    d = daemons(cfg_path)
    try:
        done = _line(holder, HOLD_SECONDS + 30)
        assert done["event"] == "committed", done
        print(f"\nholder COMMIT {done['commit_ms']:.1f} ms")
        st = d.wait_synced()
        assert st["sources"][0]["last_error"] is None
        assert d.stop() == 0
    finally:
        d.kill()  # closes its log also when it exited by itself
    assert _diffs(load_config(cfg_path)) == []


def test_continuous_verifier_waits_out_an_exclusive_hold(tmp_path, daemons, bots):
    """The daemon's verifier, passing every 0.2 s, meets a file EXCLUSIVE-locked for 10 s:
    it reports the tables unsettled (retried), never an error."""
    db, cfg_path = _held_setup(tmp_path, extra="[verify]\ncycle_pause = 0.2\n")
    cfg = load_config(cfg_path)
    d = daemons(cfg_path)
    d.wait_synced()
    release = tmp_path / "release"
    release.touch()
    holder = bots("hold", str(db), "exclusive", str(HOLD_SECONDS), str(release))
    assert _line(holder, 30)["event"] == "holding"
    states: set[str] = set()

    def committed():
        vs = read_verifier_status(cfg.state_dir)
        if vs is not None:
            states.update(t.state for t in vs.tables)
        return holder.poll() is not None

    wait_until(committed, HOLD_SECONDS + 30, 0.1, "the holder to commit")
    assert _line(holder, 5)["event"] == "committed"
    d.wait_synced()
    assert d.stop() == 0
    log = d.log_path.read_text(errors="replace")
    assert "error" not in states, states
    assert " ERROR " not in log, log[-3000:]
    assert _diffs(cfg) == []


def test_status_during_an_exclusive_hold_still_lists_the_source(tmp_path, bots):
    """`cdc status` while a bot holds EXCLUSIVE: the held source is still listed."""
    for n in ("held", "other"):
        make_db(tmp_path / "legacy" / f"{n}.db", SCHEMA + _seed(5))
    cfg_path = _config(tmp_path, ["held", "other"], "busy_timeout_ms = 500")
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    release = tmp_path / "release"
    release.touch()
    holder = bots(
        "hold", str(tmp_path / "legacy" / "held.db"), "exclusive", str(HOLD_SECONDS), str(release)
    )
    assert _line(holder, 30)["event"] == "holding"
    r = cdc_cmd("status", "--json", "-c", str(cfg_path))
    assert holder.poll() is None, "the hold ended before status looked"
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert _line(holder, HOLD_SECONDS + 30)["event"] == "committed"
    assert [s["name"] for s in st["sources"]] == ["held", "other"], st
