"""The durable record of a stage's cutover (`<state_dir>/cutover/<target>.json`).

Kept apart from the steps (`cdc.cutover`) so that `cdc status` and the verifier can read
where a cutover stands without importing the machinery that performs it.
"""

from __future__ import annotations

import os

import apsw
import msgspec

from cdc.capture.fence import FenceMark
from cdc.errors import ConfigError
from cdc.fsutil import makedirs_private, safe_component, write_private
from cdc.planning.plan import SourcePlan

CUTOVER_DIR = "cutover"


class CutoverTable(msgspec.Struct):
    source: str
    table: str
    target_table: str
    tag_column: str | None = None
    tag: str | None = None
    rows: int = 0
    digest: str = ""
    sequence: int | None = None  # AUTOINCREMENT counter carried into the target


class CutoverRecord(msgspec.Struct):
    target: str
    path: str
    # "fencing", "fenced", "done", "aborted", "finalized", and for the way back
    # "rolling_back", "rolled_back" (`cdc.rollback`)
    state: str
    started_at: float
    tables: list[CutoverTable] = []
    fences: list[FenceMark] = []
    pre_offset: int = 0  # the target's log offset when the pass before the fence started
    pre_verified: list[str] = []  # "source.table" proven equal by that pass
    verified_in_full: int = 0  # tables verified in full under the fence
    keys_checked: int = 0  # keys the log named since the pass (the fence proof digests all)
    log_offset: int = 0  # the target's checkpoint when it was done
    fenced_at: float | None = None
    done_at: float | None = None
    steps_ms: dict[str, float] = {}  # how long each step under the fence took
    pause_ms: float | None = None  # first fence to done: how long the bots had no table
    error: str | None = None
    # `cdc finalize` began: from then the way back is closed (no backflow, no rollback), so
    # nothing writes into the legacy files it archives and removes capture from
    finalizing_at: float | None = None
    finalized_at: float | None = None
    archive: str | None = None  # the manifest of the archived legacy files
    rollback: RollbackInfo | None = None
    history: list[str] = []  # earlier rounds of this stage (cut over, rolled back), one line each


class RollbackInfo(msgspec.Struct):
    """`cdc rollback`: the target fenced for the bots, drained back, verified, legacy unfenced."""

    started_at: float
    fence: FenceMark | None = None  # the target's fence: its capture sequence then
    unfencing: bool = False  # past the point where the target could be given back instead
    verified_tables: int = 0
    keys_checked: int = 0  # keys the bots changed, compared one by one (-1: all in full)
    steps_ms: dict[str, float] = {}
    rolled_back_at: float | None = None
    pause_ms: float | None = None  # target fenced to legacy unfenced


class ArchivedFile(msgspec.Struct):
    source: str
    original: str
    archive: str
    size: int
    sha256: str
    integrity: str
    tables: list[str]
    archived_at: float


class ArchiveManifest(msgspec.Struct):
    target: str
    created_at: float
    files: list[ArchivedFile] = []
    waiting: dict[str, list[str]] = {}  # source -> stages it still feeds


_RECORD = msgspec.json.Decoder(CutoverRecord)
MANIFEST = msgspec.json.Decoder(ArchiveManifest)  # built at import: see cdc.fence


def record_path(state_dir: str, target: str) -> str:
    if not safe_component(target):  # config names are checked; this is the last line
        raise ConfigError(
            f"{target!r} cannot name a target (its record would leave {CUTOVER_DIR}/)"
        )
    return os.path.join(state_dir, CUTOVER_DIR, f"{target}.json")


def read_record(state_dir: str, target: str) -> CutoverRecord | None:
    try:
        with open(record_path(state_dir, target), "rb") as f:
            return _RECORD.decode(f.read())
    except FileNotFoundError:
        return None


def read_records(state_dir: str) -> list[CutoverRecord]:
    d = os.path.join(state_dir, CUTOVER_DIR)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = [read_record(state_dir, n[: -len(".json")]) for n in names]
    return [r for r in out if r is not None]


def cut_over_tables(state_dir: str) -> dict[tuple[str, str], CutoverRecord]:
    """(source, table) of every table whose stage is cut over: the target is the live copy
    now, and comparing it with the frozen legacy table means nothing."""
    return {
        (t.source, t.table): r
        for r in read_records(state_dir)
        if r.state in ("done", "finalized")
        for t in r.tables
    }


def save_record(state_dir: str, rec: CutoverRecord) -> None:
    """Durable before the next step starts: write, fsync, rename, fsync the folder."""
    path = record_path(state_dir, rec.target)
    makedirs_private(os.path.dirname(path))
    write_private(path, msgspec.json.format(msgspec.json.encode(rec), indent=2))


def finalized_sources(state_dir: str) -> set[str]:
    """Sources whose legacy file was archived and released by `cdc finalize`: nothing of
    them is captured any more, so the daemon and `cdc install` leave them alone."""
    out: set[str] = set()
    for r in read_records(state_dir):
        if r.state == "finalized" and r.archive:
            try:
                with open(r.archive, "rb") as f:
                    files = MANIFEST.decode(f.read()).files
            except (OSError, msgspec.DecodeError):
                continue
            out.update(x.source for x in files)
    return out


def capture_removed_by_finalize(state_dir: str, sp: SourcePlan, e: Exception) -> bool:
    """Capture gone from a file whose every table is in a stage being finalized: what `cdc
    finalize` does before its record says finalized (it archives every file first), so the
    daemon waits for the record instead of raising an alert. Anywhere else a missing capture table
    stays an error: the changes of a live table are not being captured."""
    if not (isinstance(e, apsw.SQLError) and "no such table: _cdc_" in str(e)):
        return False
    ending = {
        (t.source, t.table)
        for r in read_records(state_dir)
        if r.state == "finalized" or (r.state == "done" and r.finalizing_at is not None)
        for t in r.tables
    }
    return all((sp.name, m.table) in ending for m in sp.tables)
