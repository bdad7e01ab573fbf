"""Finding the SQLite databases under a set of folders, by content rather than by name.

Legacy systems name their files `.db`, `.sqlite`, `.dat` or nothing at all, and keep text
files called `.db` next to them, so only the 16-byte header `SQLite format 3\\0` decides.
Every other file is reported with the reason it was passed over, so an operator can tell
"not a database" from "never looked at".

The walk follows directory symlinks (legacy trees are often stitched together that way) but
enters each real directory once, so a link back to an ancestor ends instead of looping, and
a database reached by two paths is listed once, preferably under a path without symlinks.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from cdc.errors import ConfigError

SQLITE_HEADER = b"SQLite format 3\x00"
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


class Skipped(msgspec.Struct, frozen=True):
    """A file that is not (or not again) a database to inventory, and why."""

    path: str
    relpath: str
    kind: str  # side_file, apple_double, not_sqlite, empty, special, duplicate, symlink
    reason: str


class Unreadable(msgspec.Struct, frozen=True):
    """A database (or folder) the inventory could not read, and why: these hide tables."""

    path: str
    relpath: str
    kind: str  # permission, corrupt, hot_journal, busy, name, error
    reason: str


class Discovery(msgspec.Struct, frozen=True):
    base: str
    roots: list[str]
    databases: list[str]  # absolute paths, sorted by relpath
    skipped: list[Skipped] = []
    unreadable: list[Unreadable] = []


def is_sqlite_header(head: bytes) -> bool:
    return head[: len(SQLITE_HEADER)] == SQLITE_HEADER


def relpath(path: str, base: str) -> str:
    """`path` relative to `base` with `/` separators, as the mapping CSV and JSON carry it."""
    return Path(os.path.relpath(path, base)).as_posix()


def common_base(roots: Sequence[str]) -> str:
    """The folder every root lies in: the root itself when there is one (its parent if it
    is a file), else the deepest common parent."""
    dirs = [r if os.path.isdir(r) else os.path.dirname(r) for r in roots]
    return os.path.commonpath(dirs) if dirs else os.getcwd()


def discover(roots: Iterable[str | os.PathLike[str]]) -> Discovery:
    """Every SQLite database under `roots` (folders, searched recursively, or files)."""
    absolute = [os.path.abspath(os.fspath(r)) for r in roots]
    if not absolute:
        raise ConfigError("no folder to inventory", hint="name at least one DIR")
    bad = [_shown(r) for r in absolute if not _utf8(r)]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: {NOT_UTF8}")
    missing = [r for r in absolute if not os.path.exists(r)]
    if missing:
        raise ConfigError(f"not found: {', '.join(missing)}", hint="check the DIR arguments")
    walk = _Walk(common_base(absolute))
    for root in absolute:
        walk.root(root)
    walk.follow_deferred()
    return walk.result(absolute)


class _Walk:
    """One depth-first walk over several roots, remembering every directory and file it
    has seen by (device, inode)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.seen_dirs: dict[tuple[int, int], str] = {}
        self.deferred: list[str] = []  # directory symlinks, entered after the real tree
        self.files: list[tuple[str, os.stat_result, bool]] = []  # path, stat, via a link
        self.skipped: list[Skipped] = []
        self.unreadable: list[Unreadable] = []

    def root(self, path: str) -> None:
        if os.path.isdir(path):
            self.directory(path)
        else:
            self.entry(path, is_link=os.path.islink(path))

    def directory(self, path: str) -> None:
        stack = [path]
        while stack:
            current = stack.pop()
            try:
                st = os.stat(current)
            except OSError as e:
                self.skip(current, "symlink", f"cannot follow: {e.strerror}")
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in self.seen_dirs:
                first = relpath(self.seen_dirs[ident], self.base)
                self.skip(current, "duplicate", f"folder already searched as {first}")
                continue
            self.seen_dirs[ident] = current
            try:
                with os.scandir(current) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self.fail(
                    current,
                    "permission" if _denied(e) else "error",
                    f"folder cannot be listed: {e.strerror}",
                )
                continue
            for e in reversed(entries):  # reversed: the stack pops them in name order
                if e.is_dir(follow_symlinks=False) and not _utf8(e.path):
                    self.fail(e.path, "name", f"folder not searched: {NOT_UTF8}")
                elif e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_symlink() and _is_dir(e.path):
                    self.deferred.append(e.path)
                else:
                    self.entry(e.path, is_link=e.is_symlink())

    def follow_deferred(self) -> None:
        while self.deferred:
            batch, self.deferred = sorted(self.deferred), []
            for path in batch:
                self.directory(path)

    def entry(self, path: str, is_link: bool) -> None:
        name = os.path.basename(path)
        if name.startswith("._"):
            self.skip(path, "apple_double", "macOS metadata file (AppleDouble `._*`)")
            return
        if name.endswith(SIDE_SUFFIXES):
            owner = name.rsplit("-", 1)[0]
            self.skip(path, "side_file", f"side file of {owner} (read with it)")
            return
        try:
            st = os.stat(path)
        except OSError as e:
            what = "symlink loop" if e.errno == errno.ELOOP else "broken symlink"
            self.skip(path, "symlink", f"{what}: {e.strerror}")
            return
        if not stat.S_ISREG(st.st_mode):
            self.skip(path, "special", "not a regular file (fifo, socket or device)")
            return
        self.files.append((path, st, is_link))

    def result(self, roots: list[str]) -> Discovery:
        # A file reached by several paths is one database: keep the path without a link.
        by_inode: dict[tuple[int, int], str] = {}
        databases = []
        for path, st, _link in sorted(self.files, key=lambda f: (f[2], relpath(f[0], self.base))):
            ident = (st.st_dev, st.st_ino)
            if ident in by_inode:
                first = relpath(by_inode[ident], self.base)
                self.skip(path, "duplicate", f"same file as {first}")
                continue
            by_inode[ident] = path
            if not self.check_header(path, st):
                continue
            if _utf8(path):
                databases.append(path)
            else:
                self.fail(path, "name", f"a SQLite database, not read: {NOT_UTF8}")
        databases.sort(key=lambda p: relpath(p, self.base))
        return Discovery(
            base=self.base,
            roots=roots,
            databases=databases,
            skipped=sorted(self.skipped, key=lambda s: s.relpath),
            unreadable=sorted(self.unreadable, key=lambda u: u.relpath),
        )

    def check_header(self, path: str, st: os.stat_result) -> bool:
        if st.st_size == 0:
            self.skip(path, "empty", "empty file")
            return False
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as e:
            kind = "permission" if _denied(e) else "error"
            self.fail(path, kind, f"cannot read the file header: {e.strerror}")
            return False
        if not is_sqlite_header(head):
            self.skip(path, "not_sqlite", "no SQLite header")
            return False
        return True

    def skip(self, path: str, kind: str, reason: str) -> None:
        shown = _shown(path)
        self.skipped.append(Skipped(shown, relpath(shown, self.base), kind, reason))

    def fail(self, path: str, kind: str, reason: str) -> None:
        shown = _shown(path)
        self.unreadable.append(Unreadable(shown, relpath(shown, self.base), kind, reason))


NOT_UTF8 = "its path is not valid UTF-8 (rename it to inventory it)"


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: str) -> str:
    """A path that any report can carry: undecodable bytes written as `\\xNN`."""
    return path if _utf8(path) else os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _denied(e: OSError) -> bool:
    return e.errno in (errno.EACCES, errno.EPERM)
