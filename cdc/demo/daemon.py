"""The `cdc run` process the demo starts, waits on and stops, as an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cdc.config import Config
from cdc.daemon.status import Status, collect_status
from cdc.demo.folder import DemoError
from cdc.status_file import read_status

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class DaemonProcess:
    """`python -m cdc -v run -c cdc.toml` in the background, its output appended to a log."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cdc", "-v", "run", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_running(self, state_dir: str, timeout: float = 30.0) -> None:
        """Until the daemon's status file says it runs (its plan is resolved by then)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise DemoError(
                    f"the daemon exited with code {self.proc.returncode} at start-up:\n"
                    + self.tail()
                )
            ds = read_status(state_dir)
            if ds is not None and ds.pid == self.pid and ds.state == "running":
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the daemon did not report running within {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as an operator (or systemd) would; SIGKILL only if it does not stop."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -signal.SIGKILL

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join("    | " + ln for ln in text.splitlines()[-lines:])


def _wait(
    cfg: Config, daemon: DaemonProcess, cond: Callable[[Status], bool], timeout: float
) -> tuple[Status | None, float]:
    """Poll `cdc status` until `cond`; (None, waited) on timeout. A dead daemon is an error."""
    t0 = time.monotonic()
    while True:
        if not daemon.alive():
            raise DemoError(
                f"the daemon died (exit code {daemon.proc.returncode}):\n" + daemon.tail()
            )
        st = collect_status(cfg)
        waited = time.monotonic() - t0
        if cond(st):
            return st, waited
        if waited > timeout:
            return None, waited
        time.sleep(0.1)
