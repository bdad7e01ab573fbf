"""The shape half of "the same table": which columns the target table has, beside which
values they hold.

Rows are compared over the legacy columns only, so without this a target column the legacy
table no longer has (a renamed or dropped column whose old values stayed), or a column of
another declared type (another affinity: the next value may be stored differently) would
pass unseen.

- A copied table must have the legacy table's columns: the same names, in the same order,
  with the same declared types, and the same key. Generated columns are left out on both
  sides (the target computes its own).
- A copied table must have the legacy table's unique constraints (columns and each
  index's collations, the key excluded): one more in the target refuses a row the legacy
  file holds, one fewer lets through rows the legacy file refuses.
- A merged table is the union of its members' columns: every legacy column must be in
  it, of the same affinity (an untyped column of a merged table made before it carried
  types stores a bot's '5' as TEXT where the legacy table stores 5); columns other
  members have are expected.
"""

from __future__ import annotations

import apsw

from cdc.inventory import TableInfo, affinity, is_strict, stored_type, unique_indexes
from cdc.planning.plan import TableMapping
from cdc.sqlident import q


def _columns(conn: apsw.Connection, table: str) -> list[tuple[str, str, int]]:
    return [
        (r[1], r[2], r[5]) for r in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))
    ]


def _type(d: str) -> str:
    return d or "(no type)"


def shape_differences(info: TableInfo, tgt: apsw.Connection, m: TableMapping) -> list[str]:
    """What keeps the target table of `m` from having the legacy table's shape (`info`),
    one phrase per difference; empty when the shapes agree."""
    cols = _columns(tgt, m.target_table)
    if not cols:
        return [f"the target table {q(m.target_table)} does not exist"]
    if m.tag_column is not None:
        return _merged_differences(info, cols)
    want = [(c.name, c.decl_type) for c in info.columns]
    have = [(n, d) for n, d, _ in cols]
    out = []
    if have != want:
        theirs, ours = dict(want), dict(have)
        out += [f"column {q(n)}: legacy only" for n, _ in want if n not in ours]
        out += [f"column {q(n)}: target only" for n, _ in have if n not in theirs]
        out += [
            f"column {q(n)}: declared {_type(d)} in legacy, {_type(ours[n])} in target"
            for n, d in want
            if n in ours and ours[n] != d
        ]
        if not out:
            out.append(
                f"column order differs: legacy ({', '.join(n for n, _ in want)}), "
                f"target ({', '.join(n for n, _ in have)})"
            )
    key = [n for n, _, pk in sorted((c for c in cols if c[2]), key=lambda c: c[2])]
    if key != list(info.key):
        out.append(f"key differs: legacy ({', '.join(info.key)}), target ({', '.join(key)})")
    return out + _unique_differences(info, tgt, m)


def _merged_differences(info: TableInfo, cols: list[tuple[str, str, int]]) -> list[str]:
    """A merged table has every column of the member, each of the member's affinity
    (members may spell a type differently: `INT` and `INTEGER` store alike)."""
    union = {n.lower(): d for n, d, _ in cols}
    strict = is_strict(info.create_sql)
    out = []
    for c in info.columns:
        have = union.get(c.name.lower())
        if have is None:
            out.append(f"column {q(c.name)}: legacy only (the merged table lacks it)")
        elif affinity(have) != affinity(stored_type(c.decl_type, strict)):
            out.append(
                f"column {q(c.name)}: declared {_type(c.decl_type)} in legacy, "
                f"{_type(have)} in target"
            )
    return out


def _unique_differences(info: TableInfo, tgt: apsw.Connection, m: TableMapping) -> list[str]:
    legacy = {
        (tuple(cols), tuple(k.upper() for k in colls or ["BINARY"] * len(cols)))
        for cols, colls in zip(
            info.unique_sets,
            info.unique_collations or [[]] * len(info.unique_sets),
            strict=False,
        )
    }
    target = {
        (tuple(c), tuple(x.upper() for x in k)) for c, k in unique_indexes(tgt, m.target_table)
    }

    def say(u) -> str:  # noqa: ANN001
        cols, colls = u
        terms = [
            c if k == "BINARY" else f"{c} COLLATE {k}" for c, k in zip(cols, colls, strict=True)
        ]
        return f"UNIQUE ({', '.join(terms)})"

    return [f"{say(u)}: legacy only" for u in sorted(legacy - target)] + [
        f"{say(u)}: target only" for u in sorted(target - legacy)
    ]


def describe(diffs: list[str]) -> str:
    return "the target table's shape differs from the legacy table's: " + "; ".join(diffs)
