"""`cdc inventory`, finding and reading: databases found by their header, not their name;
symlinks, odd paths, unreadable, corrupt and hot-journal files reported rather than fatal;
nothing written while reading. Real files only."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import msgspec
import pytest

from cdc.errors import ConfigError
from cdc.planning.discover import discover
from cdc.planning.inventory_format import Inventory
from cdc.planning.inventory_report import (
    JSON,
    run_inventory,
)
from cdc.planning.survey import take_inventory
from tests.conftest import make_db
from tests.support.planning import db_named, snapshot, tables_of

# -- discovery --------------------------------------------------------------------------------


def test_databases_are_found_by_header_not_by_name(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    make_db(root / "real.txt", "CREATE TABLE a(x);")
    make_db(root / "noext", "CREATE TABLE b(x);")
    make_db(root / "sub" / "deep" / "c.sqlite", "CREATE TABLE c(x);")
    make_db(root / "._apple.db", "CREATE TABLE d(x);")  # AppleDouble, even with a header
    (root / "notes.db").write_text("this is text, not SQLite\n")
    (root / "empty.db").write_bytes(b"")
    (root / "real.txt-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(28))
    (root / "x.db-journal").write_bytes(b"SQLite format 3\x00")
    (root / "x.db-shm").write_bytes(bytes(64))
    os.mkfifo(root / "pipe.db")  # opening it would block: must be skipped unread
    (root / "sub" / "loop").symlink_to("..", target_is_directory=True)
    (root / "again.db").symlink_to(root / "noext")
    (root / "dangling.db").symlink_to(root / "nowhere")

    found = discover([root])

    assert found.base == str(root)
    rel = [os.path.relpath(p, root) for p in found.databases]
    assert rel == ["noext", "real.txt", "sub/deep/c.sqlite"]
    kinds = {s.relpath: s.kind for s in found.skipped}
    assert kinds == {
        "._apple.db": "apple_double",
        "again.db": "duplicate",
        "dangling.db": "symlink",
        "empty.db": "empty",
        "notes.db": "not_sqlite",
        "pipe.db": "special",
        "real.txt-wal": "side_file",
        "sub/loop": "duplicate",
        "x.db-journal": "side_file",
        "x.db-shm": "side_file",
    }
    reasons = {s.relpath: s.reason for s in found.skipped}
    assert reasons["again.db"] == "same file as noext"
    assert reasons["notes.db"] == "no SQLite header"
    assert found.unreadable == []


def test_directory_symlinks_are_followed_once(tmp_path: Path) -> None:
    make_db(tmp_path / "real" / "a.db", "CREATE TABLE a(x);")
    make_db(tmp_path / "elsewhere" / "b.db", "CREATE TABLE b(x);")
    root = tmp_path / "root"
    root.mkdir()
    (root / "0link").symlink_to(tmp_path / "real", target_is_directory=True)
    (root / "real").symlink_to(tmp_path / "real", target_is_directory=True)
    (root / "z").mkdir()
    (root / "z" / "ext").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "back").symlink_to(root, target_is_directory=True)  # a loop

    found = discover([root])

    assert [os.path.relpath(p, root) for p in found.databases] == ["0link/a.db", "z/ext/b.db"]
    assert {s.relpath for s in found.skipped} == {"real", "z/ext/back"}


def test_several_dirs_share_their_common_parent_as_base(tmp_path: Path) -> None:
    make_db(tmp_path / "a" / "one.db", "CREATE TABLE t(x);")
    make_db(tmp_path / "b" / "c" / "two.db", "CREATE TABLE t(x);")
    inv = take_inventory([tmp_path / "a", tmp_path / "b" / "c"])
    assert inv.base == str(tmp_path)
    assert [d.relpath for d in inv.databases] == ["a/one.db", "b/c/two.db"]
    assert all(Path(d.path).is_absolute() for d in inv.databases)


def test_paths_that_are_not_utf8_are_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    bad = os.fsdecode(b"caf\xe9.db")
    make_db(root / bad, "CREATE TABLE t(x);")
    make_db(root / os.fsdecode(b"dir\xfe") / "inner.db", "CREATE TABLE t(x);")
    make_db(root / "good.db", "CREATE TABLE t(x);")
    run = run_inventory([root], tmp_path / "out")
    assert [d.relpath for d in run.inventory.databases] == ["good.db"]
    assert [(u.relpath, u.kind) for u in run.inventory.unreadable] == [
        ("caf\\xe9.db", "name"),
        ("dir\\xfe", "name"),
    ]
    assert msgspec.json.decode((tmp_path / "out" / JSON).read_bytes(), type=Inventory)


def test_a_missing_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        discover([tmp_path / "nope"])


# -- unreadable databases -----------------------------------------------------------------------


def test_corrupt_databases_are_reported_with_the_reason(tmp_path: Path) -> None:
    bad = make_db(tmp_path / "bad.db", "CREATE TABLE t(x); CREATE INDEX i ON t(x);")
    with sqlite3.connect(bad) as c:
        c.executemany("INSERT INTO t VALUES (?)", [(os.urandom(500),) for _ in range(200)])
    c.close()
    with open(bad, "r+b") as f:  # keep page 1 (header, schema); overwrite the rest
        f.seek(4096)
        f.write(b"\xa5" * (bad.stat().st_size - 4096))
    (tmp_path / "headeronly.db").write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    make_db(tmp_path / "fine.db", "CREATE TABLE ok(x);")

    inv = take_inventory([tmp_path])

    assert [d.relpath for d in inv.databases] == ["fine.db"]
    reasons = {u.relpath: (u.kind, u.reason) for u in inv.unreadable}
    assert reasons["bad.db"][0] == "corrupt"
    assert "quick_check" in reasons["bad.db"][1] or "malformed" in reasons["bad.db"][1]
    assert reasons["headeronly.db"][0] == "corrupt"


def inventory_as_nobody(root: Path) -> Inventory:
    """Root reads a chmod 000 file anyway: as root, survey from a child process that has
    dropped to `nobody` (a real permission check, no mock)."""
    if os.geteuid() != 0:
        return take_inventory([root])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            data = msgspec.json.encode(take_inventory([root]))
        except BaseException as e:  # reported to the parent
            data = b"!" + repr(e).encode()
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    assert not data.startswith(b"!"), data
    return msgspec.json.decode(data, type=Inventory)


def test_unreadable_files_and_folders_are_reported() -> None:
    with tempfile.TemporaryDirectory() as tmp:  # not under pytest's root-only tmp folder
        root = Path(tmp) / "legacy"
        make_db(root / "fine.db", "CREATE TABLE t(x);")
        locked = make_db(root / "locked.db", "CREATE TABLE t(x);")
        hidden = make_db(root / "secret" / "b.db", "CREATE TABLE t(x);").parent
        Path(tmp).chmod(0o755)  # explicit: an in-process `cdc` command set umask 077
        root.chmod(0o755)
        (root / "fine.db").chmod(0o644)
        locked.chmod(0)
        hidden.chmod(0)
        try:
            inv = inventory_as_nobody(root)
        finally:
            locked.chmod(0o644)
            hidden.chmod(0o755)
    assert [d.relpath for d in inv.databases] == ["fine.db"]
    assert [(u.relpath, u.kind) for u in inv.unreadable] == [
        ("locked.db", "permission"),
        ("secret", "permission"),
    ]
    assert "Permission denied" in inv.unreadable[0].reason


def test_a_hot_journal_is_reported_not_rolled_back(tmp_path: Path) -> None:
    src = tmp_path / "work" / "h.db"
    make_db(src, "CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    c = sqlite3.connect(src, isolation_level=None)
    c.execute("PRAGMA cache_size=2")  # spill uncommitted pages into the file
    c.execute("BEGIN")
    c.execute(
        "INSERT INTO t SELECT randomblob(4000) FROM (SELECT 1 FROM pragma_table_list) "
        "JOIN (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i<300) "
        "SELECT i FROM r)"
    )
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(src, crashed / "h.db")  # what a writer killed mid-transaction leaves
    shutil.copy(str(src) + "-journal", crashed / "h.db-journal")
    c.execute("ROLLBACK")
    c.close()
    before = snapshot(crashed)

    inv = take_inventory([crashed])

    assert [(u.relpath, u.kind) for u in inv.unreadable] == [("h.db", "hot_journal")]
    assert snapshot(crashed) == before


def test_reading_creates_no_side_files_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    make_db(root / "rollback.db", "CREATE TABLE t(x); INSERT INTO t VALUES (1),(2);")
    make_db(root / "wal_closed.db", "CREATE TABLE t(x); INSERT INTO t VALUES (1);", wal=True)
    before = snapshot(root)
    assert sorted(before) == ["rollback.db", "wal_closed.db"]

    inv = take_inventory([root])

    assert snapshot(root) == before  # no -wal, -shm or -journal appeared
    wal = db_named(inv, "wal_closed.db")
    assert (wal.journal_mode, wal.wal_file, wal.wal_size) == ("wal", False, None)
    assert db_named(inv, "rollback.db").journal_mode == "delete"
    assert tables_of(inv, "rollback.db")["t"].rows == 2


def test_rows_still_in_the_wal_are_counted(tmp_path: Path) -> None:
    path = make_db(tmp_path / "live.db", "CREATE TABLE t(x);", wal=True)
    bot = sqlite3.connect(path, isolation_level=None)  # keeps the -wal from being folded in
    try:
        bot.execute("PRAGMA wal_autocheckpoint=0")
        bot.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
        inv = take_inventory([tmp_path])
    finally:
        bot.close()
    db = db_named(inv, "live.db")
    assert db.wal_file and db.wal_size and db.wal_size > 0
    assert tables_of(inv, "live.db")["t"].rows == 50
