"""Validation reports: what one verification pass proved, per target, for a stage sign-off.

A migration stage is signed off per consolidated file, so each target gets its own pair:
`validation-<target>.json`, the record (every `TableResult` exactly as the verifier made it,
for tools and audits), and `validation-<target>.md`, the same facts for the person signing.
Both are written atomically, so a reader never attaches half a report, and 0600 in 0700
folders like the state dir, since the differences carry the rows' values. `render_summary`
is the few lines `cdc verify` prints: only what needs attention, then the totals.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import msgspec

from cdc.fsutil import makedirs_private, write_private
from verifier.model import KeyDiff, TableResult, VerifyReport

CHECKSUM_CHARS = 16  # enough to compare by eye; the JSON has the whole digest
MAX_CELL = 200  # a long TEXT or BLOB literal is cut in the Markdown only, never in the JSON


class Totals(msgspec.Struct):
    source_rows: int = 0
    target_rows: int = 0
    tables_equal: int = 0
    tables_diverged: int = 0
    tables_unsettled: int = 0
    tables_skipped: int = 0


class TargetValidation(msgspec.Struct):
    """The JSON report of one target. Pass times are Unix seconds, like the tables' own."""

    target: str
    path: str
    verdict: str  # equal / diverged / unsettled / skipped, as `VerifyReport.verdict`
    generated_at: str  # ISO 8601, UTC
    started_at: float
    finished_at: float
    config_path: str
    tables: list[TableResult]
    totals: Totals


VERDICT_WORDS = {
    "equal": "EQUAL: every mapped table holds the same rows, values and storage classes "
    "as its legacy table.",
    "diverged": "DIVERGED: some tables differ from their legacy tables; the keys are listed "
    "under Differences.",
    "unsettled": "NOT PROVEN: nothing was found wrong, but some rows kept changing during the "
    "pass and could not be compared; run the verification again.",
    "skipped": "INCOMPLETE: some tables could not be verified; the reasons are listed under "
    "Differences.",
}


def _totals(tables: list[TableResult]) -> Totals:
    t = Totals()
    for r in tables:
        t.source_rows += r.source_rows
        t.target_rows += r.target_rows
        field = f"tables_{r.state}"
        if hasattr(t, field):  # "cut over", "finalized": not verified, not counted
            setattr(t, field, getattr(t, field) + 1)
    return t


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomic(path: str, data: bytes) -> None:
    """0600 whatever the umask: a report lists the values of the rows that differ."""
    # per process: the CLI and the daemon may both write
    write_private(path, data, tmp=f"{path}.{os.getpid()}.tmp")


def write_validation_reports(
    report: VerifyReport, out_dir: str, targets: dict[str, str]
) -> list[str]:
    """Write `validation-<target>.md` and `.json` per target with tables in the report.

    `targets` maps target names to their files (the plan's `targets`). Target names are
    checked by the config (letters, digits, `_ . -`), so they are safe in file names.
    Returns the paths written, Markdown then JSON for each target.
    """
    by_target: dict[str, list[TableResult]] = {}
    for t in report.tables:
        by_target.setdefault(t.target, []).append(t)
    makedirs_private(out_dir)  # folders it creates are 0700; an existing one is the operator's
    generated = _iso(time.time())
    written = []
    for name in [*targets, *sorted(by_target.keys() - targets.keys())]:
        tables = by_target.get(name)
        if not tables:
            continue
        sub = VerifyReport(report.started_at, report.finished_at, tables, report.config_path)
        v = TargetValidation(
            name,
            targets.get(name, ""),
            sub.verdict,
            generated,
            report.started_at,
            report.finished_at,
            report.config_path,
            tables,
            _totals(tables),
        )
        base = os.path.join(out_dir, f"validation-{name}")
        _write_atomic(base + ".md", render_markdown(v).encode())
        _write_atomic(base + ".json", msgspec.json.format(msgspec.json.encode(v)) + b"\n")
        written += [base + ".md", base + ".json"]
    return written


# -- Markdown ---------------------------------------------------------------------------------
def _one_line(s: str) -> str:
    return s.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")


def _row(*cells: object) -> str:
    """A table row: one line, and a `|` inside a cell escaped so it does not end the cell."""
    return "| " + " | ".join(_one_line(str(c)).replace("|", "\\|") for c in cells) + " |"


def _code(s: str) -> str:
    """A code span, whatever backticks the text holds (SQL literals may)."""
    s = _one_line(s)
    if len(s) > MAX_CELL:
        s = f"{s[:MAX_CELL]}… ({len(s)} chars)"
    run = longest = 0
    for c in s:
        run = run + 1 if c == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _values(vals: list[str] | None) -> str:
    return "(absent)" if vals is None else _code(", ".join(vals))


def _checksum(d: str) -> str:
    return _code(d[:CHECKSUM_CHARS]) if d else "—"


def _diff_row(d: KeyDiff) -> str:
    cols = _code(", ".join(d.columns)) if d.columns else ""
    return _row(d.kind, _code(", ".join(d.key)), cols, _values(d.source), _values(d.target))


HOW_TO_READ = (
    "## How to read this",
    "",
    "Each checksum covers the rows compared in chunks, in key order, on its side: the "
    "legacy and consolidated checksums are equal exactly when those rows are. While bots "
    "write, a row changing while its chunk is read is compared again, by key, once the "
    "target has applied the change, and counted under re-checked; it may leave the "
    "checksums different on a table whose state is equal (the state is the judgment). "
    "Equal checksums with the verdict EQUAL mean the same "
    "rows, the same values and the same storage classes (`1`, `1.0`, `'1'` and `X'31'` "
    "all differ). "
    "Values are SQL literals, the whole row in the table's column order; line breaks in "
    "them are shown as ⏎ and long ones "
    "are cut here, not in the JSON report next to this file. Missing: in the legacy "
    "table only; extra: in the target only; different: both, with other values.",
    "",
)


def _md_header(v: TargetValidation) -> list[str]:
    """The verdict first: it is what the person signing the stage reads before anything."""
    t = v.totals
    n = len(v.tables)
    return [
        f"# Validation report: target {v.target}",
        "",
        f"**Verdict: {VERDICT_WORDS.get(v.verdict, v.verdict)}**",
        "",
        f"- Target file: {_code(v.path) if v.path else '(not configured)'}",
        f"- Generated: {v.generated_at}",
        f"- Verification pass: {_iso(v.started_at)} to {_iso(v.finished_at)}"
        f" ({v.finished_at - v.started_at:.1f} s)",
        f"- Config: {_code(v.config_path) if v.config_path else '(none)'}",
        f"- Tables: {n} ({t.tables_equal} equal, {t.tables_diverged} diverged, "
        f"{t.tables_unsettled} unsettled, {t.tables_skipped} skipped); "
        f"{t.source_rows} legacy rows, {t.target_rows} target rows",
        "",
    ]


def _md_tables(v: TargetValidation) -> list[str]:
    """Every table, equal ones too: the sign-off covers the whole target, not its problems."""
    out = [
        "## Tables",
        "",
        "| legacy source.table | target table | legacy rows | target rows | re-checked "
        "| legacy checksum | consolidated checksum | state |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in v.tables:
        out.append(
            _row(
                _code(r.name),
                _code(r.target_table),
                r.source_rows,
                r.target_rows,
                r.rechecked_rows,
                _checksum(r.source_digest),
                _checksum(r.target_digest),
                r.state,
            )
        )
    return out


def _md_table_differences(r: TableResult) -> list[str]:
    """Rows are listed only when the shapes agree: with other columns every key would differ."""
    out = [f"### {_code(r.name)} → {_code(r.target_table)}: {r.state}", ""]
    if r.reason:
        out += [f"Reason: {_one_line(r.reason)}", ""]
    if r.shape:
        out += ["Shape differences (rows are compared once the shapes agree):", ""]
        out += [f"- {_one_line(d)}" for d in r.shape] + [""]
    if r.state == "diverged" and not r.shape and (r.diverged_count or not r.reason):
        out += [
            f"{r.diverged_count} diverged key(s).",
            "",
            "| kind | key | columns | legacy values | target values |",
            "|---|---|---|---|---|",
            *(_diff_row(d) for d in r.diverged),
            "",
        ]
        if r.diverged_count > len(r.diverged):
            out += [f"{r.diverged_count - len(r.diverged)} more not listed.", ""]
    if r.unsettled_keys:
        keys = ", ".join(_code(", ".join(k)) for k in r.unsettled_keys)
        out += [f"Keys that kept changing: {keys}", ""]
    return out


def _md_differences(v: TargetValidation) -> list[str]:
    """Said even when empty, so a report with no differences is not mistaken for a cut one."""
    out = ["", "## Differences", ""]
    attention = [r for r in v.tables if r.state != "equal"]
    if not attention:
        out += ["None: every table compared equal.", ""]
    for r in attention:
        out += _md_table_differences(r)
    return out


def render_markdown(v: TargetValidation) -> str:
    return "\n".join([*_md_header(v), *_md_tables(v), *_md_differences(v), *HOW_TO_READ])


# -- CLI summary ------------------------------------------------------------------------------
def render_summary(report: VerifyReport) -> str:
    """One line per table needing attention, then the totals: what a terminal needs."""
    lines = []
    for r in report.tables:
        if r.state == "equal":
            continue
        if r.shape:
            detail = f"shape differs: {'; '.join(r.shape)}"
        elif r.state == "diverged" and (r.diverged_count or not r.reason):
            detail = f"{r.diverged_count} diverged key(s)"
        elif r.unsettled_keys:
            detail = f"{len(r.unsettled_keys)} key(s) kept changing"
        else:
            detail = r.reason or ""
        line = f"{r.name} -> {r.target}.{r.target_table}: {r.state}"
        lines.append(f"{line}: {detail}" if detail else line)
    t = _totals(report.tables)
    rechecked = sum(r.rechecked_rows for r in report.tables)
    lines.append(
        f"{report.verdict}: {len(report.tables)} tables ({t.tables_equal} equal, "
        f"{t.tables_diverged} diverged, {t.tables_unsettled} unsettled, "
        f"{t.tables_skipped} skipped), {t.source_rows} legacy rows, {t.target_rows} target "
        f"rows, {rechecked} re-checked, {report.finished_at - report.started_at:.1f} s"
    )
    return "\n".join(lines)
