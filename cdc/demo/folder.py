"""The demo folder: made fresh, or wiped only if a previous `cdc demo` marked it as its own."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from cdc.errors import CdcError

MARKER = ".cdc-demo"
"""A file in the demo root saying the folder was made by `cdc demo` (and may be wiped)."""

STATE_DIR = "state"  # what `write_demo_config` puts in the config


class DemoError(CdcError):
    """The demo cannot run here (folder not ours, daemon would not start, ...)."""

    exit_code = 1


def prepare_root(root: str | os.PathLike[str]) -> Path:
    """Create `root`, or empty it if a previous demo made it; refuse anything else."""
    path = Path(root).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise DemoError(f"{path}: exists and is not a folder", hint="choose another --dir")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MARKER).is_file():
            raise DemoError(
                f"{path}: folder is not empty and was not made by `cdc demo`; refusing to wipe it",
                hint="give an empty or new folder with --dir",
            )
        _refuse_if_daemon_running(path / STATE_DIR)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text(
        "made by `cdc demo`: the next `cdc demo --dir` here deletes this whole folder\n",
        encoding="utf-8",
    )
    return path


def _refuse_if_daemon_running(state_dir: Path) -> None:
    lock = state_dir / "daemon.lock"
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = lock.read_text(encoding="utf-8", errors="replace").strip() or "?"
        raise DemoError(
            f"{state_dir}: a daemon of the previous demo is still running (pid {pid})",
            hint=f"stop it first: kill -TERM {pid}",
        ) from None
    finally:
        os.close(fd)
