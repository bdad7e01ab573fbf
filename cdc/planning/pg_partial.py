"""A partial index's condition in PostgreSQL's terms, where it means the same there.

A SQLite condition compared under SQLite's rules: a string compared with an INTEGER
column is converted first, LIKE folds ASCII case, functions are SQLite's. Only a
condition built from plain columns compared with literals of their own mapped type (a
number with `bigint`, `double precision` or `numeric`, a string with `text`), with
`= <> < <= > >=`, `IS [NOT] NULL`, `IN (...)`, `AND`, `OR`, `NOT` and parentheses, means
the same in both engines: that one is written out, every other is refused (None). Parsed
with sqlglot (the SQLite dialect), written here rather than by sqlglot's PostgreSQL
generator, so that every name is quoted as the legacy table spells it (PostgreSQL folds
unquoted names to lower case).
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from cdc.sqlident import lit, q

NUMERIC = ("bigint", "double precision", "numeric")
_OPS = {exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}


def partial_condition(index_sql: str, types: dict[str, str]) -> str | None:
    """The WHERE of `index_sql` for PostgreSQL (`types`: column name, lower case -> its
    PostgreSQL type and spelling, as `(type, name)`), or None when it does not translate
    as meaning the same."""
    try:
        tree = sqlglot.parse_one(index_sql, read="sqlite")
    except SqlglotError:
        return None
    where = tree.find(exp.Where)
    if where is None:
        return None
    return _render(where.this, types)


def _render(e: exp.Expression, types: dict) -> str | None:  # noqa: PLR0911 - one case each
    if isinstance(e, exp.Paren):
        inner = _render(e.this, types)
        return None if inner is None else f"({inner})"
    if isinstance(e, exp.And | exp.Or):
        a, b = _render(e.this, types), _render(e.expression, types)
        word = "AND" if isinstance(e, exp.And) else "OR"
        return None if a is None or b is None else f"{a} {word} {b}"
    if isinstance(e, exp.Not):
        if isinstance(e.this, exp.Is) and isinstance(e.this.expression, exp.Null):
            col = _column(e.this.this, types)
            return None if col is None else f"{col[0]} IS NOT NULL"
        inner = _render(e.this, types)
        return None if inner is None else f"NOT {inner}"
    if isinstance(e, exp.Is) and isinstance(e.expression, exp.Null):
        col = _column(e.this, types)
        return None if col is None else f"{col[0]} IS NULL"
    if type(e) in _OPS:
        return _compare(e.this, _OPS[type(e)], [e.expression], types)
    if isinstance(e, exp.In) and e.expressions and not e.args.get("query"):
        return _compare(e.this, "IN", e.expressions, types)
    return None


def _compare(left: exp.Expression, op: str, rights: list, types: dict) -> str | None:
    col = _column(left, types)
    if col is None:
        return None
    values = [_literal(r, col[1]) for r in rights]
    if any(v is None for v in values):
        return None
    if op == "IN":
        return f"{col[0]} IN ({', '.join(v for v in values if v)})"
    return f"{col[0]} {op} {values[0]}"


def _column(e: exp.Expression, types: dict) -> tuple[str, str] | None:
    """(quoted name, PostgreSQL type) of a plain column of the table."""
    if not isinstance(e, exp.Column) or e.table:
        return None
    got = types.get(e.name.lower())
    return None if got is None else (q(got[1]), got[0])


def _literal(e: exp.Expression, ty: str) -> str | None:
    """A literal of the column's own type, as PostgreSQL reads it."""
    neg = isinstance(e, exp.Neg)
    if neg:
        e = e.this
    if not isinstance(e, exp.Literal):
        return None
    if e.is_string:
        return lit(e.this) if ty == "text" and not neg else None
    if ty not in NUMERIC:
        return None
    try:
        float(e.this)
    except ValueError:  # a hex literal (0x10): SQLite's own syntax
        return None
    return f"-{e.this}" if neg else e.this
