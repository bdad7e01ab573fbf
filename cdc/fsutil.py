"""Durability on disk: what makes a rename or an unlink survive a power loss."""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """fsync a folder, so the entries renamed, created or removed in it are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
