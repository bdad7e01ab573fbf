"""Finalize a cut-over stage: archive the legacy files it emptied, then remove capture.

The archive is a consistent copy made with SQLite's backup API (never a raw copy of a file
beside a live `-wal`: that copies a database without its newest commits, which is how the
real system's own archive step went wrong), fsynced, then read back: `PRAGMA
integrity_check` and a SHA-256 taken again from the file on disk must agree with what was
written. `manifest.json` lists every copy with its size and digest. The originals are
never deleted or moved.

A legacy file is archived and loses its capture (triggers, `_cdc_*` tables) only once
every one of its mapped tables belongs to a stage that is finalized (a stage that is only
cut over still has its rollback window); its fences stay, so a stale bot's write still
fails with the message naming the table's new home. Finalizing a stage whose files still
feed another stage archives nothing of those files yet and says which stage they wait
for; finalizing that stage later archives them. Finalizing also ends the stage's rollback
window: the capture of the target's tables is removed.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime

import apsw
import msgspec

from cdc import guard
from cdc.capture import triggers as capture
from cdc.config import Config
from cdc.cutover import target_capture
from cdc.cutover.cutover import step_done
from cdc.errors import CdcError
from cdc.fsutil import fsync_dir, makedirs_private, write_private
from cdc.planning.plan import Plan, SourcePlan
from cdc.postgres.dsn import is_postgres
from cdc.sqlconn import open_legacy, open_target
from cdc.stages.record import (
    MANIFEST,
    ArchivedFile,
    ArchiveManifest,
    CutoverRecord,
    finalized_sources,
    read_record,
    read_records,
    save_record,
)


class FinalizeError(CdcError):
    exit_code = 13


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def archive_copy(src_path: str, dest: str, busy_timeout_ms: int) -> tuple[int, str, str]:
    """A consistent, verified copy of a live SQLite file: (size, sha256, integrity)."""
    makedirs_private(os.path.dirname(dest))  # the archive root too: 0700, whatever the umask
    tmp = dest + ".partial"
    if os.path.exists(tmp):
        os.unlink(tmp)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # SQLite keeps it
    src = open_legacy(src_path, busy_timeout_ms, readonly=True)
    out = apsw.Connection(tmp)
    try:
        with out.backup("main", src, "main") as b:
            while not b.done:
                b.step(1024)  # the source is locked only while a step copies its pages
        out.execute("PRAGMA journal_mode=DELETE").fetchall()  # one self-contained file
    finally:
        out.close()
        src.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    written = _sha256(tmp)
    os.replace(tmp, dest)
    fsync_dir(os.path.dirname(dest))
    check = apsw.Connection(dest, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        integrity = check.execute("PRAGMA integrity_check").fetchall()[0][0]
    finally:
        check.close()
    again = _sha256(dest)
    if again != written or integrity != "ok":
        raise FinalizeError(
            f"{dest}: the archive copy does not verify (integrity {integrity!r}, "
            f"sha256 {written[:12]} written, {again[:12]} read back)",
            hint="check the disk; the original is untouched",
        )
    return os.path.getsize(dest), again, integrity


def finalize(
    cfg: Config, plan: Plan, target: str, archive_dir: str | None = None, echo=lambda _s: None
) -> ArchiveManifest:  # noqa: ANN001
    rec = _finalizable_record(cfg, target)
    if rec.state == "done" and rec.finalizing_at is None:  # the way back closes first
        rec.finalizing_at = time.time()
        save_record(cfg.state_dir, rec)
    step_done("finalizing")
    ended = _ended_tables(cfg, target)
    root = archive_dir or os.path.join(cfg.state_dir, "archive")
    path = os.path.join(root, f"manifest-{target}.json")
    manifest = _read_manifest(path, target)
    guards = _archive_sources(cfg, plan, rec, ended, root, manifest, echo)
    makedirs_private(root)
    write_private(path, msgspec.json.format(msgspec.json.encode(manifest), indent=2))
    rec.state, rec.finalized_at, rec.archive = "finalized", time.time(), path
    save_record(cfg.state_dir, rec)
    step_done("finalized")
    done: list[str] = []
    for sp in guards:  # after the record: a refusal here is resumed by a rerun
        try:
            _guard(cfg, plan, sp, echo)
        except guard.GuardError as e:  # say what this run did move: the rerun does the rest
            also = f" (guarded in this run: {', '.join(done)})" if done else ""
            raise guard.GuardError(e.message, hint=f"{e.hint}{also}") from e
        done.append(sp.path)
    _end_rollback_window(cfg, rec, echo)
    return manifest


def _finalizable_record(cfg: Config, target: str) -> CutoverRecord:
    rec = read_record(cfg.state_dir, target)
    if rec is None or rec.state not in ("done", "finalized"):
        raise FinalizeError(
            f"{target}: not cut over (state {rec.state if rec else 'none'}); nothing to finalize",
            hint=f"run `cdc rollback {target}` to its end, or `cdc cutover {target}`"
            if rec is not None and rec.state == "rolling_back"
            else f"run `cdc cutover {target}` first",
        )
    return rec


def _read_manifest(path: str, target: str) -> ArchiveManifest:
    """A finalize run again (after a refusal) keeps what the first one archived."""
    try:
        with open(path, "rb") as f:
            return MANIFEST.decode(f.read())
    except FileNotFoundError:
        return ArchiveManifest(target, time.time())


def _ended_tables(cfg: Config, target: str) -> set[tuple[str, str]]:
    """A file is archived only once every stage it feeds is finalized (this one included):
    a stage that is only cut over still has its rollback window, which writes back into
    the file and needs it in place."""
    return {
        (t.source, t.table)
        for r in read_records(cfg.state_dir)
        if r.state == "finalized" or r.target == target
        for t in r.tables
    }


def _archive_sources(
    cfg: Config,
    plan: Plan,
    rec: CutoverRecord,
    ended: set[tuple[str, str]],
    root: str,
    manifest: ArchiveManifest,
    echo,  # noqa: ANN001
) -> list[SourcePlan]:
    """The files archived now are returned, not guarded: `finalize` guards them only after
    the record says finalized, so that a refusal while guarding is resumed by a rerun."""
    released = finalized_sources(cfg.state_dir)
    guards: list[SourcePlan] = []
    for source in sorted({t.source for t in rec.tables}):
        sp = plan.source(source)
        if source in released:
            echo(f"{source}: archived already (by an earlier finalize)")
            _guard(cfg, plan, sp, echo)
            continue
        pending = sorted({m.target for m in sp.tables if (m.source, m.table) not in ended})
        if pending:
            manifest.waiting[source] = pending
            echo(f"{source}: still feeds {', '.join(pending)}; archived when that is finalized")
            continue
        _archive_source(cfg, source, sp, root, manifest, echo)
        guards.append(sp)
        step_done("archived")  # test hook: a kill after the first file
    return guards


def _archive_source(
    cfg: Config,
    source: str,
    sp: SourcePlan,
    root: str,
    manifest: ArchiveManifest,
    echo,  # noqa: ANN001
) -> None:
    dest = os.path.join(root, source, os.path.basename(sp.path))
    size, digest, integrity = archive_copy(sp.path, dest, cfg.daemon.busy_timeout_ms)
    manifest.files.append(
        ArchivedFile(
            source,
            sp.path,
            dest,
            size,
            digest,
            integrity,
            sorted(m.table for m in sp.tables),
            time.time(),
        )
    )
    conn = open_legacy(sp.path, cfg.daemon.busy_timeout_ms)
    try:
        capture.uninstall(conn, keep_fences=True)
    finally:
        conn.close()
    echo(f"{source}: archived to {dest} ({size} bytes, sha256 {digest[:16]}…); capture removed")


def _end_rollback_window(cfg: Config, rec: CutoverRecord, echo) -> None:  # noqa: ANN001
    """The target's capture (the way back) goes: after finalize there is no way back, and
    its capture table would only grow. Runs after the record says finalized, so the
    daemon's backflow has stopped reading it."""
    if is_postgres(rec.path):
        from cdc.cutover.pg_cutover import remove_target_capture

        if remove_target_capture(rec.path, sorted({t.target_table for t in rec.tables})):
            echo(f"{rec.path}: rollback window closed (capture of the target removed)")
        return
    conn = open_target(rec.path, cfg.daemon.busy_timeout_ms)
    try:
        if target_capture.remove_target_capture(conn):
            echo(f"{rec.path}: rollback window closed (capture of the target removed)")
    finally:
        conn.close()


def _guard(cfg: Config, plan: Plan, sp: SourcePlan, echo) -> None:  # noqa: ANN001
    if guard.is_guard(sp.path):
        return
    moved = guard.guard(sp.path, guard_messages(cfg, plan, sp))
    echo(
        f"{sp.path}: guarded (a stale bot's use of a table names its new home); original kept as {moved}"
    )


def guard_messages(cfg: Config, plan: Plan, sp: SourcePlan) -> dict[str, str]:
    """What a stale bot reads on each table of the guarded file: the same words as the
    fence it met before (where the table lives now), with when and where the original is."""
    done = {r.target: r.done_at for r in read_records(cfg.state_dir)}
    tail = (
        f"the original file is {sp.path}{guard.MOVED_SUFFIX}; "
        "see the runbook: a stale bot after finalize"
    )
    out = {}
    for m in [*sp.tables, *sp.fts]:
        where = f"{plan.targets.get(m.target, m.target)} (table {m.target_table}"
        where += f", {m.tag_column} = '{m.tag}')" if m.tag_column else ")"
        when = _iso(done.get(m.target) or time.time())
        out[m.table] = (
            f"sqlite-cdc: table {m.table} of {sp.path} moved to {where} at {when}; {tail}"
        )
    for name in [*sp.excluded, *sp.uncapturable]:
        out[name] = (
            f"sqlite-cdc: table {name} of {sp.path} was not replicated (excluded) and the file "
            f"was finalized at {_iso(time.time())}; {tail}"
        )
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["ArchiveManifest", "ArchivedFile", "CutoverRecord", "FinalizeError", "finalize"]
