"""Identifier quoting and the small DDL rewrites needed to re-home a legacy table.

Every identifier that reaches SQL goes through `q()`; nothing is formatted raw. The
rewrites tokenize only the head of a CREATE statement (up to the table or index name and,
for an index, the table it is ON), so column definitions, CHECKs and defaults are carried
over byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import apsw


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


def names_object(tok: str) -> bool:
    """Whether a token can name a table: a quoted name, or a bare word that is not an SQL
    keyword (a table called `on` is only ever written quoted; the keyword ON never names
    it). A keyword used bare as a name, which SQLite tolerates for some, is not followed."""
    if tok[:1] in '"`[':
        return True
    return bool(_WORD.fullmatch(tok)) and tok.upper() not in apsw.keywords


def tokens(sql: str) -> list[str]:
    """Every token of a statement (comments and whitespace dropped; quoted names whole)."""
    out, i = [], 0
    while True:
        tok, _, i = _token(sql, i)
        if not tok:
            return out
        out.append(tok)


def virtual_module(sql: str) -> str:
    """`CREATE VIRTUAL TABLE x USING fts5(...)` -> `fts5` ('' when it is not one)."""
    toks = tokens(sql)
    up = [t.upper() for t in toks]
    if "USING" not in up:
        return ""
    i = up.index("USING")
    return unquote(toks[i + 1]) if i + 1 < len(toks) else ""


def fts_options(sql: str) -> dict[str, str]:
    """The `key=value` arguments of a virtual table declaration (`content`, `content_rowid`,
    `tokenize`...), keys lowercased, values unquoted."""
    toks = tokens(sql)
    out: dict[str, str] = {}
    for j in range(1, len(toks) - 1):
        if toks[j] == "=" and toks[j - 1][:1] not in "\"'`[":
            out[toks[j - 1].lower()] = unquote(toks[j + 1])
    return out


def _spans(sql: str, i: int = 0) -> list[tuple[str, int, int]]:
    out = []
    while True:
        tok, start, end = _token(sql, i)
        if not tok:
            return out
        out.append((tok, start, end))
        i = end


_FK_ACTIONS = {"SET", "NULL", "DEFAULT", "CASCADE", "RESTRICT", "NO", "ACTION"}


def _fk_clause_end(toks: list[tuple[str, int, int]], j: int) -> int:
    """Index of the first token after a `REFERENCES parent [(cols)] [actions]` clause at j."""
    j += 2  # REFERENCES name
    if j < len(toks) and toks[j][0] == ".":
        j += 2  # schema-qualified
    if j < len(toks) and toks[j][0] == "(":
        depth = 0
        while j < len(toks):
            depth += {"(": 1, ")": -1}.get(toks[j][0], 0)
            j += 1
            if depth == 0:
                break
    while j < len(toks):
        w = toks[j][0].upper()
        if w == "ON" and j + 1 < len(toks) and toks[j + 1][0].upper() in ("DELETE", "UPDATE"):
            j += 2
            while j < len(toks) and toks[j][0].upper() in _FK_ACTIONS:
                j += 1
        elif w == "MATCH":
            j += 2
        elif w == "NOT" and j + 1 < len(toks) and toks[j + 1][0].upper() == "DEFERRABLE":
            j += 1
        elif w == "DEFERRABLE":
            j += 1
            if j < len(toks) and toks[j][0].upper() == "INITIALLY":
                j += 2
        else:
            break
    return j


def rewrite_foreign_keys(sql: str, parent: Callable[[str], str | None]) -> str:
    """Point each FOREIGN KEY of a CREATE TABLE at `parent(old_name)`, or drop the whole
    clause (and its CONSTRAINT name, and the comma of a table constraint) when it returns
    None. Everything else is kept byte for byte."""
    toks = _spans(sql)
    edits: list[tuple[int, int, str]] = []
    for j, (tok, _s, _e) in enumerate(toks):
        if tok.upper() != "REFERENCES" or j + 1 >= len(toks):
            continue
        name_j = j + 1
        if name_j + 2 < len(toks) and toks[name_j + 1][0] == ".":
            name_j += 2
        new = parent(unquote(toks[name_j][0]))
        if new is not None:
            edits.append((toks[j + 1][1], toks[name_j][2], q(new)))
            continue
        start_j = j
        # FOREIGN KEY (cols) REFERENCES ...: a table constraint
        k = j - 1
        if toks[k][0] == ")":
            while k > 0 and toks[k][0] != "(":
                k -= 1
            if k >= 2 and toks[k - 1][0].upper() == "KEY" and toks[k - 2][0].upper() == "FOREIGN":
                start_j = k - 2
        if start_j >= 2 and toks[start_j - 2][0].upper() == "CONSTRAINT":
            start_j -= 2
        end_j = _fk_clause_end(toks, j)
        start = toks[start_j][1]
        end = toks[end_j - 1][2]
        if start_j != j and toks[start_j - 1][0] == ",":  # table constraint: its comma too
            start = toks[start_j - 1][1]
        edits.append((start, end, ""))
    for start, end, text in sorted(edits, reverse=True):
        sql = sql[:start] + text + sql[end:]
    return sql


def rename_virtual_table(sql: str, new_name: str, options: dict[str, str]) -> str:
    """`CREATE VIRTUAL TABLE old USING m(..., key=value)` with a new name and some option
    values replaced (`content` follows a renamed content table)."""
    toks = _spans(sql)
    up = [t[0].upper() for t in toks]
    using = up.index("USING")
    out = "CREATE VIRTUAL TABLE IF NOT EXISTS " + q(new_name) + " " + sql[toks[using][1] :]
    shift = len(out) - (len(sql) - toks[using][1])
    edits = []
    for j in range(using + 1, len(toks) - 1):
        tok = toks[j - 1][0] if j else ""
        if toks[j][0] == "=" and tok.lower() in options and tok[:1] not in "\"'`[":
            _, s, e = toks[j + 1]
            edits.append((s + shift - toks[using][1], e + shift - toks[using][1]))
            edits[-1] = (*edits[-1], lit(options[tok.lower()]))
    for s, e, text in sorted(edits, reverse=True):
        out = out[:s] + text + out[e:]
    return out


def rename_trigger(sql: str, new_name: str, renames: dict[str, str]) -> str:
    """A trigger re-homed: its own name replaced, and every identifier naming a renamed
    table (case-insensitively) replaced, in the head and the body. An FTS table's hidden
    column shares the table's name, so it follows the rename, as it must."""
    toks = _spans(sql)
    low = {k.lower(): v for k, v in renames.items()}
    i = _skip_if_not_exists(sql, _expect_words(sql, _expect_words(sql, 0, "CREATE"), "TRIGGER"))
    _, name_end = _name_span(sql, i)
    edits = []
    for tok, s, e in toks:
        if s < name_end or tok[:1] == "'":
            continue
        new = low.get(unquote(tok).lower())
        if new is not None and names_object(tok):
            edits.append((s, e, q(new)))
    body = sql[name_end:]
    for s, e, text in sorted(edits, reverse=True):
        body = body[: s - name_end] + text + body[e - name_end :]
    return "CREATE TRIGGER IF NOT EXISTS " + q(new_name) + body


def created_name(sql: str) -> str:
    """The (unqualified, unquoted) name a CREATE statement gives its object."""
    toks = _spans(sql)
    j = 1
    while j < len(toks) and toks[j][0].upper() in ("UNIQUE", "TEMP", "TEMPORARY", "VIRTUAL"):
        j += 1
    j += 1  # TABLE / INDEX / TRIGGER / VIEW
    if j + 2 < len(toks) and toks[j][0].upper() == "IF":
        j += 3
    if j + 2 < len(toks) and toks[j + 1][0] == ".":
        j += 2
    return unquote(toks[j][0])


def index_terms(sql: str) -> list[str]:
    """The terms of a `CREATE INDEX ... ON t(term, ...)`, each as written (a column or
    an expression, with its COLLATE; ASC/DESC dropped): the REPLACE probe of a unique
    index on expressions evaluates the same text (cdc/capture/triggers.py)."""
    toks = _spans(sql)
    j = next((n for n, t in enumerate(toks) if t[0].upper() == "ON"), None)
    if j is None:
        return []
    j = next((n for n in range(j, len(toks)) if toks[n][0] == "("), None)
    if j is None:
        return []
    terms, depth, start, last = [], 0, toks[j][2], None
    for tok, _s, e in toks[j + 1 :]:
        if tok == "(":
            depth += 1
        elif tok == ")" and depth:
            depth -= 1
        elif depth == 0 and tok in (",", ")"):
            terms.append(sql[start:last].strip())
            if tok == ")":
                break
            start = e
            continue
        last = e
    out = []
    for t in terms:
        words = _spans(t)
        if words and words[-1][0].upper() in ("ASC", "DESC"):
            t = t[: words[-1][1]].strip()
        out.append(t)
    return out
