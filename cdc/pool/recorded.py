"""The statements a process's pooled connections ran (`pool.record_queries`), and their file.

`cdc queries --recorded` re-runs the legacy databases' queries on the consolidated files, so
it needs what the bots really run: each statement as SQLite prepared it (with its `?`
placeholders: one entry per statement, not per value), how often, how long (a histogram
with fixed log-scale bounds, so histograms of several processes add up), the database, and
the first parameters seen (to run it again).

Timing: apsw's `exec_trace` runs before each statement (it gives the SQL and bindings) and
`trace_v2`'s SQLITE_TRACE_PROFILE when SQLite resets it, so the time covers every row the
borrower fetched. The profile's own `nanoseconds` is not used: SQLite takes it from the
VFS clock, in whole milliseconds. Both files of a process are written at the same moment
as its metrics file (`cdc.pool.stats`), `<state_dir>/queries/<pid>.json`, replaced
atomically; readers drop the files of processes that have gone only through the metrics
reader, never here (a recorded workload stays useful after the bot exits).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Any

import apsw
import msgspec

from cdc.fsutil import makedirs_private
from cdc.pool.stats import process_start

QUERIES_DIR = "queries"

# Upper bounds of the buckets, microseconds (1-2-5 steps); one more bucket above the last.
BOUNDS_US: tuple[int, ...] = tuple(
    m * 10**e for e in range(0, 8) for m in (1, 2, 5)
)  # 1 us .. 50 s
_BOUNDS_NS = tuple(b * 1000 for b in BOUNDS_US)

# Distinct statements kept per database and process: a bot that writes its values into the
# SQL text (no placeholders) makes a new statement each time; past the cap they are counted
# together under OTHERS (not a query, so never re-run).
MAX_STATEMENTS = 1000
OTHERS = "-- other statements (over the recorded 1000)"

Tagged = tuple[str, str]  # (storage class, value as text): exact through JSON


class RecordedStatement(msgspec.Struct):
    database: str  # the pool's name: a target or a source
    kind: str  # "target" or "legacy", as in PoolMetrics
    sql: str  # as prepared, placeholders kept
    count: int = 0
    total_ns: int = 0
    max_ns: int = 0
    buckets: list[int] = []  # len(BOUNDS_US) + 1 counts
    sample: list[Tagged] | dict[str, Tagged] | None = None  # the first parameters seen
    path: str = ""

    def params(self) -> list[Any] | dict[str, Any]:
        """The sample parameters as Python values (their storage classes kept)."""
        if isinstance(self.sample, dict):
            return {k: _untag(v) for k, v in self.sample.items()}
        return [_untag(v) for v in self.sample or []]


class RecordedFile(msgspec.Struct):
    pid: int
    written_at: float
    statements: list[RecordedStatement] = []
    proc_start: int | None = None


def _tag(v: object) -> Tagged:
    if v is None:
        return ("null", "")
    if isinstance(v, bool | int):
        return ("integer", str(int(v)))
    if isinstance(v, float):
        return ("real", v.hex())
    if isinstance(v, bytes | bytearray | memoryview):
        return ("blob", bytes(v).hex())
    return ("text", str(v))


def _untag(t: Tagged) -> object:
    cls, text = t
    return {
        "null": lambda: None,
        "integer": lambda: int(text),
        "real": lambda: float.fromhex(text),
        "blob": lambda: bytes.fromhex(text),
    }.get(cls, lambda: text)()


def _sample(bindings: Any) -> list[Tagged] | dict[str, Tagged] | None:
    if bindings is None:
        return None
    if isinstance(bindings, dict):
        return {str(k): _tag(v) for k, v in bindings.items()}
    return [_tag(v) for v in bindings]


class Recorder:
    """One database's statements in one process, shared by its pool's connections. The
    callbacks do a dict lookup and a few additions; the lock is held only for those."""

    def __init__(self, database: str, kind: str, path: str) -> None:
        self.database, self.kind, self.path = database, kind, path
        self._lock = threading.Lock()
        self._stats: dict[str, list[Any]] = {}  # sql -> [count, total, max, buckets, sample]
        # (connection, sql) -> start of its current run: connections of one pool run the
        # same statement at once in several threads
        self._starts: dict[tuple[apsw.Connection, str], int] = {}

    def attach(self, conn: apsw.Connection) -> None:
        conn.exec_trace = self._on_exec
        conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, self._on_profile, id=self)

    def _on_exec(self, _cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        sql = sql.rstrip()  # as the profile names it: `select 1;  select 2` has two
        self._starts[(_cursor.connection, sql)] = time.perf_counter_ns()
        if sql not in self._stats:
            with self._lock:
                if sql not in self._stats and len(self._stats) < MAX_STATEMENTS:
                    buckets = [0] * (len(_BOUNDS_NS) + 1)
                    self._stats[sql] = [0, 0, 0, buckets, _sample(bindings)]
        return True

    def _on_profile(self, event: dict) -> None:
        end = time.perf_counter_ns()
        sql = event["sql"]
        start = self._starts.pop((event["connection"], sql), None)
        st = self._stats.get(sql)
        if st is None and start is not None:  # over the cap: counted, not by its text
            with self._lock:
                st = self._stats.setdefault(OTHERS, [0, 0, 0, [0] * (len(_BOUNDS_NS) + 1), None])
        if start is None or st is None:  # a trigger's or the schema's own statement
            return
        ns = end - start
        with self._lock:
            st[0] += 1
            st[1] += ns
            if ns > st[2]:
                st[2] = ns
            st[3][bisect.bisect_left(_BOUNDS_NS, ns)] += 1

    def statements(self) -> list[RecordedStatement]:
        with self._lock:
            items = [(sql, list(st), list(st[3])) for sql, st in self._stats.items()]
        return [
            RecordedStatement(
                self.database, self.kind, sql, st[0], st[1], st[2], buckets, st[4], self.path
            )
            for sql, st, buckets in items
            if st[0]
        ]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RecordedFile)
_write_lock = threading.Lock()


def queries_dir(state_dir: str) -> str:
    return os.path.join(state_dir, QUERIES_DIR)


def write_recorded(state_dir: str, statements: list[RecordedStatement]) -> None:
    """Replace this process's file (0600 in a 0700 folder: SQL and parameters of the bots
    are nobody else's business); nothing recorded, nothing written."""
    if not statements:
        return
    pid = os.getpid()
    folder = queries_dir(state_dir)
    data = _encoder.encode(RecordedFile(pid, time.time(), statements, process_start(pid)))
    with _write_lock:
        makedirs_private(folder)
        tmp = os.path.join(folder, f".{pid}.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(folder, f"{pid}.json"))


def read_recorded(state_dir: str) -> list[RecordedStatement]:
    """Every process's statements merged by (database, SQL): counts, times and buckets
    added, the sample of the earliest file kept. Unreadable files are skipped."""
    folder = queries_dir(state_dir)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    files: list[RecordedFile] = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if not (dot and ext == "json" and stem.isdigit()):
            continue
        try:
            with open(os.path.join(folder, name), "rb") as f:
                files.append(_decoder.decode(f.read()))
        except (OSError, msgspec.DecodeError):
            continue
    merged: dict[tuple[str, str], RecordedStatement] = {}
    for content in sorted(files, key=lambda c: c.written_at):
        for s in content.statements:
            have = merged.get((s.database, s.sql))
            if have is None:
                merged[(s.database, s.sql)] = msgspec.structs.replace(s, buckets=list(s.buckets))
                continue
            have.count += s.count
            have.total_ns += s.total_ns
            have.max_ns = max(have.max_ns, s.max_ns)
            have.buckets = [a + b for a, b in zip(have.buckets, s.buckets, strict=True)]
    return sorted(merged.values(), key=lambda s: (s.database, -s.count, s.sql))
