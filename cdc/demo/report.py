"""The final verdict: each consolidated table against its legacy table, and why one differs."""

from __future__ import annotations

import apsw

from cdc.config import Config
from cdc.demo.show import Echo
from cdc.inventory import table_info
from cdc.plan import Plan
from cdc.sqlconn import open_legacy
from cdc.sqlident import q
from verifier.compare import TableDiff, canonical


def _show_diffs(diffs: list[TableDiff], plan: Plan, cfg: Config, echo: Echo) -> bool:
    dest = [f"{d.target}.{d.target_table}" for d in diffs]
    ws = max([6] + [len(d.source) for d in diffs])
    wt = max([5] + [len(d.table) for d in diffs])
    wd = max([12] + [len(x) for x in dest])
    echo(
        f"  {'source':<{ws}}  {'table':<{wt}}  {'consolidated':<{wd}}  "
        f"{'legacy':>7}  {'consol.':>7}  result"
    )
    for d, to in zip(diffs, dest, strict=True):
        echo(
            f"  {d.source:<{ws}}  {d.table:<{wt}}  {to:<{wd}}  "
            f"{d.source_rows:>7}  {d.target_rows:>7}  {'EQUAL' if d.equal else 'DIFFERENT'}"
        )
        if d.equal:
            continue
        for what, keys in (("missing", d.missing), ("extra", d.extra), ("changed", d.different)):
            if keys:
                sample = ", ".join(_key_text(k) for k in keys[:3])
                more = ", ..." if len(keys) > 3 else ""
                echo(f"      {what} rows, key {sample}{more}")
        if d.different:
            try:
                echo(f"      e.g. {_explain(d, plan, cfg)}")
            except Exception as e:  # noqa: BLE001 - an explanation is a courtesy
                echo(f"      (could not read the differing row: {e})")
    equal = sum(d.equal for d in diffs)
    src = sum(d.source_rows for d in diffs)
    tgt = sum(d.target_rows for d in diffs)
    echo(
        f"  total: {len(diffs)} tables, {equal} EQUAL, {len(diffs) - equal} DIFFERENT; "
        f"{src} legacy rows, {tgt} consolidated rows"
    )
    return equal == len(diffs) and bool(diffs)


def _key_value(k: list) -> object:
    return k[1] if len(k) > 1 else None  # a `canonical` tuple: (storage class, value)


def _key_text(key: list) -> str:
    vals = [_key_value(k) for k in key]
    return repr(vals[0]) if len(vals) == 1 else repr(tuple(vals))


def _explain(d: TableDiff, plan: Plan, cfg: Config) -> str:
    """Which columns differ in the first differing row, legacy value vs consolidated value."""
    m = plan.mapping(d.source, d.table)
    src = open_legacy(plan.source(d.source).path, cfg.daemon.busy_timeout_ms, readonly=True)
    tgt = apsw.Connection(plan.targets[d.target], flags=apsw.SQLITE_OPEN_READONLY)
    try:
        info = table_info(src, d.table)
        kexpr = [q(k) for k in info.key] or [info.rowid_alias()]
        where = " AND ".join(f"{e} IS ?" for e in kexpr)
        args = [_key_value(k) for k in d.different[0]]
        cols = info.column_names
        sel = ", ".join(q(c) for c in cols)
        a = src.execute(f"SELECT {sel} FROM {q(d.table)} WHERE {where}", args).fetchone()
        if m is not None and m.tag_column:
            where, args = f"{where} AND {q(m.tag_column)} IS ?", [*args, m.tag]
        b = tgt.execute(f"SELECT {sel} FROM {q(d.target_table)} WHERE {where}", args).fetchone()
    finally:
        src.close()
        tgt.close()
    if a is None or b is None:
        return f"key {_key_text(d.different[0])} changed while comparing"
    parts = [
        f"{c}: legacy {x!r}, consolidated {y!r}"
        for c, x, y in zip(cols, a, b, strict=True)
        if canonical(x) != canonical(y)
    ]
    return f"key {_key_text(d.different[0])}: " + "; ".join(parts)
