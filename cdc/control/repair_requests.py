"""Repair requests: how `cdc repair` asks the running daemon to re-send rows.

Only the daemon writes the change log, and a repaired row must travel the normal path
(log, then apply, in order with the stream) so that a newer change to the same key can
never be overwritten by an older image. The request is a file in `<state_dir>/requests/`
(msgpack keeps each key's storage class); the harvester of that source reads the current
legacy image of each key (or notes it is gone) in one read transaction, appends it to the
log like a snapshot chunk and answers with the log offset the targets must reach. A key
that is a TEXT of invalid UTF-8 travels as the log carries it (`cdc.exact_text`).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Any

import msgspec

from cdc import exact_text
from cdc.errors import DaemonError
from cdc.fsutil import makedirs_private, write_private

REQUESTS_DIR = "requests"


class RepairRequest(msgspec.Struct):
    id: str
    source: str
    table: str
    keys: list[list[Any]]
    requested_at: float


class RepairDone(msgspec.Struct):
    id: str
    log_offset: int  # the log end after the repair: a target past it holds the repair
    events: int
    done_at: float
    error: str | None = None


# Built at import: several harvest threads decode requests (see cdc.fence on why).
_REQUEST = exact_text.decoder(RepairRequest)
_DONE = exact_text.decoder(RepairDone)


def _dir(state_dir: str) -> str:
    return os.path.join(state_dir, REQUESTS_DIR)


def _write(path: str, value: msgspec.Struct) -> None:
    write_private(path, exact_text.pack(value))  # 0600: keys of the bots' rows


def submit(state_dir: str, source: str, table: str, keys: list[list]) -> RepairRequest:
    makedirs_private(_dir(state_dir))
    req = RepairRequest(uuid.uuid4().hex, source, table, keys, time.time())
    _write(os.path.join(_dir(state_dir), f"{req.id}.req"), req)
    return req


def pending(state_dir: str, source: str) -> list[RepairRequest]:
    """Requests for one source, oldest first (called by that source's harvest thread)."""
    try:
        names = [n for n in os.listdir(_dir(state_dir)) if n.endswith(".req")]
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        try:
            with open(os.path.join(_dir(state_dir), n), "rb") as f:
                req = _REQUEST.decode(f.read())
        except (OSError, msgspec.DecodeError):
            continue
        if req.source == source:
            out.append(req)
    return sorted(out, key=lambda r: r.requested_at)


def complete(state_dir: str, done: RepairDone) -> None:
    """Answer a request: the answer is written before the request disappears."""
    _write(os.path.join(_dir(state_dir), f"{done.id}.done"), done)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_dir(state_dir), f"{done.id}.req"))


def wait_done(state_dir: str, req: RepairRequest, timeout: float, alive) -> RepairDone:  # noqa: ANN001
    """Wait for the daemon's answer; `alive()` says whether the daemon still runs."""
    path = os.path.join(_dir(state_dir), f"{req.id}.done")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                done = _DONE.decode(f.read())
            os.unlink(path)
            return done
        except FileNotFoundError:
            pass
        if not alive():
            break
        time.sleep(0.05)
    raise DaemonError(
        f"the daemon did not take the repair of {req.source}.{req.table} "
        f"(request {req.id} in {_dir(state_dir)})",
        hint="is `cdc run` running on this state dir? see `cdc status`",
    )
