"""Validation reports built from real verifier structs: one pair of files per target, a JSON
record that decodes back exactly, and Markdown a person can sign off on."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from verifier.model import KeyDiff, TableResult, VerifyReport
from verifier.report import TargetValidation, render_summary, write_validation_reports

TARGETS = {"core": "/srv/consolidated/core.db", "analytics": "/srv/consolidated/an.db"}


def _report() -> VerifyReport:
    tables = [
        TableResult(
            "trading",
            "trades",
            "core",
            "trades",
            chunks=3,
            source_rows=2500,
            target_rows=2500,
            compared_rows=2498,
            rechecked_rows=2,
            source_digest="0123456789abcdef" + "f" * 16,
            target_digest="0123456789abcdef" + "f" * 16,
        ),
        TableResult(
            "trading",
            "kv",
            "core",
            "kv",
            "diverged",
            source_rows=10,
            target_rows=9,
            source_digest="aa" * 16,
            target_digest="bb" * 16,
            diverged_count=5,
            diverged=[
                KeyDiff("missing", ["'k|1'"], source=["'k|1'", "1"]),
                KeyDiff("extra", ["'k9'"], target=["'k9'", "X'31'"]),
                KeyDiff("different", ["'k3'"], ["v"], ["'k3'", "1"], ["'k3'", "1.0"]),
            ],
        ),
        TableResult(
            "bot_a",
            "lines",
            "core",
            "lines",
            "skipped",
            "initial copy still in progress",
        ),
        TableResult(
            "bot_a",
            "ticks",
            "core",
            "ticks",
            "unsettled",
            "rows kept changing; re-verify later",
            source_rows=4,
            target_rows=4,
            unsettled_keys=[["'T1'", "7"]],
        ),
    ]
    return VerifyReport(1_700_000_000.0, 1_700_000_012.5, tables, "/srv/cdc/cdc.toml")


def test_files_per_target_with_tables(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    written = write_validation_reports(_report(), str(out), TARGETS)
    assert written == [str(out / "validation-core.md"), str(out / "validation-core.json")]
    assert all(Path(p).is_file() for p in written)
    # analytics has no table in the report: no file, and no temporary file left behind
    assert sorted(p.name for p in out.iterdir()) == ["validation-core.json", "validation-core.md"]


def test_json_decodes_back_with_totals(tmp_path: Path) -> None:
    report = _report()
    write_validation_reports(report, str(tmp_path), TARGETS)
    raw = (tmp_path / "validation-core.json").read_bytes()
    v = msgspec.json.decode(raw, type=TargetValidation)
    assert (v.target, v.path, v.verdict) == ("core", TARGETS["core"], "diverged")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", v.generated_at)
    assert (v.started_at, v.finished_at) == (report.started_at, report.finished_at)
    assert v.config_path == "/srv/cdc/cdc.toml"
    assert v.tables == report.tables
    t = v.totals
    assert (t.source_rows, t.target_rows) == (2514, 2513)
    assert (t.tables_equal, t.tables_diverged, t.tables_unsettled, t.tables_skipped) == (1, 1, 1, 1)
    assert b"\n  " in raw  # indented for people reading it in a review


def test_verdict_per_target(tmp_path: Path) -> None:
    report = _report()
    quiet = TableResult("bot_a", "trades", "analytics", "bot_a_trades", source_rows=3)
    report.tables.append(quiet)
    written = write_validation_reports(report, str(tmp_path), TARGETS)
    assert len(written) == 4
    an = msgspec.json.decode(
        (tmp_path / "validation-analytics.json").read_bytes(), type=TargetValidation
    )
    assert an.verdict == "equal" and an.tables == [quiet] and an.totals.tables_equal == 1
    md = (tmp_path / "validation-analytics.md").read_text()
    assert "Verdict: EQUAL" in md and "None: every table compared equal." in md


def test_markdown_rows_and_differences(tmp_path: Path) -> None:
    write_validation_reports(_report(), str(tmp_path), TARGETS)
    md = (tmp_path / "validation-core.md").read_text()
    assert md.startswith("# Validation report: target core\n")
    assert "Verdict: DIVERGED" in md
    assert "/srv/cdc/cdc.toml" in md and TARGETS["core"] in md
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    for name, state in [
        ("trading.trades", "equal"),
        ("trading.kv", "diverged"),
        ("bot_a.lines", "skipped"),
        ("bot_a.ticks", "unsettled"),
    ]:
        (row,) = [r for r in rows if r.startswith(f"| `{name}` |")]
        assert row.endswith(f"| {state} |")
    (trades,) = [r for r in rows if r.startswith("| `trading.trades` |")]
    assert "| 2500 | 2500 | 2 | `0123456789abcdef` | `0123456789abcdef` |" in trades
    assert "f" * 17 not in md  # checksums cut to 16 hex chars
    (lines,) = [r for r in rows if r.startswith("| `bot_a.lines` |")]
    assert "| — | — |" in lines  # a skipped table has no checksums
    diff = md.split("## Differences", 1)[1]
    assert "5 diverged key(s)" in diff and "2 more not listed." in diff
    assert "| missing | `'k\\|1'` |  | `'k\\|1', 1` | (absent) |" in diff
    assert "| extra | `'k9'` |  | (absent) | `'k9', X'31'` |" in diff
    assert "| different | `'k3'` | `v` | `'k3', 1` | `'k3', 1.0` |" in diff
    assert "initial copy still in progress" in diff
    assert "`'T1', 7`" in diff
    assert "## How to read this" in md


def test_pipes_and_line_breaks_never_break_a_row(tmp_path: Path) -> None:
    r = TableResult(
        "s|x",
        "t|y",
        "core",
        "t|y",
        "diverged",
        diverged_count=1,
        diverged=[KeyDiff("different", ["'a|b'"], ["c|d"], ["'x\ny'"], ["'x`|`y'"])],
    )
    write_validation_reports(VerifyReport(0.0, 1.0, [r]), str(tmp_path), TARGETS)
    md = (tmp_path / "validation-core.md").read_text()
    cells = None  # every row of a table has as many cell borders as its header
    for line in md.splitlines():
        n = len(re.findall(r"(?<!\\)\|", line))
        if not line.startswith("|"):
            cells = None
        elif cells is None:
            cells = n
        else:
            assert n == cells, line
    assert "`s\\|x.t\\|y`" in md
    assert "### `s|x.t|y` → `t|y`: diverged" in md  # outside a table a pipe is just a pipe
    assert "'x⏎y'" in md
    assert "``'x`\\|`y'``" in md  # a fence longer than the backticks inside


def test_target_without_tables_gets_no_file(tmp_path: Path) -> None:
    only_analytics = VerifyReport(0.0, 1.0, [TableResult("s", "t", "analytics", "s_t")])
    written = write_validation_reports(only_analytics, str(tmp_path), TARGETS)
    assert [Path(p).name for p in written] == [
        "validation-analytics.md",
        "validation-analytics.json",
    ]
    assert not (tmp_path / "validation-core.md").exists()
    assert write_validation_reports(VerifyReport(0.0, 1.0, []), str(tmp_path / "x"), {}) == []


def test_rewrite_replaces_the_previous_report(tmp_path: Path) -> None:
    write_validation_reports(_report(), str(tmp_path), TARGETS)
    fixed = VerifyReport(2.0, 3.0, [TableResult("trading", "kv", "core", "kv", source_rows=10)])
    write_validation_reports(fixed, str(tmp_path), TARGETS)
    v = msgspec.json.decode((tmp_path / "validation-core.json").read_bytes(), type=TargetValidation)
    assert v.verdict == "equal" and len(v.tables) == 1
    assert "Differences" in (tmp_path / "validation-core.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_summary_lists_only_what_needs_attention() -> None:
    text = render_summary(_report())
    lines = text.splitlines()
    assert lines[:3] == [
        "trading.kv -> core.kv: diverged: 5 diverged key(s)",
        "bot_a.lines -> core.lines: skipped: initial copy still in progress",
        "bot_a.ticks -> core.ticks: unsettled: 1 key(s) kept changing",
    ]
    assert len(lines) == 4 and "trading.trades" not in text
    assert lines[3].startswith("diverged: 4 tables (1 equal, 1 diverged, 1 unsettled, 1 skipped)")
    assert "2514 legacy rows, 2513 target rows, 2 re-checked, 12.5 s" in lines[3]
    quiet = VerifyReport(0.0, 0.0, [TableResult("s", "t", "core", "t", source_rows=1)])
    assert render_summary(quiet).splitlines() == [
        "equal: 1 tables (1 equal, 0 diverged, 0 unsettled, 0 skipped), 1 legacy rows, "
        "0 target rows, 0 re-checked, 0.0 s"
    ]
