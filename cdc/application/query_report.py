"""`cdc queries`' report in Markdown: what a reviewer reads before a cutover (the JSON is the
same `QueriesReport`, for CI). Failures first, so a long report still opens with them."""

from __future__ import annotations

from cdc.application.queries import QueriesReport, QueryResult, exit_status

_ORDER = {
    "wrong answer": 0,
    "error": 0,
    "over budget": 1,
    "not rewritable": 2,
    "fails on legacy": 2,
    "ok": 3,
}


def markdown(report: QueriesReport) -> str:
    out = [
        "# Queries: legacy against consolidated",
        "",
        f"Result: **{exit_status(report)}**. {len(report.queries)} queries, {report.runs} "
        f"timed runs per side (alternated, after one warm-up), p95 budget "
        f"{report.budget_ms:g} ms on the consolidated side.",
        "",
        f"- wrong answers or errors: {report.wrong_answers}",
        f"- over budget: {report.over_budget}",
        f"- not rewritable: {report.not_rewritable}",
        f"- failing on their legacy file too (not compared): {report.fails_on_legacy}",
        f"- plan regressions: {report.regressions}",
        "",
        "| query | status | rows | legacy p50 / p95 / p99 ms | consolidated p50 / p95 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    ordered = sorted(report.queries, key=lambda r: _ORDER.get(r.status, 0))
    for r in ordered:
        out.append(
            f"| {_cell(r.name)} | {r.status} | {r.rows_legacy} / {r.rows_consolidated} | "
            f"{_lat(r.legacy)} | {_lat(r.consolidated)} |"
        )
    for r in ordered:
        out.extend(_detail(r))
    if report.applied_indexes:
        out += ["", "## Indexes created (--apply-indexes)", ""]
        for a in report.applied_indexes:
            out.append(f"- {a.target}: `{a.sql}`{'' if a.created else ' (already there)'}")
    if report.recorded_not_run:
        out += ["", "## Recorded, not run (not a query)", ""]
        for s in report.recorded_not_run:
            out.append(f"- {s.database} ({s.count}x): `{_cell(s.sql)}`")
    return "\n".join(out) + "\n"


def _detail(r: QueryResult) -> list[str]:
    out = ["", f"## {r.name}", "", f"Source `{r.source}`, status **{r.status}**."]
    if r.error:
        out += ["", f"Error: {r.error}"]
    out += ["", "```sql", r.legacy_sql, "```"]
    if r.consolidated_sql:
        out += ["", f"On `{r.target}`:", "", "```sql", r.consolidated_sql, "```"]
        how = "in order (ORDER BY)" if r.ordered else "as multisets (no ORDER BY)"
        out += ["", f"Answers compared {how}: {'same' if r.same_answer else 'different'}."]
    if r.difference:
        out += ["", f"First difference: {r.difference}"]
    if r.legacy_plan or r.consolidated_plan:
        out += ["", "Plan, legacy:", "", "```", *r.legacy_plan, "```"]
        out += ["", "Plan, consolidated:", "", "```", *r.consolidated_plan, "```"]
    for g in r.regressions:
        out.append(f"- regression ({g.kind}): {g.detail}")
    for s in r.suggested_indexes:
        out.append(f"- suggested index (restores {s.legacy_index}): `{s.sql}`")
    return out


def _lat(lat) -> str:  # noqa: ANN001 - a Latency or None
    if lat is None:
        return "-"
    return f"{lat.p50_ms:.3f} / {lat.p95_ms:.3f} / {lat.p99_ms:.3f}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
