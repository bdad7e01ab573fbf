"""A legacy SELECT rewritten to the consolidated names, through sqlglot's syntax tree.

The rewrite must be provably the same query, or no rewrite at all: a comparison of answers
between a legacy query and a guess would prove nothing. So a statement is refused (one
line, `NotRewritable`) as soon as something is not certain: not a SELECT, unparsable, a
table excluded or not in the plan, tables of two targets in one query (no single file can
answer it), a merged table on the preserved side of a RIGHT or FULL join, or a bare `*`
next to a merged table in a USING/NATURAL join (SQLite merges the shared columns there).

What changes, and why each change keeps the answer:

- A renamed table gets its new name and, when it had no alias, its legacy name as alias:
  every `positions.qty` written against it still resolves.
- A merged table is read through its tag: `alias.tag_column = 'tag'` is added to the WHERE
  of its own SELECT, or to the ON of the join when it is on the nullable side of a LEFT
  JOIN (in the WHERE it would drop the unmatched rows). The tag column must not reach the
  result, so a `*` or `alias.*` that covers it lists the member's own columns instead (as
  the legacy file declares them, `PRAGMA table_info`).
- sqlglot writes a comma join as CROSS JOIN, which SQLite reads as "do not reorder": it
  is written back as a plain JOIN, which SQLite plans like the comma.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import sqlglot
from sqlglot import exp

from cdc.application.names import LegacyNames, TableMove
from cdc.errors import ConfigError

DIALECT = "sqlite"

Columns = Callable[[str, str], list[str]]  # (source, legacy table) -> its columns, in order


class NotRewritable(ConfigError):
    """A statement that cannot be rewritten provably; the run reports it per query."""


class TableUse(msgspec.Struct, frozen=True):
    """One legacy table read by a query, under the name its plan lines show."""

    alias: str  # what EXPLAIN QUERY PLAN names it by, on both sides
    table: str  # the legacy table
    target_table: str
    tag_column: str | None = None
    tag: str | None = None


class Rewritten(msgspec.Struct, frozen=True):
    sql: str
    target: str
    target_path: str
    ordered: bool  # a top-level ORDER BY: the answers are compared in order
    tables: list[TableUse]


def is_select(sql: str) -> bool:
    """Whether a statement is one query (SELECT, or WITH ... SELECT): what may be re-run."""
    try:
        trees = sqlglot.parse(sql, read=DIALECT)
    except sqlglot.errors.SqlglotError:
        return False
    return len([t for t in trees if t is not None]) == 1 and isinstance(trees[0], exp.Query)


def rewrite(names: LegacyNames, source: str, sql: str, columns: Columns) -> Rewritten:
    """`sql`, run on legacy source `source`, as the same query on its consolidated file."""
    tree = _parse(sql)
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    moves: list[tuple[exp.Table, TableMove]] = []
    for table in list(tree.find_all(exp.Table)):
        if not table.db and table.name.lower() in ctes:
            continue  # a name the query defines itself
        moves.append((table, _move_of(names, source, table)))
    if not moves:
        raise NotRewritable(f"{_short(sql)}: reads no table of the plan")
    targets = sorted({m.target for _, m in moves})
    if len(targets) > 1:
        raise NotRewritable(
            f"{_short(sql)}: reads tables of {' and '.join(targets)}: no one file can answer it"
        )
    uses = [_rename(table, move) for table, move in moves]
    for table, move in moves:
        if move.merged:
            _filter_tag(table, move)
    for select in list(tree.find_all(exp.Select)):
        _expand_stars(select, source, {id(t): m for t, m in moves}, columns)
    for join in tree.find_all(exp.Join):
        if join.args.get("kind") == "CROSS" and "pivots" not in join.args:
            join.set("kind", None)  # a comma join, which sqlglot spells CROSS JOIN
    move = moves[0][1]
    return Rewritten(
        sql=tree.sql(dialect=DIALECT),
        target=move.target,
        target_path=move.target_path,
        ordered=tree.args.get("order") is not None,
        tables=uses,
    )


def ordered(sql: str) -> bool:
    """Whether the statement's answer has an order to compare (a top-level ORDER BY)."""
    return _parse(sql).args.get("order") is not None


def _parse(sql: str) -> exp.Query:
    try:
        trees = [t for t in sqlglot.parse(sql, read=DIALECT) if t is not None]
    except sqlglot.errors.SqlglotError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NotRewritable(f"{_short(sql)}: cannot parse: {first}") from e
    if len(trees) != 1:
        raise NotRewritable(f"{_short(sql)}: {len(trees)} statements, one query expected")
    if not isinstance(trees[0], exp.Query):
        raise NotRewritable(f"{_short(sql)}: not a SELECT ({trees[0].key.upper()})")
    return trees[0]


def _move_of(names: LegacyNames, source: str, table: exp.Table) -> TableMove:
    if table.catalog or table.db.lower() not in ("", "main"):
        raise NotRewritable(f"{table.sql(dialect=DIALECT)}: a table of an attached database")
    if not table.name:
        raise NotRewritable(f"{table.sql(dialect=DIALECT)}: not a plain table")
    move = names.table(source, table.name)
    if move is None:
        f = names.source(source)
        if f is not None and table.name.lower() in {x.lower() for x in f.excluded}:
            raise NotRewritable(f"{source}.{table.name}: excluded by the plan, not consolidated")
        raise NotRewritable(f"{source}.{table.name}: not in the plan")
    if move.fts and move.merged:
        raise NotRewritable(f"{source}.{table.name}: a merged full-text table")
    return move


def _rename(table: exp.Table, move: TableMove) -> TableUse:
    alias = table.alias or table.name
    if move.renamed or move.merged:
        if not table.alias:  # `positions.qty` must still resolve
            table.set("alias", exp.TableAlias(this=exp.to_identifier(table.name, quoted=True)))
        table.set("this", exp.to_identifier(move.target_table, quoted=True))
    table.set("db", None)
    return TableUse(alias, move.table, move.target_table, move.tag_column, move.tag)


def _filter_tag(table: exp.Table, move: TableMove) -> None:
    cond = exp.EQ(
        this=exp.column(move.tag_column, table=table.alias_or_name, quoted=True),
        expression=exp.Literal.string(move.tag),
    )
    parent = table.parent
    if isinstance(parent, exp.Join):
        side = (parent.side or "").upper()
        if side in ("RIGHT", "FULL"):
            raise NotRewritable(
                f"{move.source}.{move.table}: a merged table in a {side} JOIN is not rewritten"
            )
        if side == "LEFT":  # its rows are the nullable side: filtered before they meet
            on = parent.args.get("on")
            if parent.args.get("using"):
                raise NotRewritable(f"{move.source}.{move.table}: LEFT JOIN ... USING, merged")
            parent.set("on", exp.and_(on, cond) if on is not None else cond)
            return
        _right_joins_after(parent, move)
        select = parent.parent
    elif isinstance(parent, exp.From):
        select = parent.parent
        for join in select.args.get("joins") or []:
            if (join.side or "").upper() in ("RIGHT", "FULL"):
                raise NotRewritable(
                    f"{move.source}.{move.table}: a merged table left of a RIGHT/FULL JOIN"
                )
    else:
        raise NotRewritable(f"{move.source}.{move.table}: read where no WHERE can filter it")
    if not isinstance(select, exp.Select):
        raise NotRewritable(f"{move.source}.{move.table}: read where no WHERE can filter it")
    select.where(cond, append=True, copy=False)


def _right_joins_after(join: exp.Join, move: TableMove) -> None:
    """An inner-joined merged table followed by a RIGHT/FULL join: a WHERE would drop rows."""
    select = join.parent
    joins = select.args.get("joins") or []
    later = joins[joins.index(join) + 1 :] if join in joins else []
    if any((j.side or "").upper() in ("RIGHT", "FULL") for j in later):
        raise NotRewritable(f"{move.source}.{move.table}: a merged table before a RIGHT/FULL JOIN")


def _expand_stars(
    select: exp.Select, source: str, moves: dict[int, TableMove], columns: Columns
) -> None:
    """`*` and `alias.*` over a merged table list its member's columns (no tag column)."""
    sources = _from_items(select)
    merged = {id(t): moves[id(t)] for t in sources if isinstance(t, exp.Table) and moves.get(id(t))}
    merged = {k: m for k, m in merged.items() if m.merged}
    if not merged:
        return
    out: list[exp.Expression] = []
    for proj in select.expressions:
        if isinstance(proj, exp.Star):
            if any(j.args.get("using") or j.method for j in select.args.get("joins") or []):
                raise NotRewritable("SELECT * over a merged table in a USING/NATURAL join")
            for item in sources:
                out.extend(_item_columns(item, source, merged, columns))
        elif isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star) and proj.table:
            item = next((s for s in sources if s.alias_or_name == proj.table), None)
            if item is None or id(item) not in merged:
                out.append(proj)
            else:
                out.extend(_item_columns(item, source, merged, columns))
        else:
            out.append(proj)
    select.set("expressions", out)


def _from_items(select: exp.Select) -> list[exp.Expression]:
    items: list[exp.Expression] = []
    frm = select.args.get("from_") or select.args.get("from")
    if frm is not None:
        items.append(frm.this)
    items.extend(j.this for j in select.args.get("joins") or [])
    return items


def _item_columns(
    item: exp.Expression, source: str, merged: dict[int, TableMove], columns: Columns
) -> list[exp.Expression]:
    name = item.alias_or_name
    move = merged.get(id(item))
    if move is None:
        return [exp.Column(this=exp.Star(), table=exp.to_identifier(name, quoted=True))]
    cols = columns(source, move.table)
    if not cols:
        raise NotRewritable(f"{source}.{move.table}: no columns read from the legacy file")
    return [exp.column(c, table=name, quoted=True) for c in cols]


def _short(sql: str, width: int = 60) -> str:
    one = " ".join(sql.split())
    return one if len(one) <= width else one[: width - 3] + "..."
