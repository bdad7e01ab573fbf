"""Files on disk: durable renames, and private (0700/0600) files for the state dir.

Everything sqlite-cdc keeps under `state_dir` (the change log, status files, locks,
controls, repair requests, cutover records, pool metrics), and the validation reports that
list rows' values wherever they go, are the operator's business only:
folders are created 0700 and files 0600 whatever the umask (docs/config.md, "Bad input and
security"). A name that comes from the config or from a legacy file (a source, a target)
becomes at most one path component, never a way out of its folder (`safe_component`).
"""

from __future__ import annotations

import os

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def fsync_dir(path: str) -> None:
    """fsync a folder, so the entries renamed, created or removed in it are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_private(path: str) -> str:
    """`mkdir -p` where every folder this call creates is 0700, whatever the umask
    (`os.makedirs` gives its mode to the last folder only, and through the umask).
    Folders that already exist keep their mode: they are the operator's."""
    path = os.path.abspath(path)
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            continue  # made by another process meanwhile: theirs to set
        os.chmod(d, PRIVATE_DIR)  # the umask may have taken bits off (or 0o700 kept more)
    return path


def write_private(path: str, data: bytes, durable: bool = True, tmp: str | None = None) -> None:
    """Replace `path` atomically with a 0600 file holding `data` (temporary file, fsync,
    rename, fsync of the folder). Readers see the old content or the new, never half.
    `tmp` names the temporary file when two processes may write the same path at once."""
    tmp = tmp or path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # a leftover temporary file may have other bits
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(path) or ".")


def safe_component(name: str) -> bool:
    """Whether `name` can be one file name inside a folder and nothing more: not empty, no
    `/` or NUL, not `.` or `..`, and not hidden (a leading dot is how our temporary files
    start)."""
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")
