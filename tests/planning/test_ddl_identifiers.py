"""The DDL rewrites keep working whatever a legacy file names its objects (hypothesis): every
name reaching SQL is quoted, and SQLite itself confirms where each rewritten reference points."""

from __future__ import annotations

import apsw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.sqlident import (
    q,
    rename_create_index,
    rename_create_table,
    rename_trigger,
    rename_virtual_table,
    rewrite_foreign_keys,
)

KEYWORDS = ["select", "order", "table", "references", "key", "on", "delete", "begin", "end"]
names = st.one_of(
    st.sampled_from(KEYWORDS),
    st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=12,
    ),
).filter(lambda s: not s.lower().startswith("sqlite_"))


def _quote(name: str, style: int) -> str:
    """How a bot may have written the name: "x", [x] or `x`."""
    if style == 1 and "]" not in name:
        return f"[{name}]"
    if style == 2:
        return "`" + name.replace("`", "``") + "`"
    return q(name)


def _distinct(*xs: str) -> bool:
    return len({x.lower() for x in xs}) == len(xs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    parent=names,
    child=names,
    col=names,
    new_parent=names,
    new_child=names,
    style=st.integers(0, 2),
)
def test_renamed_tables_and_foreign_keys_point_where_sqlite_says(
    parent, child, col, new_parent, new_child, style
):
    if not _distinct(parent, child) or not _distinct(new_parent, new_child):
        return
    if col.lower() in ("id", "rowid", "oid", "_rowid_"):
        return
    if "dropped" in (new_parent.lower(), new_child.lower()):
        return  # the name the test itself creates last
    p, c, k = (_quote(x, style) for x in (parent, child, col))
    create_parent = f"CREATE TABLE {p}(id INTEGER PRIMARY KEY)"
    create_child = (
        f"CREATE TABLE {c}(id INTEGER PRIMARY KEY, {k} INTEGER REFERENCES {p}(id) "
        f"ON DELETE CASCADE, CONSTRAINT fk2 FOREIGN KEY({k}) REFERENCES {p})"
    )
    index = f"CREATE INDEX {_quote('ix ' + col, style)} ON {c}({k})"
    conn = apsw.Connection(":memory:")
    renamed = {parent.lower(): new_parent}
    conn.execute(rename_create_table(create_parent, new_parent))
    conn.execute(
        rename_create_table(
            rewrite_foreign_keys(create_child, lambda n: renamed.get(n.lower())), new_child
        )
    )
    conn.execute(rename_create_index(index, f"{new_child}__ix", new_child))
    fks = conn.execute('SELECT "table", "from" FROM pragma_foreign_key_list(?)', (new_child,))
    assert fks.fetchall() == [(new_parent, col), (new_parent, col)]
    idx = conn.execute("SELECT name FROM pragma_index_list(?)", (new_child,)).fetchall()
    assert idx == [(f"{new_child}__ix",)]
    dropped = rewrite_foreign_keys(create_child, lambda n: None)
    conn.execute(rename_create_table(dropped, "dropped"))
    assert conn.execute("SELECT count(*) FROM pragma_foreign_key_list('dropped')").fetchone() == (
        0,
    )
    cols = [r[0] for r in conn.execute("SELECT name FROM pragma_table_info('dropped')")]
    assert cols == ["id", col]


@settings(max_examples=100, deadline=None)
@given(content=names, fts=names, new_content=names, new_fts=names, trigger=names)
def test_fts_tables_and_their_triggers_follow_renames(content, fts, new_content, new_fts, trigger):
    if not _distinct(content, fts) or not _distinct(new_content, new_fts, trigger):
        return
    if not _distinct(new_content, *(new_fts + s for s in ("_data", "_idx", "_docsize", "_config"))):
        return
    body = "body"
    legacy = apsw.Connection(":memory:")
    legacy.execute(f"CREATE TABLE {q(content)}(id INTEGER PRIMARY KEY, {body} TEXT)")
    vsql = (
        f"CREATE VIRTUAL TABLE {q(fts)} USING fts5({body}, content={_lit(content)}, "
        "content_rowid='id')"
    )
    tsql = (
        f"CREATE TRIGGER {q(trigger)} AFTER INSERT ON {q(content)} BEGIN "
        f"INSERT INTO {q(fts)}(rowid, {body}) VALUES (new.id, new.{body}); END"
    )
    legacy.execute(vsql)
    legacy.execute(tsql)
    target = apsw.Connection(":memory:")
    target.execute(f"CREATE TABLE {q(new_content)}(id INTEGER PRIMARY KEY, {body} TEXT)")
    target.execute(rename_virtual_table(vsql, new_fts, {"content": new_content}))
    target.execute(rename_trigger(tsql, trigger, {content: new_content, fts: new_fts}))
    target.execute(f"INSERT INTO {q(new_content)} VALUES (1, 'hello world')")
    hits = target.execute(f"SELECT rowid FROM {q(new_fts)}(?)", ("hello",)).fetchall()
    assert hits == [(1,)]
    target.execute(f"INSERT INTO {q(new_fts)}({q(new_fts)}, rank) VALUES ('integrity-check', 1)")


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
