"""The SQL a Python module runs, and the tables each statement touches.

SQL is found where it is run: the string passed to `execute`, `executemany`,
`executescript` (any receiver), directly, through a name bound to a string in the module,
or as an f-string (its literal parts; a table name interpolated makes the statement
"built at run time"). Each statement is parsed by sqlglot, so a table is a table and not
a word in a comment or a value; what sqlglot cannot parse is kept as unparsed, never
dropped. The connection the call runs on is traced within the module when it can be
(`conn = sqlite3.connect(DB)`, `with ... as conn`, `self.conn`), so the statement's
tables can be matched to that one file instead of every file with such a table.
"""

from __future__ import annotations

import ast
import logging
import re

import msgspec
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from cdc.application.path_refs import Literal, connect_arg
from cdc.application.pyscope import Folded, Module

EXECUTES = {"execute", "executemany", "executescript", "execute_fetchall", "execute_insert"}
RUNTIME = "__cdc_rt_"  # stands for an interpolated piece of an f-string
_NO_TABLES = {"PRAGMA", "VACUUM", "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"}
_NO_TABLES |= {"ANALYZE", "REINDEX", "ATTACH", "DETACH"}
_BEFORE_TABLE = {"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "ON", "EXISTS"}


class SqlTable(msgspec.Struct, frozen=True):
    name: str
    op: str  # "read", "write", "create", "create if not exists", "index", "drop", "alter"
    columns: list[str] = []  # a CREATE TABLE's column names, lowercased


class SqlSite(msgspec.Struct, frozen=True):
    """One statement found in code, with what the module tells about where it runs."""

    line: int
    end_line: int
    col: int
    call_line: int
    text: str
    tables: list[SqlTable] = []
    runtime: bool = False  # a table name is interpolated
    unparsed: str | None = None  # sqlglot's error, for a statement it could not read
    conn: Folded | None = None  # the path the call site connects to, when traced
    literal: Literal | None = None  # the single string literal holding it (for --fix)
    offset: int = 0  # where the statement starts inside the literal's value
    length: int = 0


def find_sql(mod: Module) -> list[SqlSite]:
    seen: dict[ast.AST, tuple[ast.Call, list[Folded | None]]] = {}
    for call in mod.nodes:
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        if call.func.attr not in EXECUTES:
            continue
        arg = (
            call.args[0]
            if call.args
            else next((k.value for k in call.keywords if k.arg == "sql"), None)
        )
        node = _sql_node(mod, arg)
        if node is None:
            continue
        seen.setdefault(node, (call, []))[1].append(_conn_of(mod, call.func.value))
    sites: list[SqlSite] = []
    for node, (call, conns) in seen.items():
        paths = set(conns)
        conn = paths.pop() if len(paths) == 1 else None
        sites.extend(_statements(mod, node, call, conn))
    return sorted(sites, key=lambda s: (s.line, s.col, s.offset))


def _sql_node(mod: Module, arg: ast.AST | None, depth: int = 0) -> ast.AST | None:
    """The expression holding the SQL text: a literal, an f-string, a `+` of them, or
    the value a name is bound to in this module."""
    if arg is None or depth > 6:
        return None
    if isinstance(arg, ast.Constant):
        return arg if isinstance(arg.value, str) else None
    if isinstance(arg, ast.JoinedStr):
        return arg
    if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):
        return arg if _text(mod, arg) is not None else None
    if isinstance(arg, ast.Name):
        found = mod.lookup(arg.id, arg)
        return _sql_node(mod, mod.value_of(found[1]), depth + 1) if found else None
    if isinstance(arg, ast.Attribute):
        return _sql_node(mod, mod.class_attr(arg), depth + 1)
    return None


def _text(mod: Module, node: ast.AST, count: list[str] | None = None) -> str | None:
    """The SQL text; each piece only known at run time becomes a placeholder identifier,
    its expression kept in `count` (placeholder i stands for count[i])."""
    count = count if count is not None else []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = ""
        for v in node.values:
            if isinstance(v, ast.Constant):
                out += str(v.value)
            else:
                out += f"{RUNTIME}{len(count)}__"
                count.append(mod.segment(v.value))
        return out
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(mod, node.left, count), _text(mod, node.right, count)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Name):
        found = mod.lookup(node.id, node)
        value = mod.value_of(found[1]) if found else None
        if isinstance(value, ast.Constant | ast.JoinedStr | ast.BinOp):
            return _text(mod, value, count)
        count.append(node.id)
        return f"{RUNTIME}{len(count) - 1}__"
    return None


def _conn_of(mod: Module, recv: ast.AST, depth: int = 0) -> Folded | None:
    """The path the receiver of `.execute` was opened on, traced within the module."""
    if depth > 8 or recv is None:
        return None
    if isinstance(recv, ast.Await):
        return _conn_of(mod, recv.value, depth + 1)
    if isinstance(recv, ast.Call):
        arg = connect_arg(mod, recv)
        if arg is not None:
            return mod.fold(arg)
        if isinstance(recv.func, ast.Attribute) and recv.func.attr == "cursor":
            return _conn_of(mod, recv.func.value, depth + 1)
        return None
    if isinstance(recv, ast.Name):
        found = mod.lookup(recv.id, recv)
        return _conn_of(mod, mod.value_of(found[1]), depth + 1) if found else None
    if isinstance(recv, ast.Attribute):
        return _conn_of(mod, mod.class_attr(recv), depth + 1)
    return None


def _statements(mod: Module, node: ast.AST, call: ast.Call, conn: Folded | None) -> list[SqlSite]:
    pieces: list[str] = []
    text = _text(mod, node, pieces) or ""
    single = isinstance(node, ast.Constant)
    lit = (
        Literal(node.lineno, mod.char_col(node), mod.segment(node), node.value) if single else None
    )
    multiline = single and "\n" in mod.segment(node)
    out = []
    for start, chunk in split_statements(text):
        line = node.lineno + (text[:start].count("\n") if multiline else 0)
        tables, runtime, error = tables_of(chunk)
        out.append(
            SqlSite(
                line=line,
                end_line=line + (chunk.count("\n") if multiline else 0),
                col=mod.char_col(node),
                call_line=call.lineno,
                text=_shown(" ".join(chunk.split()), pieces),
                tables=tables,
                runtime=runtime,
                unparsed=error,
                conn=conn,
                literal=lit,
                offset=start,
                length=len(chunk),
            )
        )
    return out


def _shown(sql: str, pieces: list[str]) -> str:
    """The statement as written: each placeholder back to `{expression}`."""
    for i in reversed(range(len(pieces))):
        sql = sql.replace(f"{RUNTIME}{i}__", "{" + pieces[i] + "}")
    return sql


def split_statements(text: str) -> list[tuple[int, str]]:
    """(offset, statement) for each statement in a script, split on the `;` tokens
    outside a trigger's BEGIN ... END; a text the tokenizer refuses is one statement."""
    try:
        tokens = sqlglot.tokenize(text, read="sqlite")
    except SqlglotError:
        return [(0, text)] if text.strip() else []
    out, start, depth = [], None, 0
    for tk in tokens:
        if start is None:
            if tk.token_type == TokenType.SEMICOLON:
                continue
            start = tk.start
        if tk.token_type == TokenType.BEGIN and _is_trigger(text[start : tk.start]):
            depth += 1
        elif tk.token_type == TokenType.END and depth:
            depth -= 1
        elif tk.token_type == TokenType.SEMICOLON and not depth:
            out.append((start, text[start : tk.start]))
            start = None
    if start is not None:
        out.append((start, text[start:].rstrip()))
    return [(s, c) for s, c in out if c.strip()]


def _is_trigger(head: str) -> bool:
    words = head.upper().split()
    return len(words) > 1 and words[0] == "CREATE" and "TRIGGER" in words[:4]


def tables_of(sql: str) -> tuple[list[SqlTable], bool, str | None]:
    """(tables, a table name interpolated?, parse error) of one statement."""
    log = logging.getLogger("sqlglot")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except SqlglotError as e:
        return [], False, _said(e)
    finally:
        log.setLevel(level)
    if isinstance(tree, exp.Command | exp.Block) or tree is None:
        return _command_tables(sql)
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    written = _written(tree)
    out: dict[str, SqlTable] = {}
    runtime = False
    for t in tree.find_all(exp.Table):
        name = t.name
        if not name or name.lower() in ctes or name.lower().startswith("sqlite_"):
            continue
        if name.startswith(RUNTIME):
            runtime = True
            continue
        op = _op(tree, t, written)
        cols = _columns(tree) if op.startswith("create") else []
        out.setdefault(name.lower(), SqlTable(name, op, cols))
    return list(out.values()), runtime, None


def _said(e: SqlglotError) -> str:
    first = (getattr(e, "errors", None) or [{}])[0]
    if first.get("description"):
        return f"{first['description']} (line {first.get('line')}, col {first.get('col')})"
    return re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(e).split()))[:200]


def _written(tree: exp.Expression) -> exp.Expression | None:
    this = tree.this if isinstance(tree, exp.Insert | exp.Update | exp.Delete) else None
    return this.this if isinstance(this, exp.Schema) else this


def _op(tree: exp.Expression, table: exp.Table, written: exp.Expression | None) -> str:
    if isinstance(tree, exp.Create):
        kind = (tree.args.get("kind") or "").upper()
        if kind == "INDEX":
            return "index"
        if kind == "TABLE" and table.find_ancestor(exp.Select) is None:
            return "create if not exists" if tree.args.get("exists") else "create"
        return "read"
    if isinstance(tree, exp.Drop):
        return "drop"
    if isinstance(tree, exp.Alter):
        return "alter"
    return "write" if table is written else "read"


def _columns(tree: exp.Expression) -> list[str]:
    schema = tree.this if isinstance(tree.this, exp.Schema) else None
    if schema is None:
        return []
    return [c.name.lower() for c in schema.expressions if isinstance(c, exp.ColumnDef)]


def _command_tables(sql: str) -> tuple[list[SqlTable], bool, str | None]:
    """What sqlglot keeps as a raw command: ALTER TABLE and CREATE TRIGGER/VIEW name their
    tables after known keywords; PRAGMA and friends touch none; anything else is unread."""
    try:
        tokens = sqlglot.tokenize(sql, read="sqlite")
    except SqlglotError as e:
        return [], False, str(e)[:200]
    words = [t.text.upper() for t in tokens[:3]]
    if words and words[0] in _NO_TABLES:
        return [], False, None
    if not words or words[0] not in ("ALTER", "CREATE"):
        return [], False, "sqlglot kept it as an unparsed command"
    op = "alter" if words[0] == "ALTER" else "read"
    out: dict[str, SqlTable] = {}
    runtime = False
    for prev, tk in zip(tokens, tokens[1:], strict=False):
        if prev.text.upper() in _BEFORE_TABLE and tk.token_type in (
            TokenType.VAR,
            TokenType.IDENTIFIER,
        ):
            if tk.text.startswith(RUNTIME):
                runtime = True
            elif not tk.text.lower().startswith("sqlite_"):
                out.setdefault(tk.text.lower(), SqlTable(tk.text, op))
    return list(out.values()), runtime, None
