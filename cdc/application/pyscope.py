"""One Python module as `cdc refs` reads it: its imports, the names it binds in each scope,
and what a path expression folds to.

Code rarely writes a database's path in one literal: it joins a data folder built from
`__file__`, a home folder or an environment default with a file name, often through a
module constant. Folding follows exactly those shapes, within one module and without
running anything, and says where the path hangs from (`root`) and the part written in
code (`text`). Anything it cannot follow folds to root `unknown`, never to a guess.
"""

from __future__ import annotations

import ast
import re
from typing import NamedTuple

DB_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".db3")
_DB_NAME = re.compile(r"[^\s/\\'\"]+\.(?:db|sqlite|sqlite3|db3)", re.IGNORECASE)
_PATH_TYPES = {"Path", "PurePath", "PosixPath", "WindowsPath", "PurePosixPath"}
_SAME_PATH = {"str", "os.fspath", "os.path.normpath", "os.path.realpath"}
_SAME_METHODS = {"resolve", "absolute", "expanduser", "as_posix"}
_DEPTH = 12
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


class Folded(NamedTuple):
    """A path expression as far as the module tells: where it hangs from and what is
    written after that (`{...}` marks a piece only known at run time)."""

    root: str  # "file", "home", "cwd", "env default", "absolute", "unknown"
    text: str
    dynamic: bool = False
    env: str | None = None  # the environment variable whose default this is


def db_like(text: str) -> bool:
    """Whether the last component of a written path names a database file."""
    last = _clean(text).rstrip("/").rsplit("/", 1)[-1]
    return bool(_DB_NAME.fullmatch(last))


def _clean(text: str) -> str:
    text = text.replace("\\", "/")
    if text.startswith("file:"):
        text = text[5:].split("?", 1)[0]
    return text


def tail_parts(text: str) -> list[str]:
    return [p for p in _clean(text).split("/") if p not in ("", ".", "..")]


def literal(text: str) -> Folded:
    text = _clean(text)
    if text.startswith("/"):
        return Folded("absolute", text.lstrip("/"))
    if text.startswith("~"):
        return Folded("home", text[1:].lstrip("/"))
    return Folded("cwd", text)


def join(a: Folded, b: Folded) -> Folded:
    if b.root not in ("cwd",):  # an absolute (or home) right side replaces the left
        return b if b.root != "unknown" or not b.text else Folded(b.root, b.text, True)
    text = f"{a.text.rstrip('/')}/{b.text}" if a.text else b.text
    return Folded(a.root, text, a.dynamic or b.dynamic, a.env or b.env)


def parent(a: Folded) -> Folded:
    return a._replace(text=a.text.rstrip("/").rpartition("/")[0]) if a.text else a


class Module:
    """A parsed module with the lookups folding needs: parents, import aliases, and the
    names each scope (module, class, function) binds."""

    def __init__(self, source: str, filename: str = "<module>") -> None:
        self.source = source
        self.tree = ast.parse(source, filename)
        self.parents: dict[ast.AST, ast.AST] = {}
        self.nodes = list(ast.walk(self.tree))  # walked once, read by every finder
        self.aliases: dict[str, str] = {}  # local name -> dotted origin
        for node in self.nodes:
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.aliases[a.asname or a.name.split(".")[0]] = (
                        a.name if a.asname else a.name.split(".")[0]
                    )
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        self._bindings: dict[ast.AST, dict[str, list[ast.AST]]] = {}
        self._split: list[str] | None = None

    # -- names -------------------------------------------------------------------------
    def dotted(self, node: ast.AST) -> str | None:
        """`sq.connect` -> `sqlite3.connect` when `import sqlite3 as sq`."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def scopes(self, node: ast.AST) -> list[ast.AST]:
        """The scopes a name at `node` is looked up in, innermost first (class bodies are
        skipped for code inside their methods, as Python does)."""
        out: list[ast.AST] = []
        cur = self.parents.get(node)
        inner = True
        while cur is not None:
            if isinstance(cur, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                out.append(cur)
                inner = False
            elif isinstance(cur, ast.ClassDef) and inner:
                out.append(cur)
            cur = self.parents.get(cur)
        out.append(self.tree)
        return out

    def enclosing(self, node: ast.AST, kind: type | tuple) -> ast.AST | None:
        cur = self.parents.get(node)
        while cur is not None and not isinstance(cur, kind):
            cur = self.parents.get(cur)
        return cur

    def bindings(self, scope: ast.AST) -> dict[str, list[ast.AST]]:
        """Name -> the nodes that bind it in this scope: assignment values, `with ... as`
        items, and for a function its parameters (the `ast.arg`)."""
        if scope not in self._bindings:
            self._bindings[scope] = _collect(scope)
        return self._bindings[scope]

    def lookup(self, name: str, at: ast.AST) -> tuple[ast.AST, ast.AST] | None:
        """(scope, binding) of the value `name` holds at `at`: the last binding above it
        in the innermost scope that binds the name."""
        line = getattr(at, "lineno", 10**9)
        for scope in self.scopes(at):
            found = self.bindings(scope).get(name)
            if found:
                before = [b for b in found if getattr(b, "lineno", 0) <= line] or found
                return scope, before[-1]
        return None

    def class_attr(self, node: ast.Attribute) -> ast.AST | None:
        """`self.X`, `cls.X`, `Klass.X` -> what the class binds X to (class body first,
        then `self.X = ...` in its methods)."""
        klass = self.enclosing(node, ast.ClassDef)
        if not isinstance(node.value, ast.Name):
            return None
        if node.value.id not in ("self", "cls") and not (klass and klass.name == node.value.id):
            klass = next(
                (
                    c
                    for c in self.tree.body
                    if isinstance(c, ast.ClassDef) and c.name == node.value.id
                ),
                None,
            )
        if klass is None:
            return None
        found = self.bindings(klass).get(node.attr)
        if found:
            return found[-1]
        for fn in klass.body:
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(fn):
                    if isinstance(sub, ast.Assign):
                        for t in sub.targets:
                            if (
                                isinstance(t, ast.Attribute)
                                and isinstance(t.value, ast.Name)
                                and t.value.id == "self"
                                and t.attr == node.attr
                            ):
                                return sub.value
        return None

    def segment(self, node: ast.AST) -> str:
        """The node's source text (`ast.get_source_segment`, without splitting the whole
        source again on every call: that was a quarter of the time on a large tree)."""
        end = getattr(node, "end_lineno", None)
        if end is None:
            return ""
        if self._split is None:
            self._split = _LINES.findall(self.source)
        lines = [x.encode() for x in self._split[node.lineno - 1 : end]]
        if not lines:
            return ""
        if len(lines) == 1:
            return lines[0][node.col_offset : node.end_col_offset].decode()
        first, last = lines[0][node.col_offset :], lines[-1][: node.end_col_offset]
        return b"".join([first, *lines[1:-1], last]).decode()

    def char_col(self, node: ast.AST) -> int:
        """ast counts columns in UTF-8 bytes; editors and libcst count characters."""
        if self._split is None:
            self._split = _LINES.findall(self.source)
        line = self._split[node.lineno - 1] if node.lineno <= len(self._split) else ""
        return len(line.encode()[: node.col_offset].decode(errors="replace"))

    # -- folding -----------------------------------------------------------------------
    def fold(self, node: ast.AST | None, depth: int = 0) -> Folded | None:
        """What a path expression is, as far as this module tells; None when it is not
        a path-like expression at all."""
        if node is None or depth > _DEPTH:
            return None
        return _fold(self, node, depth + 1)

    def value_of(self, binding: ast.AST) -> ast.AST | None:
        """The expression a binding holds: an assignment's value, a parameter's default."""
        if isinstance(binding, ast.arg):
            return _default_of(self, binding)
        if isinstance(binding, ast.withitem):
            return binding.context_expr
        return binding if isinstance(binding, ast.expr) else None


def _collect(scope: ast.AST) -> dict[str, list[ast.AST]]:
    out: dict[str, list[ast.AST]] = {}
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        a = scope.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
            out.setdefault(arg.arg, []).append(arg)
    body = scope.body if isinstance(scope.body, list) else [scope.body]
    stack = list(body)
    while stack:
        node = stack.pop(0)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
            if isinstance(node.target, ast.Name):
                out.setdefault(node.target.id, []).append(node.value)
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                if isinstance(item.optional_vars, ast.Name):
                    out.setdefault(item.optional_vars.id, []).append(item)
        stack.extend(ast.iter_child_nodes(node))
    for names in out.values():
        names.sort(key=lambda n: getattr(n, "lineno", 0))
    return out


def _default_of(mod: Module, arg: ast.arg) -> ast.expr | None:
    fn = mod.parents.get(mod.parents.get(arg))
    if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        return None
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    if arg in positional:
        i = positional.index(arg) - (len(positional) - len(a.defaults))
        return a.defaults[i] if i >= 0 else None
    if arg in a.kwonlyargs:
        return a.kw_defaults[a.kwonlyargs.index(arg)]
    return None


def _fold(mod: Module, node: ast.AST, depth: int) -> Folded | None:
    if isinstance(node, ast.Constant):
        return literal(node.value) if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        return _fold_fstring(mod, node, depth)
    if isinstance(node, ast.Name):
        if node.id == "__file__":
            return Folded("file", "")
        found = mod.lookup(node.id, node)
        if found is None:
            return None
        return mod.fold(mod.value_of(found[1]), depth)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div | ast.Add):
        left, right = mod.fold(node.left, depth), mod.fold(node.right, depth)
        if left is None and right is None:
            return None
        left = left or Folded("unknown", "", True)
        right = right or _piece(mod, node.right)
        if isinstance(node.op, ast.Div):
            return join(left, right)
        return Folded(left.root, left.text + right.text, left.dynamic or right.dynamic, left.env)
    if isinstance(node, ast.Attribute):
        if node.attr in ("parent", "parents"):
            inner = mod.fold(node.value, depth)
            return parent(inner) if inner else None
        if isinstance(node.value, ast.Name | ast.Attribute):
            bound = mod.class_attr(node)
            return mod.fold(bound, depth) if bound is not None else None
        return None
    if isinstance(node, ast.Subscript):
        if isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
            inner = mod.fold(node.value.value, depth)
            return parent(inner) if inner else None
        if mod.dotted(node.value) == "os.environ":
            return Folded("unknown", "", True)
        return None
    if isinstance(node, ast.IfExp):
        return mod.fold(node.body, depth) or mod.fold(node.orelse, depth)
    if isinstance(node, ast.Await):
        return mod.fold(node.value, depth)
    if isinstance(node, ast.Call):
        return _fold_call(mod, node, depth)
    return None


def _fold_call(mod: Module, node: ast.Call, depth: int) -> Folded | None:
    name = mod.dotted(node.func) or ""
    short = name.rsplit(".", 1)[-1]
    args = node.args
    if short in _PATH_TYPES and (name == short or name.startswith("pathlib")):
        out = Folded("cwd", "")
        for a in args:
            out = join(out, mod.fold(a, depth) or Folded("unknown", "", True))
        return out
    if name in ("pathlib.Path.home", "Path.home") or (
        name == "os.path.expanduser" and args and _const(args[0]) == "~"
    ):
        return Folded("home", "")
    if name in ("pathlib.Path.cwd", "Path.cwd", "os.getcwd"):
        return Folded("cwd", "")
    if name in ("os.getenv", "os.environ.get"):
        var = _const(args[0]) if args else None
        default = args[1] if len(args) > 1 else _kw(node, "default")
        inner = mod.fold(default, depth)
        if inner is None:
            return Folded("unknown", "", True, var)
        return Folded("env default", inner.text, inner.dynamic, var)
    if name == "os.path.join":
        if not args:
            return None
        out = mod.fold(args[0], depth) or Folded("unknown", "", True)
        for a in args[1:]:
            out = join(out, mod.fold(a, depth) or _piece(mod, a))
        return out
    if name in ("os.path.dirname",) and args:
        inner = mod.fold(args[0], depth)
        return parent(inner) if inner else None
    if (name in _SAME_PATH or name in ("os.path.abspath", "os.path.expanduser")) and args:
        return mod.fold(args[0], depth)
    if isinstance(node.func, ast.Attribute):
        method = node.func.attr
        if method in _SAME_METHODS:
            return mod.fold(node.func.value, depth)
        if method == "joinpath":
            out = mod.fold(node.func.value, depth) or Folded("unknown", "", True)
            for a in args:
                out = join(out, mod.fold(a, depth) or _piece(mod, a))
            return out
        if method == "with_name" and args:
            base, new = mod.fold(node.func.value, depth), _const(args[0])
            if base is not None and isinstance(new, str):
                return join(parent(base), literal(new))
    return None


def _fold_fstring(mod: Module, node: ast.JoinedStr, depth: int) -> Folded:
    root, env, dynamic, text, anchored = "cwd", None, False, "", False
    for i, v in enumerate(node.values):
        if isinstance(v, ast.Constant):
            text += str(v.value)
            continue
        inner = mod.fold(v.value, depth) if isinstance(v, ast.FormattedValue) else None
        if inner is not None and i == 0:
            root, env, dynamic, text = inner.root, inner.env, inner.dynamic, inner.text
            anchored = True
        elif inner is not None and inner.root == "cwd":
            text += inner.text
            dynamic = dynamic or inner.dynamic
        else:
            text += "{" + mod.segment(getattr(v, "value", v)) + "}"
            dynamic = True
    if not anchored:
        lit = literal(text)
        return Folded(lit.root, lit.text, dynamic)
    return Folded(root, text, dynamic, env)


def _piece(mod: Module, node: ast.AST) -> Folded:
    """A joined piece only known at run time, kept as written: `{name}`."""
    return Folded("cwd", "{" + mod.segment(node) + "}", True)


def _const(node: ast.AST | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _kw(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)
