"""Every place a Python module names a database file, found in its syntax tree.

A database path is found from the string that names the file (`"trading.db"`, or an
f-string ending in `.db`): from there it climbs the expression that builds the path
(`Path(...)`, `/` joins, `os.path.join`, `os.getenv` defaults, `.resolve()`...), so each
file name is reported once, where it is written, which is also the one place `--fix` can
change it. A module constant that holds only part of a path is followed to where it is
joined. Separately, every `sqlite3.connect`, `aiosqlite.connect` and `apsw.Connection`
whose argument is not a written path is a site to review: the path comes from a variable,
traced (assignment, parameter default, environment default) as far as the module tells.
Matching to legacy files is not done here (`refs` does it), so this module needs no plan.
"""

from __future__ import annotations

import ast

import msgspec

from cdc.application.pyscope import (
    _SAME_METHODS,
    _SAME_PATH,
    Folded,
    Module,
    _default_of,
    db_like,
    tail_parts,
)

CONNECTS = {
    "sqlite3.connect",
    "sqlite3.dbapi2.connect",
    "aiosqlite.connect",
    "apsw.Connection",
}
_ARG_NAMES = ("database", "filename")
_BUILDERS = {"os.path.join", "os.path.abspath", "os.path.expanduser", "os.getenv"}
_BUILDERS |= {"os.environ.get", "os.path.dirname"} | _SAME_PATH
_PATH_TYPES = {"Path", "PurePath", "PosixPath", "WindowsPath", "PurePosixPath"}
_METHODS = _SAME_METHODS | {"joinpath", "with_name"}


class Literal(msgspec.Struct, frozen=True):
    """The one string literal that holds a path's file name: what `--fix` may change."""

    line: int
    col: int  # in characters, as libcst counts
    raw: str  # as written, quotes and prefix included
    value: str


class PathSite(msgspec.Struct, frozen=True):
    """A database path (or a connect call's argument) as the module writes it."""

    line: int
    end_line: int
    col: int
    stmt_line: int
    kind: str  # "path" or "connect"
    shape: str  # "connect", "getenv default", "default argument", "constant", "f-string", ...
    text: str
    root: str  # "file", "home", "cwd", "env default", "absolute", "unknown"
    tail: str  # the part written in code, folded: `data/trading.db`
    dynamic: bool = False  # a piece is only known at run time
    env: str | None = None
    review: bool = False  # a connect whose path comes from a variable
    origin: str | None = None  # where that variable's value comes from
    literal: Literal | None = None


def connect_arg(mod: Module, call: ast.Call) -> ast.expr | None:
    """The path argument of a connect call, or None when the call is no connect."""
    if (mod.dotted(call.func) or "") not in CONNECTS:
        return None
    if call.args:
        return call.args[0]
    return next((k.value for k in call.keywords if k.arg in _ARG_NAMES), None)


def find_paths(mod: Module) -> list[PathSite]:
    sites: list[PathSite] = []
    tops: set[ast.AST] = set()
    for node in mod.nodes:
        if not _names_db(mod, node):
            continue
        top = _climb(mod, node)
        tops.add(top)
        sites.append(_path_site(mod, node, top))
    for node in mod.nodes:
        if isinstance(node, ast.Call):
            arg = connect_arg(mod, node)
            if arg is not None and arg not in tops and not _memory(arg):
                sites.append(_connect_site(mod, node, arg))
    return sorted(sites, key=lambda s: (s.line, s.col))


def _names_db(mod: Module, node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        parent = mod.parents.get(node)
        if isinstance(parent, ast.JoinedStr | ast.Expr):  # f-string piece, docstring
            return False
        return db_like(node.value)
    if isinstance(node, ast.JoinedStr):
        folded = mod.fold(node)
        return folded is not None and db_like(folded.text)
    return False


def _memory(arg: ast.expr) -> bool:
    """`:memory:`, `file::memory:?...` and `""` (a temporary database) name no file."""
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return False
    return arg.value == "" or ":memory:" in arg.value or "mode=memory" in arg.value


def _climb(mod: Module, node: ast.AST) -> ast.AST:
    """The whole expression that builds a path from this piece."""
    cur = node
    while True:
        p = mod.parents.get(cur)
        if isinstance(p, ast.BinOp) and isinstance(p.op, ast.Div | ast.Add):
            cur = p
        elif isinstance(p, ast.keyword) and p.arg == "default":
            call = mod.parents.get(p)
            if not isinstance(call, ast.Call) or (mod.dotted(call.func) or "") not in _BUILDERS:
                return cur
            cur = call
        elif isinstance(p, ast.Call) and cur in p.args:
            name = mod.dotted(p.func) or ""
            method = p.func.attr if isinstance(p.func, ast.Attribute) else ""
            if name in _BUILDERS or name.rsplit(".", 1)[-1] in _PATH_TYPES or method in _METHODS:
                cur = p
            else:
                return cur
        elif isinstance(p, ast.Attribute) and p.value is cur and p.attr in (_METHODS | {"parent"}):
            call = mod.parents.get(p)
            cur = call if isinstance(call, ast.Call) and call.func is p else p
        else:
            return cur


def _connected(mod: Module, top: ast.AST) -> bool:
    """Whether the expression is the path argument of a connect call (or keyword)."""
    parent = mod.parents.get(top)
    if isinstance(parent, ast.keyword):
        parent = mod.parents.get(parent)
    return isinstance(parent, ast.Call) and connect_arg(mod, parent) is top


def _path_site(mod: Module, node: ast.AST, top: ast.AST) -> PathSite:
    folded = mod.fold(top) or Folded("unknown", "", True)
    parent = mod.parents.get(top)
    kind = "connect" if _connected(mod, top) else "path"
    shape = _shape(mod, node, top, folded)
    if shape == "constant":
        folded = _joined_later(mod, parent, folded)
    lit = None
    if isinstance(node, ast.Constant):
        lit = Literal(node.lineno, mod.char_col(node), mod.segment(node), node.value)
    return PathSite(
        line=top.lineno,
        end_line=top.end_lineno or top.lineno,
        col=mod.char_col(top),
        stmt_line=_stmt(mod, top).lineno,
        kind=kind,
        shape=shape,
        text=mod.segment(top),
        root=folded.root,
        tail="/".join(tail_parts(folded.text)),
        dynamic=folded.dynamic,
        env=folded.env,
        literal=lit,
    )


def _shape(mod: Module, node: ast.AST, top: ast.AST, folded: Folded) -> str:
    parent = mod.parents.get(top)
    if isinstance(node, ast.JoinedStr):
        return "f-string"
    if _connected(mod, top):
        return "connect"
    if folded.root == "env default":
        return "getenv default"
    if isinstance(parent, ast.arguments):
        return "default argument"
    if isinstance(parent, ast.Assign | ast.AnnAssign) and isinstance(
        mod.scopes(parent)[0], ast.Module | ast.ClassDef
    ):
        return "constant"
    if isinstance(top, ast.BinOp):
        return "join"
    if isinstance(top, ast.Call):
        name = mod.dotted(top.func) or ""
        if name == "os.path.join":
            return "os.path.join"
        if name.rsplit(".", 1)[-1] in _PATH_TYPES:
            return "Path()"
    return "literal"


def _joined_later(mod: Module, assign: ast.AST, folded: Folded) -> Folded:
    """A constant holding only a file name (`DB_NAME = "x.db"`) is a path once joined:
    take the first join in the module that puts it under a folder."""
    targets = getattr(assign, "targets", None) or [getattr(assign, "target", None)]
    names = {t.id for t in targets if isinstance(t, ast.Name)}
    if folded.root != "cwd" or not names:
        return folded
    for use in mod.nodes:
        if not (isinstance(use, ast.Name) and use.id in names and isinstance(use.ctx, ast.Load)):
            continue
        parent = mod.parents.get(use)
        joined = (isinstance(parent, ast.BinOp) and parent.right is use) or (
            isinstance(parent, ast.Call) and use in parent.args[1:]
        )
        if joined:
            top = _climb(mod, use)
            later = mod.fold(top)
            if later is not None and db_like(later.text):
                return later
    return folded


def _stmt(mod: Module, node: ast.AST) -> ast.AST:
    cur = node
    while cur is not None and not isinstance(cur, ast.stmt):
        cur = mod.parents.get(cur)
    return cur or node


def _connect_site(mod: Module, call: ast.Call, arg: ast.expr) -> PathSite:
    folded = mod.fold(arg)
    return PathSite(
        line=call.lineno,
        end_line=call.end_lineno or call.lineno,
        col=mod.char_col(call),
        stmt_line=_stmt(mod, call).lineno,
        kind="connect",
        shape="connect",
        text=mod.segment(call),
        root=folded.root if folded else "unknown",
        tail="/".join(tail_parts(folded.text)) if folded else "",
        dynamic=folded.dynamic if folded else True,
        env=folded.env if folded else None,
        review=True,
        origin=trace(mod, arg),
    )


def trace(mod: Module, expr: ast.AST, depth: int = 0) -> str | None:
    """Where a variable's value comes from, in words, as far as the module tells."""
    if depth > 4:
        return None
    if isinstance(expr, ast.Call) and len(expr.args) == 1 and not expr.keywords:
        return trace(mod, expr.args[0], depth + 1)  # str(path), Path(path)
    if isinstance(expr, ast.Attribute):
        bound = mod.class_attr(expr)
        if bound is None:
            return None
        return f"attribute `{mod.segment(expr)}` = `{_short(mod, bound)}` (line {bound.lineno})"
    if not isinstance(expr, ast.Name):
        return f"`{_short(mod, expr)}`"
    found = mod.lookup(expr.id, expr)
    if found is None:
        return f"`{expr.id}` is not bound in this module"
    scope, b = found
    if isinstance(b, ast.arg):
        default = _default_of(mod, b)
        if default is None:
            return f"parameter `{b.arg}` (line {b.lineno}), no default: the caller's value"
        more = trace(mod, default, depth + 1) if isinstance(default, ast.Name) else None
        said = f"parameter `{b.arg}` (line {b.lineno}) default `{_short(mod, default)}`"
        return f"{said}; {more}" if more else said
    if isinstance(b, ast.withitem):
        return f"`with` at line {b.context_expr.lineno}: `{_short(mod, b.context_expr)}`"
    where = {ast.Module: "module constant", ast.ClassDef: "class attribute"}.get(
        type(scope), "assigned"
    )
    return f"{where} `{expr.id}` = `{_short(mod, b)}` (line {b.lineno})"


def _short(mod: Module, node: ast.AST) -> str:
    text = " ".join(mod.segment(node).split())
    return text if len(text) <= 80 else text[:77] + "..."
