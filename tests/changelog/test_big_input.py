"""Input at SQLite's own limits: a table of 2,000 columns, a BLOB of about 1 GB.

Each either works end to end (install, snapshot, stream, apply, verify) or is refused at plan
time with one line naming the file and the table. A huge BLOB is streamed (cdc/changelog/bigrows.py):
the tests hold every process to a memory bound that does not grow with the value, measured
as the peak RSS (VmHWM) of the daemon, of its apply worker and of `cdc verify`.

The legacy files are written with APSW only: these tests also read them with APSW in this
process (`compare_plan`), and one process must not open one file with two SQLite libraries.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from cdc.changelog import bigrows
from cdc.changelog import segments as changelog
from cdc.config import load_config
from cdc.errors import LogCorruptError, PlanError
from cdc.events import (
    Op,
    RowBatch,
    RowEvent,
    StreamedRowBatch,
    StreamedValue,
    ValueChunk,
    decode_frame,
    encode_frame,
)
from cdc.planning.resolve import resolve_plan
from tests.changelog.conftest import GOLDEN
from tests.conftest import REPO, SOAK_SCALE, cdc_cmd, wait_until, write_config
from verifier import compare_plan

MiB = 1 << 20
COLUMNS = apsw.Connection(":memory:").limit(apsw.SQLITE_LIMIT_COLUMN, -1)  # 2000
# "1 GB": SQLite stores no row bigger than SQLITE_MAX_LENGTH (10**9 bytes, key included), so
# a 1 GiB BLOB cannot exist at all; this is about the largest one next to a small key.
FULL = 999_000_000
BOUNDED = 96 * MiB
# Per process: the interpreter and its libraries (30..60 MiB measured), plus a few chunks in
# flight (the spool buffer, a chunk's frame and its framed copy; the worker's 16 MiB log read
# and its decoded frames), with room to spare. Reading values whole took 3x the value in the
# harvester and the worker, 4x in `cdc verify`, 6x in the daemon (docs/architecture.md).
RSS_BOUND = 128 * MiB + 8 * bigrows.CHUNK


def _db(path: Path, script: str, wal: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = apsw.Connection(str(path))
    try:
        if wal:
            c.execute("PRAGMA journal_mode=WAL").fetchall()
        c.execute(script)
    finally:
        c.close()
    return path


def _bot(path: Path) -> apsw.Connection:
    """A writer next to the daemon: like any bot, it waits for the lock."""
    c = apsw.Connection(str(path))
    c.set_busy_timeout(10000)
    return c


def _pattern(seed: int, i: int, n: int) -> bytes:
    block = hashlib.shake_128(f"{seed}:{i}".encode()).digest(4096)
    return (block * (n // 4096 + 1))[:n]


def _write_blob(
    path: Path,
    sql: str,
    args: tuple,
    table: str,
    column: str,
    size: int,
    seed: int,
    where: str | None = None,
) -> str:
    """Run `sql`, which stores `zeroblob(size)` in `column` of one row (the row inserted, or
    the one `where` finds), and fill the value in `bigrows.CHUNK` pieces in the same
    transaction, never holding it whole; returns its sha256."""
    c = _bot(path)
    h = hashlib.sha256()
    try:
        with c:
            c.execute(sql, args)
            if where is None:
                rowid = c.last_insert_rowid()
            else:
                rowid = c.execute(f"SELECT rowid FROM {table} WHERE {where}").fetchone()[0]
            with c.blob_open("main", table, column, rowid, True) as b:
                for i, off in enumerate(range(0, size, bigrows.CHUNK)):
                    data = _pattern(seed, i, min(bigrows.CHUNK, size - off))
                    b.write(data)
                    h.update(data)
    finally:
        c.close()
    return h.hexdigest()


def _digest(path: Path, table: str, column: str, where: str, args: tuple = ()) -> tuple:
    """(typeof, length, sha256) of one value, a rowid table's BLOB read in pieces."""
    c = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        kind, n = c.execute(
            f"SELECT typeof({column}), length({column}) FROM {table} WHERE {where}", args
        ).fetchone()
        h = hashlib.sha256()
        rowid = None
        if (
            kind == "blob"
            and not c.execute(
                "SELECT wr FROM pragma_table_list WHERE name = ?", (table,)
            ).fetchone()[0]
        ):
            rowid = c.execute(f"SELECT rowid FROM {table} WHERE {where}", args).fetchone()[0]
        if rowid is not None:
            with c.blob_open("main", table, column, rowid, False) as b:
                while piece := b.read(bigrows.CHUNK):
                    h.update(piece)
        else:
            v = c.execute(f"SELECT {column} FROM {table} WHERE {where}", args).fetchone()[0]
            h.update(v if isinstance(v, bytes) else str(v).encode())
        return kind, n, h.hexdigest()
    finally:
        c.close()


def _hwm(pid: int) -> int:
    """Peak resident set size of a live process (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def _peaks(d) -> dict[str, int]:  # noqa: ANN001 - tests.conftest.DaemonProcess
    """Peak RSS of the daemon and of its apply worker, read while they run (high-water marks
    of their whole lives)."""
    kids = _children(d.proc.pid)
    assert len(kids) == 1, f"expected one apply worker, found {kids}"
    return {"daemon": _hwm(d.proc.pid), "worker": _hwm(kids[0])}


# Runs the command and writes its peak RSS (wait4: that child only) to argv[1]. A child's
# peak counts the image it was forked from, so the command is forked from this small
# process, not from pytest, whose size depends on the tests that ran before.
_WAIT4 = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss * 1024))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _verify(cfg: Path, *args: str) -> tuple[subprocess.CompletedProcess, int]:
    """`cdc verify --rate 0` and its own peak RSS, in bytes."""
    out, err, rss = (cfg.parent / f"verify.{n}" for n in ("out", "err", "rss"))
    cmd = [sys.executable, "-m", "cdc", "verify", "--rate", "0", "-c", str(cfg), *args]
    with open(out, "w") as o, open(err, "w") as e:
        p = subprocess.run(
            [sys.executable, "-c", _WAIT4, str(rss), *cmd],
            stdout=o,
            stderr=e,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,
        )
    r = subprocess.CompletedProcess(cmd, p.returncode, out.read_text(), err.read_text())
    return r, int(rss.read_text())


def _config(root: Path, sources: list[str], rule: str = "", daemon: str = "") -> Path:
    text = 'state_dir = "state"\n[targets]\ncore = "out/core.db"\n'
    if daemon:
        text += f"[daemon]\n{daemon}\n"
    text += "".join(f'[[sources]]\nname = "{s}"\npath = "legacy/{s}.db"\n' for s in sources)
    text += f'[[rules]]\ntable = "*"\ntarget = "core"\n{rule}'
    return write_config(root, text)


def _unequal(cfg: Path) -> list:
    return [d for d in compare_plan(resolve_plan(load_config(cfg))) if not d.equal]


# -- 2,000 columns ---------------------------------------------------------------------------
def _wide(kind: str, ncols: int = COLUMNS) -> str:
    rest = ", ".join(f"c{i}" for i in range(1, ncols))
    return {
        "int_key": f"CREATE TABLE wide(id INTEGER PRIMARY KEY, {rest})",
        "text_key": f"CREATE TABLE wide(id TEXT PRIMARY KEY, {rest})",
        "without_rowid": f"CREATE TABLE wide(id INTEGER NOT NULL PRIMARY KEY, {rest}) WITHOUT ROWID",
        "keyless": f"CREATE TABLE wide(c0, {rest})",
    }[kind]


def _wide_rows(kind: str, ids: range, ncols: int = COLUMNS) -> str:
    last = f"c{ncols - 1}"
    key = (lambda i: f"'k{i}'") if kind == "text_key" else str
    if kind == "keyless":
        return "".join(
            f"INSERT INTO wide(c0, c1, {last}) VALUES ({i}, 'v{i}', x'00ff{i:04x}');" for i in ids
        )
    return "".join(
        f"INSERT INTO wide(id, c1, c7, {last}) VALUES ({key(i)}, 'v{i}', {i}.5, x'00ff{i:04x}');"
        for i in ids
    )


@pytest.mark.parametrize("kind", ["int_key", "text_key", "without_rowid"])
def test_table_of_2000_columns_replicates_and_verifies(tmp_path, daemons, kind):
    """As many columns as SQLite allows: snapshot, stream (insert, update of the last column,
    delete), apply and verify all work. Every `SELECT key, columns` is 2001 wide, read in
    slices (`bigrows.select_wide`)."""
    legacy = _db(tmp_path / "legacy" / "a.db", _wide(kind) + ";" + _wide_rows(kind, range(30)))
    cfg = _config(tmp_path, ["a"], daemon="snapshot_chunk = 7\nharvest_batch = 11")
    r = cdc_cmd("check", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg)
    wait_until(lambda: d.status()["sources"][0]["snapshot"] == "done", 60, 0.2, "snapshot")
    c = _bot(legacy)
    c.execute(_wide_rows(kind, range(100, 125)))
    c.execute(f"UPDATE wide SET c{COLUMNS - 1} = 'updated' WHERE c1 IN ('v1', 'v101')")
    c.execute("DELETE FROM wide WHERE c1 IN ('v2', 'v102')")
    c.close()
    st = d.wait_synced()
    assert [s["last_error"] for s in st["sources"]] == [None]
    r, _ = _verify(cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 equal" in r.stdout
    assert d.stop() == 0
    assert _unequal(cfg) == []
    t = apsw.Connection(str(tmp_path / "out" / "core.db"), flags=apsw.SQLITE_OPEN_READONLY)
    assert len(t.execute("SELECT * FROM pragma_table_info('wide')").fetchall()) == COLUMNS
    assert t.execute("SELECT count(*) FROM wide").fetchone()[0] == 30 + 25 - 2
    t.close()


@pytest.mark.parametrize(
    "kind, ncols, refused",
    [
        ("merge", COLUMNS, f"would have {COLUMNS + 1} columns"),
        ("keyless", COLUMNS, f"{COLUMNS + 1} values"),
        ("merge", COLUMNS - 1, None),  # the tag column makes exactly the limit: fine
    ],
    ids=["merged-2001", "keyless-rowid-2001", "merged-2000"],
)
def test_a_target_table_sqlite_cannot_hold_is_refused_at_plan_time(tmp_path, kind, ncols, refused):
    """A merge whose tag column would make the target table 2001 columns wide, or a keyless
    table whose rows would be written with their rowid as a 2001st value: `cdc check` and
    `cdc install` refuse it with one line naming the legacy file and the table, and touch
    nothing."""
    sources = ["a", "b"] if kind == "merge" else ["a"]
    table = _wide("int_key" if kind == "merge" else "keyless", ncols)
    paths = [_db(tmp_path / "legacy" / f"{s}.db", table) for s in sources]
    rule = 'merge = true\ntag_column = "src"\n' if kind == "merge" else ""
    cfg = _config(tmp_path, sources, rule)
    check, install = cdc_cmd("check", "-c", str(cfg)), cdc_cmd("install", "-c", str(cfg))
    if refused is None:
        assert check.returncode == 0, check.stderr
        assert install.returncode == 0, install.stderr
        return
    for r in (check, install):
        assert r.returncode == PlanError.exit_code, r.stdout + r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "1 problem(s)" in lines[0], r.stderr
        assert refused in lines[0] and "'wide'" in lines[0] and "at most 2000" in lines[0]
        assert all(str(p) in lines[0] for p in paths), lines[0]
    for p in paths:  # nothing was installed
        c = apsw.Connection(str(p), flags=apsw.SQLITE_OPEN_READONLY)
        assert not c.execute("SELECT name FROM sqlite_master WHERE name LIKE '_cdc%'").fetchall()
        c.close()


# -- huge BLOBs ------------------------------------------------------------------------------
BIG_SCHEMA = (
    "CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT, b BLOB);"
    "CREATE TABLE small(id INTEGER PRIMARY KEY, v);"
    "INSERT INTO small VALUES (1, 'a'), (2, x'0102');"
    "INSERT INTO big(id, name, b) VALUES (100, 'tiny', x'00ff');"
)
INSERT_BIG = "INSERT INTO big(id, name, b) VALUES (?, 'big', zeroblob(?))"


def _big_run(tmp_path: Path, daemons, size: int, paths: list[str], wal: bool = False) -> None:  # noqa: ANN001
    """One BLOB of `size` bytes per path: "snapshot" written before install, "stream" while
    the daemon runs. Checks content, verification and every process's peak RSS."""
    legacy = _db(tmp_path / "legacy" / "a.db", BIG_SCHEMA, wal=wal)
    cfg = _config(tmp_path, ["a"])
    want = {}
    if "snapshot" in paths:
        want[1] = _write_blob(legacy, INSERT_BIG, (1, size), "big", "b", size, seed=1)
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg)
    timeout = 60 + 300 * size / FULL
    if "stream" in paths:
        wait_until(lambda: d.status()["sources"][0]["snapshot"] == "done", timeout, 0.2, "snapshot")
        want[2] = _write_blob(legacy, INSERT_BIG, (2, size), "big", "b", size, seed=2)
    st = d.wait_synced(timeout)
    assert [s["last_error"] for s in st["sources"]] == [None]
    target = tmp_path / "out" / "core.db"
    for key, sha in want.items():
        assert _digest(target, "big", "b", "id = ?", (key,)) == ("blob", size, sha)
    r, verify_rss = _verify(cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 equal" in r.stdout
    peaks = _peaks(d)
    assert d.stop() == 0
    assert peaks["daemon"] < RSS_BOUND, (peaks, RSS_BOUND)
    assert peaks["worker"] < RSS_BOUND, (peaks, RSS_BOUND)
    assert verify_rss < RSS_BOUND, (verify_rss, RSS_BOUND)


@pytest.mark.parametrize("path", ["snapshot", "stream"])
def test_a_big_blob_is_streamed_in_bounded_memory(tmp_path, daemons, path):
    """A 96 MiB BLOB, copied by the snapshot or harvested from the trigger stream, arrives
    byte for byte and verifies equal, while no process holds it whole: the daemon, its
    apply worker and `cdc verify` each stay under `RSS_BOUND` (reading it whole took 3 to 6
    times the value)."""
    _big_run(tmp_path, daemons, BOUNDED, [path], wal=path == "stream")


@pytest.mark.slow
def test_a_1gb_blob_is_streamed_in_bounded_memory(tmp_path, daemons):
    """The same at full size (CDC_SOAK_SCALE >= 1; else bounded): two BLOBs of FULL bytes,
    one snapshotted and one streamed, under the same memory bound as 96 MiB."""
    size = FULL if SOAK_SCALE >= 1 else BOUNDED
    _big_run(tmp_path, daemons, size, ["snapshot", "stream"])


SHAPES = """
CREATE TABLE keyed(id INTEGER PRIMARY KEY, b BLOB, note TEXT);
CREATE TABLE keyless(b BLOB, n);
CREATE TABLE tkey(k TEXT PRIMARY KEY, b BLOB);
CREATE TABLE wr(k INTEGER NOT NULL PRIMARY KEY, b BLOB) WITHOUT ROWID;
CREATE TABLE texts(id INTEGER PRIMARY KEY, t TEXT);
CREATE TABLE m(id INTEGER PRIMARY KEY, b BLOB);
"""


def test_streamed_blobs_in_every_table_shape(tmp_path, daemons):
    """BLOBs above the streaming threshold in a keyed table (the BLOB not the last column),
    a keyless table, a TEXT-keyed table, a merged table (two sources, tagged): streamed and
    written into the right row. A WITHOUT ROWID table and a big TEXT are read whole, as
    before. Updates (big to big, big to small) and deletes while running; then a byte
    changed in the target is found by `cdc verify` through the digests."""
    size = 3 * bigrows.STREAM_ABOVE // 2 + 12345
    a = _db(tmp_path / "legacy" / "a.db", SHAPES)
    b = _db(tmp_path / "legacy" / "b.db", "CREATE TABLE m(id INTEGER PRIMARY KEY, b BLOB);")
    cfg = write_config(
        tmp_path,
        'state_dir = "state"\n[targets]\ncore = "out/core.db"\n'
        '[[sources]]\nname = "a"\npath = "legacy/a.db"\n'
        '[[sources]]\nname = "b"\npath = "legacy/b.db"\n'
        '[[rules]]\ntable = "m"\ntarget = "core"\nmerge = true\ntag_column = "src"\n'
        '[[rules]]\ntable = "*"\ntarget = "core"\n',
    )
    want = {
        ("keyed", "id = 1"): _write_blob(
            a, "INSERT INTO keyed VALUES (1, zeroblob(?), 'x')", (size,), "keyed", "b", size, 1
        ),
        ("m", "src = 'a' AND id = 1"): _write_blob(
            a, "INSERT INTO m VALUES (1, zeroblob(?))", (size,), "m", "b", size, 2
        ),
    }
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg)
    wait_until(lambda: all(s["snapshot"] == "done" for s in d.status()["sources"]), 60, 0.2)
    want[("keyless", "n = 7")] = _write_blob(
        a, "INSERT INTO keyless VALUES (zeroblob(?), 7)", (size,), "keyless", "b", size, 3
    )
    want[("tkey", "k = 'x'")] = _write_blob(
        a, "INSERT INTO tkey VALUES ('x', zeroblob(?))", (size,), "tkey", "b", size, 4
    )
    want[("m", "src = 'b' AND id = 1")] = _write_blob(
        b, "INSERT INTO m VALUES (1, zeroblob(?))", (size,), "m", "b", size, 5
    )
    c = _bot(a)
    c.execute("INSERT INTO wr VALUES (1, randomblob(?))", (size,))  # read whole: no rowid
    want[("wr", "k = 1")] = _digest(a, "wr", "b", "k = 1")[2]
    c.execute("INSERT INTO texts VALUES (1, printf('%.*c', ?, 'x'))", (size,))  # inline
    c.execute(
        "INSERT INTO keyed VALUES (2, zeroblob(?), 'gone'), (3, zeroblob(?), 'small')", (size, size)
    )
    c.execute("DELETE FROM keyed WHERE id = 2")
    c.execute("UPDATE keyed SET b = x'0102' WHERE id = 3")
    c.close()
    d.wait_synced()
    want[("keyed", "id = 1")] = _write_blob(  # big to big, in place
        a,
        "UPDATE keyed SET b = zeroblob(?) WHERE id = 1",
        (size + 1,),
        "keyed",
        "b",
        size + 1,
        7,
        where="id = 1",
    )
    d.wait_synced()
    target = tmp_path / "out" / "core.db"
    for (table, where), sha in want.items():
        assert _digest(target, table, "b", where)[2] == sha, (table, where)
    assert _digest(target, "texts", "t", "id = 1")[:2] == ("text", size)
    r, _ = _verify(cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert d.stop() == 0
    assert _unequal(cfg) == []
    t = apsw.Connection(str(target))
    assert t.execute("SELECT id, b FROM keyed WHERE id > 1").fetchall() == [(3, b"\x01\x02")]
    rowid = t.execute("SELECT rowid FROM keyed WHERE id = 1").fetchone()[0]
    with t.blob_open("main", "keyed", "b", rowid, True) as blob:
        blob.seek(size // 2)
        blob.write(b"\xee")
    t.close()
    r, _ = _verify(cfg, "--json", "a.keyed")
    assert r.returncode == 10, r.stdout + r.stderr
    (diff,) = [k for t in json.loads(r.stdout)["tables"] for k in t["diverged"]]
    assert diff["kind"] == "different" and diff["columns"] == ["b"]
    src, tgt = diff["source"][1], diff["target"][1]
    assert src.startswith(f"<BLOB of {size + 1} bytes, blake2b ") and src != tgt


# -- many rows too big for one frame -----------------------------------------------------------
def test_rows_too_big_for_one_frame_are_split_or_named(tmp_path, pipeline_for, monkeypatch):
    """A harvest whose rows together exceed the frame limit is written as several frames
    instead of stopping the daemon; a single row bigger than a frame is refused with one
    message naming the file, the table, the key and the size. (The limit is shrunk to
    64 KiB here: at 1 GiB the test would need gigabytes.)"""
    limit = 64 * 1024
    monkeypatch.setattr(changelog, "MAX_FRAME", limit)
    monkeypatch.setattr(bigrows, "MAX_FRAME", limit)
    legacy = _db(tmp_path / "legacy" / "a.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    cfg = _config(tmp_path, ["a"])
    p = pipeline_for(cfg)
    p.sync()
    c = _bot(legacy)
    with c:
        c.executemany("INSERT INTO t VALUES (?, randomblob(2000))", [(i,) for i in range(100)])
    p.harvest()  # 200 KB of rows in one harvest: more than three frames' worth
    p.apply()
    assert p.diffs() == []
    reader = changelog.LogReader(str(tmp_path / "state" / "log"))
    frames = [e.frame for e in reader.iter_from(reader.first_offset())]
    rows = [f for f in frames if isinstance(f, RowBatch) and f.table == "t" and f.events]
    assert len(rows) > 3 and sum(len(f.events) for f in rows) == 100
    with c:
        c.execute("INSERT INTO t VALUES (1000, randomblob(?))", (limit + 1,))
    with pytest.raises(LogCorruptError) as e:
        p.harvest()
    msg = e.value.message
    assert str(legacy) in msg and "'t'" in msg and "[1000]" in msg and f"{limit}-byte" in msg
    c.close()


def test_streamed_frames_leave_ordinary_batches_byte_for_byte():
    """The two new frame kinds change nothing for the others: an ordinary `RowBatch` still
    encodes as format 1 did (the GOLDEN bytes), and a `StreamedRowBatch` decodes as a
    `RowBatch` too, so readers of keys (cutover, history, status) see its rows."""
    hexed, batch = GOLDEN[0]
    assert encode_frame(batch).hex() == hexed
    streamed = StreamedRowBatch(
        "s", "t", 1.0, [RowEvent(Op.UPSERT, 5, [1], [None, "x"])], [StreamedValue(0, 0, 9 * MiB)]
    )
    chunk = ValueChunk("s", "t", [1], "b", 8 * MiB, b"\x00" * 16)
    for f in (streamed, chunk):
        assert decode_frame(encode_frame(f)) == f
    assert isinstance(decode_frame(encode_frame(streamed)), RowBatch)
