"""Identifier quoting and the small DDL rewrites needed to re-home a legacy table.

Every identifier that reaches SQL goes through `q()`; nothing is formatted raw. The
rewrites tokenize only the head of a CREATE statement (up to the table or index name and,
for an index, the table it is ON), so column definitions, CHECKs and defaults are carried
over byte for byte.
"""

from __future__ import annotations

import re


def q(name: str) -> str:
    """Quote an identifier for SQLite (double quotes, embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    """Quote a string literal (used only for constants we generate, e.g. in triggers)."""
    return "'" + value.replace("'", "''") + "'"


_WS = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)+", re.S)
_WORD = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")


def _skip_ws(sql: str, i: int) -> int:
    m = _WS.match(sql, i)
    return m.end() if m else i


def _token(sql: str, i: int) -> tuple[str, int, int]:
    """Next token after whitespace: (text, start, end). Quoted identifiers are one token."""
    i = _skip_ws(sql, i)
    if i >= len(sql):
        return "", i, i
    c = sql[i]
    if c in "\"'`":
        j = i + 1
        while j < len(sql):
            if sql[j] == c:
                if j + 1 < len(sql) and sql[j + 1] == c:
                    j += 2
                    continue
                return sql[i : j + 1], i, j + 1
            j += 1
        raise ValueError(f"unterminated quote in: {sql[:60]}")
    if c == "[":
        j = sql.index("]", i)
        return sql[i : j + 1], i, j + 1
    m = _WORD.match(sql, i)
    if m:
        return m.group(0), i, m.end()
    return c, i, i + 1


def _expect_words(sql: str, i: int, *words: str) -> int:
    for w in words:
        tok, _, end = _token(sql, i)
        if tok.upper() != w:
            raise ValueError(f"expected {w} at {i} in: {sql[:80]}")
        i = end
    return i


def _name_span(sql: str, i: int) -> tuple[int, int]:
    """Span of a possibly schema-qualified name starting after position i."""
    _, start, end = _token(sql, i)
    nxt, _, nend = _token(sql, end)
    if nxt == ".":
        _, _, end = _token(sql, nend)
    return start, end


def _skip_if_not_exists(sql: str, i: int) -> int:
    tok, _, end = _token(sql, i)
    if tok.upper() == "IF":
        return _expect_words(sql, end, "NOT", "EXISTS")
    return i


def rename_create_table(sql: str, new_name: str) -> str:
    """`CREATE TABLE [IF NOT EXISTS] old (...)` -> `CREATE TABLE IF NOT EXISTS "new" (...)`."""
    i = _expect_words(sql, 0, "CREATE")
    tok, _, end = _token(sql, i)
    if tok.upper() in ("TEMP", "TEMPORARY"):
        i = end
    i = _expect_words(sql, i, "TABLE")
    i = _skip_if_not_exists(sql, i)
    start, end = _name_span(sql, i)
    return "CREATE TABLE IF NOT EXISTS " + q(new_name) + sql[end:]


def rename_create_index(sql: str, new_index: str, new_table: str) -> str:
    """Rewrite `CREATE [UNIQUE] INDEX name ON table (...)` for a renamed table."""
    i = _expect_words(sql, 0, "CREATE")
    tok, _, end = _token(sql, i)
    unique = tok.upper() == "UNIQUE"
    if unique:
        i = end
    i = _expect_words(sql, i, "INDEX")
    i = _skip_if_not_exists(sql, i)
    _, end = _name_span(sql, i)
    i = _expect_words(sql, end, "ON")
    _, tend = _name_span(sql, i)
    head = "CREATE UNIQUE INDEX" if unique else "CREATE INDEX"
    return f"{head} IF NOT EXISTS {q(new_index)} ON {q(new_table)}{sql[tend:]}"


def unquote(token: str) -> str:
    if token[:1] in "\"'`":
        return token[1:-1].replace(token[0] * 2, token[0])
    if token[:1] == "[":
        return token[1:-1]
    return token


def index_name(sql: str) -> str:
    """The (unqualified, unquoted) name an index is created under."""
    i = _expect_words(sql, 0, "CREATE")
    tok, _, end = _token(sql, i)
    if tok.upper() == "UNIQUE":
        i = end
    i = _skip_if_not_exists(sql, _expect_words(sql, i, "INDEX"))
    tok, _, end = _token(sql, i)
    nxt, _, nend = _token(sql, end)
    if nxt == ".":
        tok, _, _ = _token(sql, nend)
    return unquote(tok)
