"""An FTS table through the whole life of a stage, with a real daemon: re-created and rebuilt
in the target, kept exact while the bots write the legacy file, kept exact by its own
triggers once the bots write the target after cutover, and written back on rollback without
corrupting the legacy index."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from tests.conftest import cdc_cmd, make_db, wait_until, write_config

DOCS = """
CREATE TABLE docs(id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT, body TEXT, tag TEXT UNIQUE);
CREATE VIRTUAL TABLE docs_fts USING fts5(title, body, content='docs', content_rowid='id');
CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN
  INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END;
CREATE TRIGGER docs_ad AFTER DELETE ON docs BEGIN
  INSERT INTO docs_fts(docs_fts, rowid, title, body) VALUES ('delete', old.id, old.title, old.body);
END;
CREATE TRIGGER docs_au AFTER UPDATE ON docs BEGIN
  INSERT INTO docs_fts(docs_fts, rowid, title, body) VALUES ('delete', old.id, old.title, old.body);
  INSERT INTO docs_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
END;
CREATE TABLE kv(k TEXT PRIMARY KEY, v);
"""
CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "notes"
path = "notes.db"
[[rules]]
table = "*"
target = "core"
[daemon]
poll_interval = 0.05
trim_interval = 0.2
[verify]
continuous = false
"""
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]


def _bot(path: Path):
    c = sqlite3.connect(path, isolation_level=None, timeout=10)
    return contextlib.closing(c)


def _check(path: Path) -> dict[str, list[int]]:
    """The FTS index is exact for its content (integrity-check), and what it finds per word."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as c:
        # a command, not a write: it raises if the index and the content disagree
        c.execute("INSERT INTO docs_fts(docs_fts, rank) VALUES ('integrity-check', 1)")
        c.rollback()
        found = {
            w: [r[0] for r in c.execute("SELECT rowid FROM docs_fts(?) ORDER BY rowid", (w,))]
            for w in WORDS
        }
        by_content = {
            w: [
                r[0]
                for r in c.execute(
                    "SELECT id FROM docs WHERE (' ' || title || ' ' || body || ' ') "
                    "LIKE '% ' || ? || ' %' ORDER BY id",
                    (w,),
                )
            ]
            for w in WORDS
        }
    assert found == by_content
    return found


def test_an_fts_table_follows_its_stage_through_cutover_and_rollback(tmp_path, daemons):
    legacy = make_db(tmp_path / "notes.db", DOCS)
    with _bot(legacy) as b:
        for i in range(40):
            b.execute(
                "INSERT INTO docs(title, body, tag) VALUES (?, ?, ?)",
                (WORDS[i % 6], f"{WORDS[(i + 1) % 6]} {WORDS[(i + 2) % 6]}", f"t{i}"),
            )
    cfg = write_config(tmp_path, CONFIG)
    assert cdc_cmd("install", "-c", str(cfg)).returncode == 0
    d = daemons(cfg)
    with _bot(legacy) as b:  # the bots keep writing while the initial copy runs
        for i in range(40, 80):
            b.execute(
                "INSERT INTO docs(title, body, tag) VALUES (?, ?, ?)",
                (WORDS[i % 6], WORDS[(i + 3) % 6], f"t{i}"),
            )
        b.execute("UPDATE docs SET body = 'echo echo' WHERE id % 7 = 0")
        b.execute("DELETE FROM docs WHERE id % 5 = 0")
    d.wait_synced()
    core = tmp_path / "out" / "core.db"
    assert _check(core) == _check(legacy)

    r = cdc_cmd("cutover", "core", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    with _bot(core) as b:  # a switched bot: the target's own triggers keep its index
        b.execute("UPDATE docs SET title = 'foxtrot' WHERE id < 10")
        b.execute("DELETE FROM docs WHERE id BETWEEN 20 AND 25")
        b.execute("INSERT INTO docs(title, body, tag) VALUES ('alpha', 'bravo', 'new')")
    after = _check(core)
    assert 1 in after["foxtrot"] and 21 not in after["alpha"] + after["bravo"]

    r = cdc_cmd("rollback", "core", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    # written back with REPLACE (docs has a UNIQUE): the legacy DELETE triggers fired too
    assert _check(legacy) == after
    wait_until(lambda: _check(core) == after, what="target still equal after rollback")
