"""The apply side as its own process, so harvesting and applying use both cores.

In one Python process the two sides fight over the GIL: every SQLite step releases and
re-takes it, and measured draining fell from 53k changes/s (one thread doing both in turn)
to 35k/s (two threads). As a child process the applier has its own interpreter.

Protocol over the child's stdin: one length-prefixed msgpack `WorkerStart` (config and
resolved plan), then 8-byte little-endian offsets, each the log's new durable end (the
child never reads past the newest it was told). EOF means the daemon stopped or died:
the child finishes the transaction it is in and exits. The child writes one byte "R" to
its stdout once it is ready, and keeps `apply-status.json` in the state dir. It holds
`apply.lock` for its whole life, so a restarted daemon's new worker waits for an old one
that is still finishing a batch instead of racing it on the same targets. It reads the
live controls itself (`cdc.controls`): a paused target is skipped, and a panic stop ends
it with `PanicStop`'s exit code, which the daemon reports as the panic it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from cdc import faults
from cdc import log_output as logfmt
from cdc.config import Config
from cdc.control.controls import ControlWatcher
from cdc.errors import CdcError, DaemonError, PanicStop
from cdc.planning.plan import Plan
from cdc.stages import kept_out_apply as moved_apply
from cdc.status_file import TargetRuntime, read_json, write_json_atomic

if TYPE_CHECKING:
    from replicator.loop import ApplyLoop

log = logging.getLogger(__name__)

OFFSET = struct.Struct("<Q")
LENGTH = struct.Struct("<I")
STATUS_FILE = "apply-status.json"
LOCK_FILE = "apply.lock"
LOCK_WAIT = 60.0


class WorkerStart(msgspec.Struct):
    config: Config
    plan: Plan
    durable_end: int


class ApplyStatus(msgspec.Struct):
    pid: int
    updated_at: float
    targets: dict[str, TargetRuntime] = {}
    error: str | None = None
    exit_code: int = 0


# -- parent side ---------------------------------------------------------------------------
class WorkerHandle:
    """The daemon's end of the apply worker."""

    def __init__(self, cfg: Config, plan: Plan, durable_end: int) -> None:
        self.cfg = cfg
        self._end = durable_end
        self._sent = -1
        self._cond = threading.Condition()
        self._closed = False
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replicator.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=False,
        )
        payload = msgspec.msgpack.encode(WorkerStart(cfg, plan, durable_end))
        self.proc.stdin.write(LENGTH.pack(len(payload)) + payload)
        self.proc.stdin.flush()
        ready = self.proc.stdout.read(1)
        if ready != b"R":
            code = self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            st = read_apply_status(cfg.state_dir)
            msg = st.error if st and st.error else f"apply worker exited with code {code}"
            err = DaemonError(msg)
            err.exit_code = st.exit_code if st and st.exit_code else DaemonError.exit_code
            raise err
        self._sender = threading.Thread(target=self._send_loop, name="apply-feed", daemon=True)
        self._sender.start()

    def advance(self, durable_end: int) -> None:
        with self._cond:
            self._end = max(self._end, durable_end)
            self._cond.notify()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while self._end == self._sent and not self._closed:
                    self._cond.wait()
                if self._closed and self._end == self._sent:
                    return
                end = self._end
            try:
                self.proc.stdin.write(OFFSET.pack(end))
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                return
            self._sent = end

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failure(self) -> CdcError:
        st = read_apply_status(self.cfg.state_dir)
        if st and st.exit_code == PanicStop.exit_code:
            return PanicStop(st.error or "panic stop", hint="`cdc resume --panic`, then `cdc run`")
        err = DaemonError(
            st.error if st and st.error else f"apply worker exited with code {self.proc.returncode}"
        )
        if st and st.exit_code:
            err.exit_code = st.exit_code
        return err

    def stop(self, timeout: float = 60.0) -> int:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._sender.join(timeout)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.proc.stdout.close()


def read_apply_status(state_dir: str) -> ApplyStatus | None:
    return read_json(os.path.join(state_dir, STATUS_FILE), ApplyStatus)


# -- child side ----------------------------------------------------------------------------
def _write_status(state_dir: str, st: ApplyStatus) -> None:
    try:
        write_json_atomic(os.path.join(state_dir, STATUS_FILE), st)
    except OSError as e:
        log.warning("cannot write the apply status: %s", e)


def _lock(state_dir: str) -> int:
    fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise DaemonError(
                    f"{state_dir}: a previous apply worker still holds {LOCK_FILE}",
                    hint="it finishes its batch and exits; if it hangs, kill it",
                ) from None
            time.sleep(0.05)


def _archive_dir(cfg: Config) -> str | None:
    """Where applied segments go under `[log] retention = "archive"`, else None (deleted)."""
    return cfg.log_archive_dir if cfg.log.retention == "archive" else None


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    faults.kill_parent = os.getppid()  # a crash point here is a crash of the whole daemon
    logfmt.configure(logfmt.inherited_level())  # level and text or JSON, as the daemon's
    stdin = sys.stdin.buffer
    start = _read_start(stdin)
    if start is None:
        return 0
    cfg = start.config
    end = [start.durable_end]
    st = ApplyStatus(os.getpid(), time.time())
    try:
        loop = _open_loop(start, lambda: end[0])
    except CdcError as e:
        st.error, st.exit_code = e.message + (f" (hint: {e.hint})" if e.hint else ""), e.exit_code
        _write_status(cfg.state_dir, st)
        return e.exit_code
    signal.signal(signal.SIGTERM, lambda *_: loop.stop.set())
    threading.Thread(target=_feed, args=(stdin, loop, end), daemon=True).start()
    threading.Thread(target=_report, args=(loop, st, cfg.state_dir), daemon=True).start()
    sys.stdout.buffer.write(b"R")
    sys.stdout.buffer.flush()
    return _run(loop, st, cfg.state_dir)


def _read_start(stdin: BinaryIO) -> WorkerStart | None:
    """None when the daemon died before sending anything: there is nothing to report."""
    raw = stdin.read(LENGTH.size)
    if len(raw) < LENGTH.size:
        return None
    return msgspec.msgpack.decode(stdin.read(LENGTH.unpack(raw)[0]), type=WorkerStart)


def _open_loop(start: WorkerStart, durable_end: Callable[[], int]) -> ApplyLoop:
    """The lock comes first: an old worker still finishing a batch must be done with the
    targets before this one opens them."""
    cfg = start.config
    from replicator.loop import ApplyLoop

    _lock(cfg.state_dir)
    moved_apply.watch(cfg.state_dir)  # refuse a cut-over table's legacy side
    return ApplyLoop(
        start.plan,
        cfg.log_dir,
        cfg.daemon,
        durable_end,
        archive_dir=_archive_dir(cfg),
        controls=ControlWatcher(cfg.state_dir).current,
    )


def _feed(stdin: BinaryIO, loop: ApplyLoop, end: list[int]) -> None:
    """The daemon's offsets only ever grow the readable end: the child never reads past
    what the daemon has made durable."""
    while True:
        b = stdin.read(OFFSET.size)
        if len(b) < OFFSET.size:
            loop.stop.set()  # EOF: the daemon stopped or died
            loop.wake.set()
            return
        end[0] = max(end[0], OFFSET.unpack(b)[0])
        loop.wake.set()


def _report(loop: ApplyLoop, st: ApplyStatus, state_dir: str) -> None:
    """The daemon and `cdc status` learn the applier's progress from this file: the
    child's stdout carries only the ready byte."""
    while not loop.stop.wait(0.5):
        st.targets, st.updated_at = loop.runtime, time.time()
        _write_status(state_dir, st)


def _run(loop: ApplyLoop, st: ApplyStatus, state_dir: str) -> int:
    """Whatever ends the loop, the last status is written: it is how the daemon learns
    why its worker exited."""
    code = 0
    try:
        loop.run()
    except CdcError as e:
        log.critical("apply worker stopping: %s", e)
        st.error, st.exit_code, code = e.message, e.exit_code, e.exit_code
    except Exception as e:  # noqa: BLE001 - reported to the daemon through the status file
        log.exception("apply worker crashed")
        st.error, st.exit_code, code = f"{type(e).__name__}: {e}", DaemonError.exit_code, 1
    finally:
        loop.stop.set()
        st.targets, st.updated_at = loop.runtime, time.time()
        _write_status(state_dir, st)
        loop.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
