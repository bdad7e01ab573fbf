"""`cdc status --watch` as an operator sees it over SSH: a real daemon, the view in a
pseudo-terminal, refreshing with rates, and Ctrl-C ending it cleanly."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import sqlite3
import subprocess
import sys
import termios
import time

from tests.conftest import REPO


def _read_until(master: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
    return seen


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_the_watch_view_refreshes_with_rates_and_ends_on_ctrl_c(tmp_path, daemons, bot_cfg):
    cfg = bot_cfg(wal=True, rows=200)
    d = daemons(cfg)
    d.wait_synced()
    master, slave = pty.openpty()
    view = subprocess.Popen(
        [sys.executable, "-m", "cdc", "status", "--watch", "0.3", "-c", str(cfg)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", "COLUMNS": "120"},
        preexec_fn=_controlling_terminal,  # its own session on this terminal, as over SSH
    )
    os.close(slave)
    try:
        bot = sqlite3.connect(tmp_path / "legacy" / "bot.db", isolation_level=None, timeout=10)
        for i in range(300):
            bot.execute("INSERT INTO log_lines VALUES (?, ?)", (f"live {i}", i))
        bot.close()
        first = _read_until(master, b"rate/s", 30)
        frames = _read_until(master, b"\x1b[2J", 30)  # the next refresh clears the screen
        os.write(master, b"\x03")  # Ctrl-C through the terminal driver: SIGINT
        rest = b""
        deadline = time.monotonic() + 30
        while view.poll() is None and time.monotonic() < deadline:
            rest += _read_until(master, b"\x00", 0.5)  # keep draining: never block its writes
        code = view.wait(timeout=5)
    finally:
        if view.poll() is None:
            view.kill()
        os.close(master)
    text = (first + frames + rest).decode(errors="replace")
    assert code == 0, text
    assert "daemon: running (pid" in text and ", up " in text
    assert "rate/s" in text and "batch lag" in text
    assert "bot" in text and "core" in text
    assert "Traceback" not in text
