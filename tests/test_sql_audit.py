"""No raw identifier in SQL: a static audit (an AST data-flow check over the engine's
sources) finds every name interpolated into an SQL f-string without `cdc.sqlident.q()`;
what is safe for another reason is listed in REVIEWED with that reason."""

from __future__ import annotations

import ast
import re
import textwrap

from tests.conftest import REPO

# -- the static audit ------------------------------------------------------------------------


class SqlAudit:
    """Which values interpolated into SQL f-strings may carry a name that is not quoted.

    An f-string is SQL when its text starts like a statement or a clause (`SELECT`, `FROM`,
    `WHERE`, `AND`...) or holds one (`INSERT INTO`, `CREATE TABLE`...). Each `{value}` in
    it must be safe: a literal; an UPPER_CASE constant; a call of a quoting helper (`q`,
    `lit`, `quote`, `int`, `len`, `rowid_alias`...); an int/float/bool parameter; or built
    only from safe parts (`", ".join`, `+`, comprehensions, conditionals, nested
    f-strings, tuples). A local variable is safe when every assignment, `append` and loop
    binding of it is; `self.x` when every `self.x = ...` of the class is; a function's
    result when every `return` is; a parameter when every call of the function (in the
    module for a private one, anywhere for a public one) passes a safe value. A public
    function nothing calls yet passes no name anywhere; an uncalled private or nested one
    may be a callback, so its parameters are unknown. It is flow-insensitive: a variable
    once bound to a raw value stays suspect even if it is quoted later (use a new name).
    """

    SQL = re.compile(
        r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|WITH|REPLACE|BEGIN"
        r"|FROM|WHERE|JOIN|LEFT JOIN|SET|VALUES|ON CONFLICT|ORDER BY|GROUP BY|AND|OR)\b"
        r"|\b(SELECT .* FROM|INSERT (OR \w+ )?INTO|DELETE FROM|UPDATE .* SET"
        r"|CREATE (UNIQUE |VIRTUAL |TEMP )?(TABLE|INDEX|TRIGGER|VIEW)|DROP (TABLE|INDEX|TRIGGER"
        r"|VIEW)|ALTER TABLE|PRAGMA \w)"
    )
    QUOTERS = {"q", "lit", "quote", "int", "len", "float", "bool", "range", "rowid_alias"}
    PURE = {"list", "tuple", "sorted", "reversed", "zip", "enumerate", "str", "min", "max"}
    STR_METHODS = {"join", "split", "rsplit", "strip", "lower", "upper", "replace", "format"}
    SAFE_ANNOTATIONS = {"int", "float", "bool"}
    SAFE_ATTRS = {"rowid_alias"}  # AppliedShape.rowid_alias = TableInfo.rowid_alias()
    COMPS = (ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp)
    FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)

    def __init__(self, sources: dict[str, str]) -> None:
        self.modules = [_Module(self, name, text) for name, text in sources.items()]
        self.calls: dict[str, list] = {}
        for m in self.modules:
            for n in ast.walk(m.tree):
                if isinstance(n, ast.Call):
                    name = _callee(n)
                    if name:
                        self.calls.setdefault(name, []).append((m, n))

    def findings(self) -> list[str]:
        out = []
        for m in self.modules:
            for node in ast.walk(m.tree):
                if not isinstance(node, ast.JoinedStr):
                    continue
                text = "".join(
                    v.value if isinstance(v, ast.Constant) else " x " for v in node.values
                )
                if not self.SQL.search(text):
                    continue
                for v in node.values:
                    if isinstance(v, ast.FormattedValue) and not m.safe(v.value, node):
                        out.append(f"{m.name}: {{{ast.unparse(v.value)}}}")
        return out


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _is_self_attr(e: ast.AST) -> bool:
    return isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self"


class _Module:
    def __init__(self, audit: SqlAudit, name: str, text: str) -> None:
        self.audit, self.name = audit, name
        self.tree = ast.parse(text)
        self.parents = {c: p for p in ast.walk(self.tree) for c in ast.iter_child_nodes(p)}
        self.funcs: dict[str, list] = {}
        for n in ast.walk(self.tree):
            if isinstance(n, SqlAudit.FUNCS):
                self.funcs.setdefault(n.name, []).append(n)
        self.consts = {
            t.id
            for n in self.tree.body
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        self._bindings: dict = {}
        self._scopes: dict = {}
        self._memo: dict = {}
        self._busy: set = set()

    # -- scopes and bindings
    def scopes(self, node: ast.AST) -> list:
        if node not in self._scopes:
            out, p = [], self.parents.get(node)
            while p is not None:
                if isinstance(p, SqlAudit.FUNCS):
                    out.append(p)
                p = self.parents.get(p)
            self._scopes[node] = out[::-1]
        return self._scopes[node]

    def class_of(self, fn: ast.AST) -> ast.ClassDef | None:
        p = self.parents.get(fn)
        while p is not None and not isinstance(p, ast.ClassDef):
            p = self.parents.get(p)
        return p

    def bindings(self, fn) -> dict:  # noqa: ANN001
        if fn in self._bindings:
            return self._bindings[fn]
        out: dict[str, list] = {}
        a = fn.args
        for arg in a.posonlyargs + a.args + a.kwonlyargs:
            out.setdefault(arg.arg, []).append(("param", fn, arg))
        for v in (a.vararg, a.kwarg):
            if v:
                out.setdefault(v.arg, []).append(None)

        def bind(t, v) -> None:  # noqa: ANN001
            if isinstance(t, ast.Name):
                out.setdefault(t.id, []).append(v)
            elif isinstance(t, ast.Starred):
                bind(t.value, v)
            elif isinstance(t, ast.Tuple | ast.List):
                if isinstance(v, ast.Tuple | ast.List) and len(v.elts) == len(t.elts):
                    for e, x in zip(t.elts, v.elts, strict=True):
                        bind(e, x)
                elif isinstance(v, tuple) and v[0] == "elem":
                    it = v[1]
                    if _zip_of(it, len(t.elts)):
                        for e, x in zip(t.elts, it.args, strict=True):
                            bind(e, ("elem", x))
                    else:
                        for e in t.elts:
                            bind(e, v)
                else:
                    for i, e in enumerate(t.elts):
                        bind(e, ("item", v, i))

        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    bind(t, node.value)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None:
                bind(node.target, node.value)
            elif isinstance(node, ast.For):
                bind(node.target, ("elem", node.iter))
            elif isinstance(node, ast.NamedExpr):
                bind(node.target, node.value)
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                bind(node.optional_vars, None)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("append", "extend", "insert")
                and isinstance(node.func.value, ast.Name)
                and node.args
            ):
                out.setdefault(node.func.value.id, []).append(node.args[-1])
        self._bindings[fn] = out
        return out

    def self_values(self, e: ast.Attribute) -> list:
        cls = next((self.class_of(f) for f in self.scopes(e) if self.class_of(f)), None)
        if cls is None:
            return []
        out = []
        for n in ast.walk(cls):
            for t in n.targets if isinstance(n, ast.Assign) else []:
                if _is_self_attr(t) and t.attr == e.attr:
                    out.append(n.value)
                elif isinstance(t, ast.Tuple):  # self.a, self.b = x, y
                    for i, x in enumerate(t.elts):
                        if _is_self_attr(x) and x.attr == e.attr:
                            v = n.value
                            same = isinstance(v, ast.Tuple) and len(v.elts) == len(t.elts)
                            out.append(v.elts[i] if same else ("item", v, i))
        return out

    # -- safety
    def safe(self, e, ctx) -> bool:  # noqa: ANN001
        key = (id(e), id(ctx))
        if key in self._memo:
            return self._memo[key]
        if key in self._busy:
            return True  # a cycle: the other bindings decide
        self._busy.add(key)
        try:
            r = self._safe(e, ctx)
        finally:
            self._busy.discard(key)
        self._memo[key] = r
        return r

    def _safe(self, e, ctx) -> bool:  # noqa: ANN001, C901, PLR0911, PLR0912
        A = SqlAudit  # noqa: N806
        if e is None:
            return False
        if isinstance(e, tuple):
            if e[0] == "elem":
                return self.safe(e[1], ctx)
            if e[0] == "item":
                return self.item_safe(e[1], e[2], ctx)
            return self.param_safe(e[1], e[2])
        if isinstance(e, ast.Constant):
            return True
        if isinstance(e, ast.Name):
            if e.id.lstrip("_").isupper() or e.id in self.consts:
                return True
            p = self.parents.get(e)
            while p is not None and not isinstance(p, A.FUNCS):
                if isinstance(p, A.COMPS):
                    for g in p.generators:
                        if e.id in {n.id for n in ast.walk(g.target) if isinstance(n, ast.Name)}:
                            if isinstance(g.target, ast.Tuple) and _zip_of(
                                g.iter, len(g.target.elts)
                            ):
                                for tt, arg in zip(g.target.elts, g.iter.args, strict=True):
                                    if isinstance(tt, ast.Name) and tt.id == e.id:
                                        return self.safe(arg, arg)
                            return self.safe(g.iter, g.iter)
                p = self.parents.get(p)
            for fn in reversed(self.scopes(e)):
                b = self.bindings(fn)
                if e.id in b:
                    return all(self.safe(v, v if isinstance(v, ast.AST) else e) for v in b[e.id])
            return False
        if isinstance(e, ast.Attribute):
            if e.attr.lstrip("_").isupper() or e.attr in A.SAFE_ATTRS:
                return True
            vals = self.self_values(e) if _is_self_attr(e) else []
            return bool(vals) and all(self.safe(v, v) for v in vals)
        if isinstance(e, ast.Call):
            f, args = e.func, [*e.args, *(k.value for k in e.keywords)]
            name = _callee(e)
            if name in A.QUOTERS:
                return True
            if isinstance(f, ast.Name) and name in A.PURE:
                return all(self.safe(a, e) for a in args)
            if isinstance(f, ast.Attribute) and name in A.STR_METHODS:
                return self.safe(f.value, e) and all(self.safe(a, e) for a in args)
            if (isinstance(f, ast.Name) or _is_self_attr(f)) and name in self.funcs:
                return all(self.returns_safe(fn) for fn in self.funcs[name])
            return False
        if isinstance(e, A.COMPS):
            return self.safe(e.elt, e)
        if isinstance(e, ast.List | ast.Tuple | ast.Set):
            return all(self.safe(x, e) for x in e.elts)
        if isinstance(e, ast.BinOp):
            return self.safe(e.left, e) and self.safe(e.right, e)
        if isinstance(e, ast.IfExp):
            return self.safe(e.body, e) and self.safe(e.orelse, e)
        if isinstance(e, ast.BoolOp):
            return all(self.safe(v, e) for v in e.values)
        if isinstance(e, ast.JoinedStr):
            return all(self.safe(v.value, e) for v in e.values if isinstance(v, ast.FormattedValue))
        if isinstance(e, ast.Subscript | ast.Starred):
            return self.safe(e.value, e)
        return False

    def item_safe(self, v, i: int, ctx) -> bool:  # noqa: ANN001
        """The i-th element of a tuple-valued expression."""
        if isinstance(v, ast.Tuple | ast.List):
            return i < len(v.elts) and self.safe(v.elts[i], v)
        if isinstance(v, ast.IfExp):
            return self.item_safe(v.body, i, v) and self.item_safe(v.orelse, i, v)
        if _is_self_attr(v):
            vals = self.self_values(v)
            return bool(vals) and all(self.item_safe(x, i, x) for x in vals)
        if isinstance(v, ast.Call) and _callee(v) in self.funcs:
            rets = [n.value for fn in self.funcs[_callee(v)] for n in ast.walk(fn)
                    if isinstance(n, ast.Return)]  # fmt: skip
            return bool(rets) and all(r is not None and self.item_safe(r, i, r) for r in rets)
        return self.safe(v, ctx)

    def returns_safe(self, fn) -> bool:  # noqa: ANN001
        rets = [n.value for n in ast.walk(fn) if isinstance(n, ast.Return)]
        return bool(rets) and all(r is not None and self.safe(r, r) for r in rets)

    def param_safe(self, fn, arg: ast.arg) -> bool:  # noqa: ANN001
        if arg.annotation is not None and ast.unparse(arg.annotation) in SqlAudit.SAFE_ANNOTATIONS:
            return True
        private = fn.name.startswith("_") or any(
            isinstance(p, SqlAudit.FUNCS) for p in self.scopes(fn)
        )
        calls = [(m, c) for m, c in self.audit.calls.get(fn.name, []) if not private or m is self]
        if not calls:  # a public function nothing calls yet carries no name anywhere; a
            return not private  # private or nested one may be a callback: unknown callers
        positional = [x.arg for x in fn.args.posonlyargs + fn.args.args]
        if positional[:1] in (["self"], ["cls"]):
            positional = positional[1:]
        for m, c in calls:
            val = None
            if arg.arg in positional and positional.index(arg.arg) < len(c.args):
                val = c.args[positional.index(arg.arg)]
            val = next((k.value for k in c.keywords if k.arg == arg.arg), val)
            if val is not None and not m.safe(val, c):
                return False
        return True


def _zip_of(it: ast.AST, n: int) -> bool:
    return (
        isinstance(it, ast.Call)
        and isinstance(it.func, ast.Name)
        and it.func.id == "zip"
        and len(it.args) == n
    )


# Interpolations reviewed by hand: what they hold, and why it is not a name from a file.
REVIEWED = {
    "replicator/pg_schema.py: {c.default}": "a merged member's DEFAULT, the source's own "
    "expression text from its schema, evaluated in a private in-memory SQLite database "
    "(as replicator/target.py does)",
    "cdc/planning/pg_ddl.py: {cond}": "pg_partial.partial_condition(): q()-quoted columns, "
    "lit() strings, numbers float() accepts, and fixed operators",
    "replicator/pg_apply.py: {name}": "_staging(): '_cdc_rows_' and hex digits",
    "replicator/pg_apply.py: {stage}": "_staging(): '_cdc_rows_' and hex digits",
    "replicator/pg_apply.py: {rows_from}": "VALUES (%s, ...) or SELECT of q()-quoted columns "
    "FROM a _staging() name",
    "replicator/pg_schema.py: {extra}": "' DEFAULT ' and pg_ddl.default_sql(): a number, a "
    "quoted string literal, NULL, 0/1 or to_char(...) with a fixed format",
    "cdc/postgres/way_back.py: {', '.join(keyed + picked)}": "q()-quoted key and column names "
    "with a PostgreSQL type name read from the catalog (format_type)",
    "cdc/postgres/way_back.py: {_fn('cap', t)}": "_fn(): a fixed prefix and hex digits",
    "cdc/postgres/way_back.py: {_fn('cap', table)}": "_fn(): a fixed prefix and hex digits",
    "cdc/postgres/way_back.py: {_fn('fence', t)}": "_fn(): a fixed prefix and hex digits",
    "cdc/postgres/way_back.py: {_fn('trunc', t)}": "_fn(): a fixed prefix and hex digits",
    "cdc/postgres/way_back.py: {_fn(prefix, t)}": "_fn(): a fixed prefix and hex digits",
    "cdc/postgres/way_back.py: {name}": "_fn(): a fixed prefix and hex digits",
    "cdc/postgres/way_back.py: {join}": "q()-quoted key names = key text cast to the catalog's "
    "type name",
    "cdc/application/query_plans.py: {', '.join(cols)}": "a suggested index's terms: q()-quoted "
    "columns, each with a q()-quoted collation and DESC (_legacy_columns)",
    "cdc/planning/ddl.py: {', '.join([tag, *terms])}": "q(tag), then a member's unique terms: "
    "index_terms() of its own index SQL (each one expression as SQLite parsed it) or q()-quoted "
    "columns with a q()-quoted collation",
    "cdc/planning/ddl.py: {', '.join(defs)}": "merged column definitions: q() names, declared() "
    "types, DEFAULT with the members' own expression text",
    "cdc/planning/ddl.py: {', '.join(map(lit, having))}": "lit()-quoted tags",
    "cdc/planning/ddl.py: {where}": "q(tag) IN lit()-quoted tags, or empty",
    "cdc/planning/pg_fit.py: {cond}": "_CONDITIONS formatted with q()-quoted columns, or "
    "q()-quoted key columns IS NULL",
    "cdc/planning/pg_fit.py: {sums}": "sum() over those conditions",
    "verifier/pg_table.py: {' AND '.join(conds)}": "range and tag conditions over q()-quoted "
    'keys (with COLLATE BINARY or "C") and %s/? marks',
    "verifier/pg_table.py: {where}": "WHERE over those conditions, or empty",
    "replicator/pg_schema.py: {ty}": "a PostgreSQL type name from cdc.postgres.types.BY_AFFINITY "
    "(or a rule's, checked against them by the config)",
    "replicator/pg_schema.py: {want}": "a PostgreSQL type name from cdc.postgres.types.BY_AFFINITY",
    "cdc/pool/opening.py: {level}": "checked against OFF/NORMAL/FULL/EXTRA just before",
    "cdc/demo/generator.py: {spec.journal}": "the demo's own journal mode constants",
    "cdc/demo/cutover_phase.py: {target_table}": "the demo's own fixed table name",
    "replicator/target.py: {decl}": "q(type), then DEFAULT with the source's own expression "
    "text (SQLite parsed it as one expression: it cannot end the statement)",
    "replicator/target.py: {c.default}": "a merged member's DEFAULT, the source's own expression "
    "text as above, evaluated once in a temp table of the member's declared type",
    "cdc/capture/triggers.py: {', '.join(terms)}": "a unique index's own terms as SQLite parsed them "
    "(sqlident.index_terms splits them at top-level commas): each one expression",
    "cdc/capture/changes.py: {join}": "capture.same() over q()-quoted columns and k<n> constants",
    "cdc/capture/triggers.py: {probe}": "q()-quoted columns and collations, or an index's own terms",
    "cdc/capture/triggers.py: {body}": "built from {probe} and {found} above",
    "cdc/capture/snapshot.py: {' AND '.join(conds)}": "q()-quoted keys compared with placeholders "
    "(exact_text.marks: '?' or 'CAST(? AS TEXT)')",
    "cdc/capture/snapshot.py: {where}": "q()-quoted keys IS placeholders (exact_text.mark)",
    "cdc/capture/snapshot.py: {upto}": "the snapshot's order expressions (q()-quoted keys or "
    "a rowid name) against placeholders (exact_text.marks)",
    "cdc/capture/snapshot.py: {bigs}": "bigrows.big_blob over q()-quoted columns",
    "cdc/history/rows.py: {exact_text.marks(values)}": "placeholders only",
    "replicator/apply.py: {' AND '.join(conds)}": "capture.same() over q()-quoted keys and "
    "numbered placeholders",
    "replicator/apply.py: {equal}": "q()-quoted keys = numbered placeholders COLLATE a "
    "q()-quoted collation (respell_sql)",
    "replicator/apply.py: {exact}": "capture.same() over q()-quoted keys and numbered "
    "placeholders (respell_sql)",
    "replicator/target.py: {' AND '.join(conds)}": "q()-quoted keys IS placeholders",
    "verifier/sides.py: {' AND '.join(conds)}": "q()-quoted keys against placeholders, and "
    "the NULL-key tests built from q()-quoted keys",
    "verifier/sides.py: {tail}": "FROM/WHERE built from q()-quoted names and placeholders",
    "verifier/sides.py: {where}": "built from the conds above",
    "cdc/cutover/backflow.py: {where}": "q()-quoted keys IS placeholders (exact_text.mark)",
    "replicator/copy_range.py: {' AND '.join(conds)}": "key expressions checked by "
    "_key_expr (a rowid name or a q()-quoted column) against placeholders (exact_text.marks)",
    "replicator/copy_range.py: {', '.join(exprs)}": "key expressions checked by _key_expr, "
    "then q()-quoted columns",
    "replicator/copy_range.py: {', '.join(order)}": "key expressions checked by _key_expr",
}
KNOWN_RAW: set[str] = set()  # raw and wrong: none left


def _product_sources() -> dict[str, str]:
    out = {}
    for top in ("cdc", "replicator", "checkpoints", "verifier"):
        for p in sorted((REPO / top).rglob("*.py")):
            out[str(p.relative_to(REPO))] = p.read_text(encoding="utf-8")
    return out


def test_the_audit_finds_raw_names_and_only_them() -> None:
    """The audit itself, on code written to fool it both ways."""
    code = textwrap.dedent(
        """
        TABLE = "_cdc_x"
        def q(n): ...
        def public(conn, name: str, n: int):
            conn.execute(f"SELECT * FROM {name}")                    # raw: a parameter
            conn.execute(f"SELECT {n} FROM {TABLE}")                 # safe: int, constant
            cols = ", ".join(q(c) for c in name)
            conn.execute(f"SELECT {cols} FROM {q(name)}")            # safe: quoted
            cols2 = [q(c) for c in name]
            cols2.append(name)
            conn.execute(f"SELECT {', '.join(cols2)} FROM t")        # raw: appended
            for (trig,) in conn.execute("SELECT name FROM sqlite_master"):
                conn.execute(f"DROP TRIGGER {trig}")                 # raw: read from a file
            where, args = (f"{q(name)} = ?", [name])
            conn.execute(f"DELETE FROM t WHERE {where}", args)       # safe: item 0
            a, b = zip(*[(q(x), x) for x in name])
            conn.execute(f"UPDATE t SET {b} = 1")                    # raw (conservative)
            return _helper("NEW") + _helper(name)
        def _helper(row):
            return f"SELECT {row}.x FROM t"                          # raw: one caller passes name
        def _only_constants(row):
            return f"SELECT {row}.x FROM t"                          # safe: callers pass literals
        class Reader:
            def __init__(self, conn, names):
                self.conn = conn
                self.cols, self.raw = [q(n) for n in names], names
            def read(self):
                self.conn.execute(f"SELECT {', '.join(self.cols)} FROM t")  # safe
                self.conn.execute(f"SELECT {', '.join(self.raw)} FROM t")   # raw
        def user():
            _only_constants("OLD"); _only_constants(row="NEW")
        def driver(conn):
            for row in conn.execute("SELECT name FROM sqlite_master"):
                public(conn, row[0], 1)                             # public's `name`: raw
        def not_called_yet(conn, expr):
            conn.execute(f"SELECT {expr} FROM t")                    # safe: no caller at all
            def callback(col):
                conn.execute(f"SELECT {col} FROM t")                 # raw: called indirectly
            return callback
        print(f"table {TABLE} not found: {object()}")               # not SQL
        """
    )
    found = SqlAudit({"m.py": code}).findings()
    assert sorted(found) == sorted(
        [
            "m.py: {name}",
            "m.py: {', '.join(cols2)}",
            "m.py: {trig}",
            "m.py: {b}",
            "m.py: {row}",
            "m.py: {col}",
            "m.py: {', '.join(self.raw)}",
        ]
    )


def test_every_name_in_sql_is_quoted() -> None:
    """No SQL f-string in the product interpolates a value that may be a name without
    quoting it, except the reviewed and the known-wrong ones listed above."""
    found = SqlAudit(_product_sources()).findings()
    unexpected = sorted({f for f in found if f not in REVIEWED and f not in KNOWN_RAW})
    assert not unexpected, (
        "SQL built from a name that is not quoted with cdc.sqlident.q() (or not provably "
        "so; if it is safe, add it to REVIEWED with the reason):\n  " + "\n  ".join(unexpected)
    )


def test_the_audit_sees_the_sql() -> None:
    """A sanity bound: the audit reads every SQL f-string of the product (hundreds), so an
    empty result is not the audit having missed them."""
    audit = SqlAudit(_product_sources())
    n = 0
    for m in audit.modules:
        for node in ast.walk(m.tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(
                    v.value if isinstance(v, ast.Constant) else " x " for v in node.values
                )
                n += bool(SqlAudit.SQL.search(text))
    assert n > 100, n
