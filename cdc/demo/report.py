"""The final verdict, by the product's verifier: each consolidated table against its legacy
table (keys, values, storage classes), what differs, and the validation reports."""

from __future__ import annotations

from pathlib import Path

import msgspec

from cdc.config import Config
from cdc.demo.show import Echo
from cdc.planning.plan import Plan
from verifier import KeyDiff, TableResult, VerifyReport, select_tables, verify_tables
from verifier.report import write_validation_reports

SHOWN_KEYS = 3  # diverged keys printed per table; the validation reports list more
MAX_VALUE = 60  # characters of one SQL literal on a terminal line
MAX_ROW = 100  # characters of a whole row on a terminal line


def _verify(cfg: Config, plan: Plan, out_dir: Path, echo: Echo) -> VerifyReport:
    """One pass of `cdc verify --report out_dir` over every mapped table, shown table by table."""
    settings = msgspec.structs.replace(cfg.verify, rows_per_second=0.0)  # as `cdc verify`
    report = verify_tables(cfg, plan, select_tables(plan), settings).report
    _show_report(report, echo)
    paths = write_validation_reports(report, str(out_dir), dict(plan.targets))
    echo(f"  validation reports (verdict {report.verdict}), to sign the migration stage off:")
    for md in paths[::2]:
        echo(f"    {md}  (and .json)")
    return report


def _show_report(report: VerifyReport, echo: Echo) -> bool:
    """One line per table, the keys of any that differ, totals; True only if all are equal."""
    tables = report.tables
    dest = [f"{r.target}.{r.target_table}" for r in tables]
    ws = max([6] + [len(r.source) for r in tables])
    wt = max([5] + [len(r.table) for r in tables])
    wd = max([12] + [len(x) for x in dest])
    echo(
        f"  {'source':<{ws}}  {'table':<{wt}}  {'consolidated':<{wd}}  "
        f"{'legacy':>7}  {'consol.':>7}  result"
    )
    for r, to in zip(tables, dest, strict=True):
        echo(
            f"  {r.source:<{ws}}  {r.table:<{wt}}  {to:<{wd}}  "
            f"{r.source_rows:>7}  {r.target_rows:>7}  {r.state.upper()}"
        )
        for ln in _attention(r):
            echo(f"      {ln}")
    counts = {s: sum(r.state == s for r in tables) for s in ("equal", "diverged", "unsettled")}
    skipped = len(tables) - sum(counts.values())
    echo(
        f"  total: {len(tables)} tables, {counts['equal']} EQUAL, {counts['diverged']} DIVERGED, "
        f"{counts['unsettled']} UNSETTLED, {skipped} SKIPPED; "
        f"{sum(r.source_rows for r in tables)} legacy rows, "
        f"{sum(r.target_rows for r in tables)} consolidated rows "
        f"({report.finished_at - report.started_at:.1f}s)"
    )
    return report.verdict == "equal" and bool(tables)


def _attention(r: TableResult) -> list[str]:
    """Why a table is not equal: its diverged keys (legacy vs consolidated), or the reason."""
    out = [_key_diff(d) for d in r.diverged[:SHOWN_KEYS]]
    if r.diverged_count > len(out):
        out.append(f"... {r.diverged_count - len(out)} more diverged key(s), see the reports")
    if r.unsettled_keys:
        keys = ", ".join(_key(k) for k in r.unsettled_keys[:SHOWN_KEYS])
        out.append(f"kept changing: key {keys}{', ...' if len(r.unsettled_keys) > 3 else ''}")
    if r.reason:
        out.append(f"reason: {r.reason}")
    return out


def _key_diff(d: KeyDiff) -> str:
    head = f"{d.kind}, key {_key(d.key)}"
    if d.kind == "missing":
        return f"{head}: legacy row ({_row(d.source)}), none in the consolidated table"
    if d.kind == "extra":
        return f"{head}: consolidated row ({_row(d.target)}), none in the legacy table"
    src, tgt = d.source or [], d.target or []
    at = [i for i, (a, b) in enumerate(zip(src, tgt, strict=False)) if a != b]
    if len(at) != len(d.columns) or len(src) != len(tgt):  # cannot pair names with values
        return f"{head} ({', '.join(d.columns)}): legacy ({_row(src)}), consolidated ({_row(tgt)})"
    return f"{head}: " + "; ".join(
        f"{c}: legacy {_lit(src[i])}, consolidated {_lit(tgt[i])}"
        for c, i in zip(d.columns, at, strict=True)
    )


def _key(key: list[str]) -> str:
    return key[0] if len(key) == 1 else f"({', '.join(key)})"


def _row(values: list[str] | None) -> str:
    """A whole row's literals on one terminal line, the row cut if long."""
    text = ", ".join(_lit(v) for v in values or [])
    return text if len(text) <= MAX_ROW else f"{text[:MAX_ROW]}…"


def _lit(v: str) -> str:
    """A SQL literal on one terminal line, cut if long (the reports have it whole)."""
    v = v.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")
    return v if len(v) <= MAX_VALUE else f"{v[:MAX_VALUE]}… ({len(v)} chars)"
