"""The daemon's verifier: table after table, forever, at a pace the bots do not feel.

It runs as a thread of the daemon process, with its own read-only connections, and
writes what it knows to `verify-status.json` in the state dir after every table, which
`cdc status` shows. Its pace is `verify.rows_per_second` legacy rows per second in
`verify.chunk_rows` chunks (one short read transaction each), then `verify.cycle_pause`
seconds between passes.

A verdict is as old as the pass that gave it. `cdc repair` verifies the tables it repaired
again, in another process, and records each table it proved equal in
`repair-proofs/` (`record_repair_proofs`); `read_verifier_status` lets such a proof stand
in for an older verdict, so that a cutover right after a successful repair is not refused
on what the daemon's verifier saw before it (its next pass may be a minute away). Only a
proof of equality is recorded, and only a verdict whose pass ended before the proof's
began is superseded: a pass that overlapped the repair may have seen a change the repair's
pass did not, and it stands.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time

import msgspec

from cdc.config import Config
from cdc.control.controls import read_controls
from cdc.fsutil import makedirs_private
from cdc.planning.plan import Plan, TableMapping
from cdc.status_file import read_json, write_json_atomic
from verifier.model import KeyDiff, TableResult
from verifier.run import select_tables, verify_tables
from verifier.table import COPY_PENDING

log = logging.getLogger(__name__)

VERIFY_STATUS_FILE = "verify-status.json"
COPY_RECHECK = 2.0  # seconds between looks at a table whose initial copy is pending
REPAIR_PROOFS_DIR = "repair-proofs"  # one file per table, written by `cdc repair`


class TableVerifyState(msgspec.Struct):
    """Per table: the last pass's outcome, and when the table was last proven equal."""

    source: str
    table: str
    target: str
    target_table: str
    state: str = "pending"  # the last pass: equal / diverged / unsettled / skipped
    reason: str | None = None
    passes: int = 0
    last_pass_at: float | None = None
    last_verified_at: float | None = None  # end of the newest pass that found it equal
    chunks: int = 0
    rows: int = 0
    mismatches: int = 0
    rechecked_total: int = 0  # rows seen changing and compared again, over all passes
    diverged: list[KeyDiff] = []


class VerifierStatus(msgspec.Struct):
    pid: int
    updated_at: float
    cycle: int = 0
    current: str | None = None  # "source.table" being verified now
    tables: list[TableVerifyState] = []

    @property
    def mismatches(self) -> int:
        return sum(t.mismatches for t in self.tables)


class RepairProof(msgspec.Struct):
    """A whole-table pass by `cdc repair`, after its rows were applied, that found the
    table equal: `started_at` is when that pass began reading."""

    source: str
    table: str
    target: str
    target_table: str
    started_at: float
    finished_at: float
    rows: int
    repaired: int  # keys re-sent before the pass


def _proof_path(state_dir: str, key: tuple[str, str, str, str]) -> str:
    name = hashlib.blake2b("\0".join(key).encode(), digest_size=16).hexdigest()
    return os.path.join(state_dir, REPAIR_PROOFS_DIR, f"{name}.json")


def record_repair_proofs(
    state_dir: str, results: list[TableResult], repaired: dict[tuple[str, str], int]
) -> list[RepairProof]:
    """Record the tables of a repair's second pass that it proved equal. Anything else
    (still diverged, unsettled, skipped) records nothing and supersedes nothing: a wrong
    "equal" would let a cutover through."""
    proofs = [
        RepairProof(
            r.source,
            r.table,
            r.target,
            r.target_table,
            r.started_at,
            r.finished_at,
            r.source_rows,
            repaired.get((r.source, r.table), 0),
        )
        for r in results
        if r.state == "equal" and r.started_at > 0 and not r.diverged_count
    ]
    if proofs:
        makedirs_private(os.path.join(state_dir, REPAIR_PROOFS_DIR))
    for p in proofs:
        write_json_atomic(_proof_path(state_dir, (p.source, p.table, p.target, p.target_table)), p)
    return proofs


def read_repair_proofs(state_dir: str) -> dict[tuple[str, str, str, str], RepairProof]:
    folder = os.path.join(state_dir, REPAIR_PROOFS_DIR)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return {}
    out: dict[tuple[str, str, str, str], RepairProof] = {}
    for n in names:
        p = read_json(os.path.join(folder, n), RepairProof)
        if p is not None:
            out[(p.source, p.table, p.target, p.target_table)] = p
    return out


def supersede(status: VerifierStatus, proofs: dict) -> VerifierStatus:
    """Each table's newer word: the verifier's last pass, or a repair's proof whose pass
    began after that one had ended (an overlapping pass keeps its verdict)."""
    for t in status.tables:
        p = proofs.get((t.source, t.table, t.target, t.target_table))
        if p is None or (t.last_pass_at is not None and p.started_at < t.last_pass_at):
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.finished_at))
        t.state = "equal"
        t.reason = (
            f"proven equal by `cdc repair` at {when} ({p.repaired} keys re-sent), "
            "after the verifier's last pass"
        )
        t.last_pass_at = t.last_verified_at = p.finished_at
        t.rows, t.mismatches, t.diverged = p.rows, 0, []
    return status


def read_verifier_status(state_dir: str) -> VerifierStatus | None:
    """The verifier's status, each table's verdict superseded by a newer repair proof."""
    st = read_json(os.path.join(state_dir, VERIFY_STATUS_FILE), VerifierStatus)
    return None if st is None else supersede(st, read_repair_proofs(state_dir))


class ContinuousVerifier:
    def __init__(self, cfg: Config, plan: Plan, stop: threading.Event) -> None:
        self.cfg, self.plan, self.stop = cfg, plan, stop
        self.tables: list[TableMapping] = select_tables(plan)
        # What an earlier daemon learned stays true until verified again: a restart must
        # not make `cdc status` forget when a table was last proven equal, or that it was not.
        before = read_verifier_status(cfg.state_dir)
        known = (
            {(t.source, t.table, t.target, t.target_table): t for t in before.tables}
            if before
            else {}
        )
        self.status = VerifierStatus(
            os.getpid(),
            time.time(),
            cycle=before.cycle if before else 0,
            tables=[
                known.get((m.source, m.table, m.target, m.target_table))
                or TableVerifyState(m.source, m.table, m.target, m.target_table)
                for m in self.tables
            ],
        )

    def run(self) -> None:
        while not self.stop.is_set():
            for m, st in zip(self.tables, self.status.tables, strict=True):
                if self.stop.is_set() or not self._verify(m, st):
                    break
            self.status.current = None
            if not self.stop.is_set():  # a pass cut short by a stop is not a pass
                self.status.cycle += 1
            self._write()
            self._pause()

    def _verify(self, m: TableMapping, st: TableVerifyState) -> bool:
        """One table; False when the verifier is stopping."""
        if m.source in read_controls(self.cfg.state_dir).paused_harvest:
            # `cdc pause --harvest`: hands off that legacy file, the verifier too
            st.state, st.reason = "paused", "harvest of its source is paused"
            return True
        self.status.current = f"{m.source}.{m.table}"
        self._write()
        try:
            r = verify_tables(self.cfg, self.plan, [m], stop=self.stop).report.tables[0]
        except Exception as e:  # noqa: BLE001 - replication must go on; shown in status
            log.exception("verifier: %s.%s failed", m.source, m.table)
            st.state, st.reason = "error", f"{type(e).__name__}: {e}"
            st.last_pass_at = time.time()
            return True
        if r.reason == "stopped":
            return False
        self._record(st, r)
        return True

    def _pause(self) -> None:
        """The pause between passes, during which a table skipped only because its initial
        copy was not applied yet is looked at again every few seconds: right after start
        the first pass finds most copies unfinished, and `cdc status` must not show them
        as skipped for a whole `cycle_pause` after the copy is done."""
        deadline = time.monotonic() + self.cfg.verify.cycle_pause
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            copying = [
                (m, st)
                for m, st in zip(self.tables, self.status.tables, strict=True)
                if st.state == "skipped" and st.reason in COPY_PENDING
            ]
            if left <= 0 or not copying:
                self.stop.wait(max(left, 0.0))
                return
            self.stop.wait(min(COPY_RECHECK, left))
            for m, st in copying:
                if self.stop.is_set() or not self._verify(m, st):
                    return
            self.status.current = None
            self._write()

    def _record(self, st: TableVerifyState, r: TableResult) -> None:
        st.state, st.reason = r.state, r.reason
        st.passes += 1
        st.last_pass_at = r.finished_at
        st.chunks, st.rows, st.mismatches = r.chunks, r.source_rows, r.diverged_count
        st.diverged = r.diverged
        st.rechecked_total += r.rechecked_rows
        if r.state == "equal":
            st.last_verified_at = r.finished_at
        elif r.state == "diverged" and r.shape:
            log.error(
                "verifier: %s.%s -> %s.%s: %s",
                r.source,
                r.table,
                r.target,
                r.target_table,
                r.reason,
            )
        elif r.state == "diverged":
            log.error(
                "verifier: %s.%s differs from %s.%s in %d rows (first: %s)",
                r.source,
                r.table,
                r.target,
                r.target_table,
                r.diverged_count,
                ", ".join(f"{d.kind} {d.key}" for d in r.diverged[:3]),
            )

    def _write(self) -> None:
        self.status.updated_at = time.time()
        try:
            write_json_atomic(os.path.join(self.cfg.state_dir, VERIFY_STATUS_FILE), self.status)
        except OSError as e:  # a full state disk must not stop verification by itself
            log.warning("cannot write the verifier status: %s", e)
