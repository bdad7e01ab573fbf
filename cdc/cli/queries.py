"""`cdc queries`: the application's queries on the legacy and the consolidated files, answers,
latencies and plans compared (cdc.application.queries). Usable in CI before a cutover: the
exit code says whether every answer is the same and every p95 within the budget."""

from __future__ import annotations

import sys

import click
import msgspec

from cdc.cli.base import (
    EXIT_NOT_PROVEN,
    EXIT_OVER_BUDGET,
    EXIT_WRONG_ANSWER,
    _load,
    _run,
    cli,
    config_option,
)


@cli.command()
@click.argument("queries_file", required=False, type=click.Path(dir_okay=False))
@click.option("--recorded", is_flag=True, help="Also the legacy queries cdc.pool recorded.")
@config_option
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Timed runs per side (after one warm-up).",
)
@click.option(
    "--budget-ms",
    type=float,
    default=500.0,
    show_default=True,
    help="Most a consolidated p95 may take.",
)
@click.option("--json", "as_json", is_flag=True, help="The report as JSON on stdout.")
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the report as Markdown to this file.",
)
@click.option(
    "--apply-indexes",
    is_flag=True,
    help="Create the suggested indexes on the consolidated files, then run again.",
)
def queries(
    queries_file, recorded, config_path, runs, budget_ms, as_json, markdown_path, apply_indexes
) -> None:  # noqa: ANN001
    """Run each query on its legacy file and, rewritten, on its consolidated file: same
    answers (values, storage classes, order), p50/p95/p99, EXPLAIN QUERY PLAN compared.
    Exit 15 on a wrong answer, 11 on a query that could not be rewritten
    (so not compared), 16 on a p95 over the budget."""
    from cdc.application import queries as q
    from cdc.application.names import legacy_names
    from cdc.application.query_report import markdown
    from cdc.errors import ConfigError

    cfg = _load(config_path)

    def run() -> q.QueriesReport:
        if not queries_file and not recorded:
            raise ConfigError("no queries: give a QUERIES_FILE, --recorded, or both")
        names = legacy_names(cfg)
        specs = q.load_queries(queries_file, names) if queries_file else []
        others: list[q.RecordedOnly] = []
        if recorded:
            more, others = q.recorded_queries(cfg.state_dir, names)
            specs += more
        report = q.run_queries(cfg, names, specs, runs, budget_ms, others)
        if apply_indexes and any(r.suggested_indexes for r in report.queries):
            applied = q.apply_indexes(cfg, report)
            report = q.run_queries(cfg, names, specs, runs, budget_ms, others)
            report.applied_indexes = applied
        return report

    report = _run(run)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(markdown(report))
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        for r in report.queries:
            p95 = f"{r.consolidated.p95_ms:.3f} ms" if r.consolidated else "-"
            extra = r.difference or r.error or ""
            click.echo(f"{r.status:15} {r.name}: p95 {p95} {extra}".rstrip())
        click.echo(f"{q.exit_status(report)}: {len(report.queries)} queries")
    status = q.exit_status(report)
    if status == "wrong answer":
        sys.exit(EXIT_WRONG_ANSWER)
    if status == "not proven":
        sys.exit(EXIT_NOT_PROVEN)
    if status == "over budget":
        sys.exit(EXIT_OVER_BUDGET)
