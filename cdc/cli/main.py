"""The `cdc` command: a thin shell over the engine.

Each command loads the config, calls one engine function and formats the result. Errors
from the engine (`CdcError`) are turned into one line on stderr, an optional hint, and the
error class's exit code, in one place (`_run`).
"""

from __future__ import annotations

import sys
import time

import click
import msgspec

from cdc.cli import base as cli_base
from cdc.cli.base import (  # noqa: F401 - the EXIT_* results, documented in one table
    EXIT_DIVERGED,
    EXIT_NOT_PROVEN,
    EXIT_OVER_BUDGET,
    EXIT_TIMEOUT,
    EXIT_UNREVIEWED_REFS,
    EXIT_WRONG_ANSWER,
    _fail,
    _load,
    _report,
    _run,
    cli,
    config_option,
    log_group,
)
from cdc.errors import ConfigError, LogCorruptError, PlanError


@cli.command()
@config_option
def install(config_path: str) -> None:
    """Check the mapping and install capture triggers in every legacy database."""
    from cdc.capture import install as ops

    cfg = _load(config_path, postgres=True)
    report = _run(lambda: ops.install(cfg))
    for s in report.sources:
        click.echo(
            f"{s.source}: capturing {len(s.captured)} tables, {len(s.excluded)} excluded ({s.path})"
        )
    click.echo(f"installed: {report.tables} tables in {len(report.sources)} databases")


@cli.command()
@config_option
def uninstall(config_path: str) -> None:
    """Remove every trigger and capture table sqlite-cdc added (and nothing else)."""
    from cdc.capture import install as ops

    cfg = _load(config_path)
    removed = [r for r in _run(lambda: ops.uninstall(cfg)) if r.tables_released]
    for r in removed:
        click.echo(f"{r.source}: capture removed from {r.tables_released} tables ({r.path})")
    if not removed:  # finalized, never installed, or already removed
        click.echo("nothing to remove: no capture of ours in the legacy files or the targets")


@cli.command()
@config_option
def check(config_path: str) -> None:
    """Validate the config and the table mapping against the legacy files, changing nothing."""
    from cdc.planning.pg_fit import pg_misfits, pg_orphans
    from cdc.planning.resolve import review_plan

    cfg = _load(config_path, postgres=True)
    plan = _run(lambda: review_plan(cfg))
    n = sum(len(s.tables) for s in plan.sources)
    x = sum(len(s.excluded) + len(s.uncapturable) for s in plan.sources)
    # what PostgreSQL cannot make, and the values it cannot hold: listed together
    misfits = list(plan.problems) + [m.line() for m in _run(lambda: pg_misfits(cfg, plan))]
    if misfits:
        _fail(
            PlanError(
                f"{len(misfits)} thing(s) PostgreSQL cannot hold as the legacy files do:\n  - "
                + "\n  - ".join(misfits),
                hint="`cdc docs postgres` says what each type carries; exclude or fix those "
                "rows, or map the table to a SQLite target",
            )
        )
    for w in _run(lambda: pg_orphans(cfg, plan)):  # the keys are added NOT VALID
        click.echo(f"warning: {w.line()}", err=True)
    click.echo(f"ok: {len(plan.sources)} sources, {n} tables mapped, {x} excluded")


@cli.command()
@config_option
@click.option(
    "--metrics-addr",
    default=None,
    metavar="[HOST:]PORT",
    help="Serve Prometheus metrics there (a bare port binds to 127.0.0.1 only).",
)
def run(config_path: str, metrics_addr: str | None) -> None:
    """Run the daemon in the foreground until SIGINT/SIGTERM."""
    import signal
    import threading

    from cdc.daemon.daemon import run_daemon

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cfg = _load(config_path, postgres=True)
    serving = []

    def started(daemon) -> None:  # noqa: ANN001 - a cdc.daemon.Daemon
        if metrics_addr and not serving:
            from cdc.daemon import metrics

            try:  # the plan is resolved at each scrape: a new table must show there
                server = metrics.serve(cfg, metrics_addr)
                host, port = server[0].server_address[:2]  # port 0: the one it was given
                serving.extend([server, f"http://{host}:{port}/metrics"])
            except (OSError, ValueError) as e:
                _fail(ConfigError(f"--metrics-addr {metrics_addr}: {e}"))
        daemon.metrics_url = serving[-1] if serving else None

    daemon, code = _run(lambda: run_daemon(cfg, stop, started))
    if daemon.fatal is not None:
        _report(daemon.fatal)
    sys.exit(code)


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable fields).")
@click.option("--watch", "watch", type=float, default=None, help="Refresh every N seconds.")
def status(config_path: str, as_json: bool, watch: float | None) -> None:
    """Show capture, log and apply positions and the backlog per source and target."""
    from cdc.daemon.status import collect_status
    from cdc.daemon.status_view import render_status

    cfg = _load(config_path, postgres=True)
    prev, prev_t = None, 0.0
    try:
        while True:
            st = _run(lambda: collect_status(cfg))
            now = time.monotonic()
            if as_json:
                click.echo(msgspec.json.encode(st).decode())
            else:
                if watch:
                    click.clear()
                click.echo(render_status(st, prev, now - prev_t))
            if not watch:
                return
            prev, prev_t = st, now
            time.sleep(watch)
    except KeyboardInterrupt:  # Ctrl-C ends --watch: the normal way out, exit 0
        if not as_json:
            click.echo("")


def _verify_options(fn):  # noqa: ANN001, ANN202
    for opt in reversed(
        [
            config_option,
            click.argument("tables", nargs=-1),
            click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
            click.option(
                "--report",
                "report_dir",
                type=click.Path(file_okay=False),
                help="Write validation-<target>.md and .json into this folder.",
            ),
            click.option("--chunk-rows", type=int, default=None, help="Rows per chunk."),
            click.option(
                "--rate",
                type=float,
                default=None,
                help="Max legacy rows per second; default verify.rows_per_second "
                "(bots share the disk and, in rollback-journal mode, wait for our reads); "
                "0: no limit, for quiet sources.",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


@cli.command()
@_verify_options
@click.option("--repair", "do_repair", is_flag=True, help="Repair what differs (needs the daemon).")
def verify(config_path, tables, as_json, report_dir, chunk_rows, rate, do_repair) -> None:  # noqa: ANN001
    """Prove legacy == consolidated, table by table, while the bots write.

    TABLES are globs on `source.table` or `target.table` (default: every mapped table).
    Exit code 0 only when every table is equal; 10 when rows differ; 11 when a table
    could not be proven (still copying, or rows kept changing).
    """
    _verify_cmd(config_path, tables, as_json, report_dir, chunk_rows, rate, do_repair)


@cli.command()
@_verify_options
def repair(config_path, tables, as_json, report_dir, chunk_rows, rate) -> None:  # noqa: ANN001
    """Re-copy exactly the diverged rows through the running daemon, then verify again."""
    _verify_cmd(config_path, tables, as_json, report_dir, chunk_rows, rate, True)


def _verify_cmd(config_path, tables, as_json, report_dir, chunk_rows, rate, do_repair) -> None:  # noqa: ANN001
    from cdc.planning.resolve import resolve_plan
    from cdc.stages.finalized import with_finalized
    from verifier import estimate_rows, verify_tables
    from verifier.repair import repair_diverged
    from verifier.report import render_summary, write_validation_reports
    from verifier.run import chosen_tables

    cfg = _load(config_path, postgres=True)
    plan = _run(lambda: with_finalized(cfg, resolve_plan(cfg)))  # finalized: named as such
    chosen = _run(lambda: chosen_tables(plan, list(tables)))
    settings = msgspec.structs.replace(
        cfg.verify,
        rows_per_second=cfg.verify.rows_per_second if rate is None else rate,
        chunk_rows=chunk_rows or cfg.verify.chunk_rows,
    )
    show_bar = not as_json and sys.stderr.isatty()
    total = estimate_rows(plan, chosen) if show_bar else 0
    with click.progressbar(
        length=max(total, 1), label="verifying", file=sys.stderr if show_bar else _Null()
    ) as bar:
        found = _run(lambda: verify_tables(cfg, plan, chosen, settings, on_chunk=bar.update))
    report = found.report
    if do_repair and found.keys:
        click.echo(
            f"repairing {sum(len(k) for k in found.keys.values())} rows in {len(found.keys)} tables",
            err=True,
        )
        report = _run(lambda: repair_diverged(cfg, plan, found, settings)).report
    if report_dir:
        for path in write_validation_reports(report, report_dir, dict(plan.targets)):
            click.echo(f"wrote {path}", err=True)
    click.echo(msgspec.json.encode(report).decode() if as_json else render_summary(report))
    verdict = report.verdict
    sys.exit(
        0 if verdict == "equal" else EXIT_DIVERGED if verdict == "diverged" else EXIT_NOT_PROVEN
    )


@cli.command()
@config_option
@click.argument("targets", nargs=-1)
@click.option(
    "--zero-lag", is_flag=True, required=True, help="Wait until nothing captured is unapplied."
)
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
def wait(config_path: str, targets: tuple[str, ...], zero_lag: bool, timeout: float) -> None:
    """Block until every source of TARGETS (default: all) is fully applied there.

    Exit code 0 when it got there, 75 on timeout (for cutover scripts).
    """
    from cdc.cutover.lag import wait_zero_lag
    from cdc.errors import ConfigError
    from cdc.planning.resolve import resolve_plan
    from cdc.status_file import daemon_state, read_status

    cfg = _load(config_path, postgres=True)
    plan = _run(lambda: resolve_plan(cfg))
    unknown = [t for t in targets if t not in plan.targets]
    if unknown:
        _fail(ConfigError(f"no such target: {', '.join(unknown)}"))
    daemon = daemon_state(read_status(cfg.state_dir), time.time())
    if daemon.state != "running":  # nothing catches up without one: say so before waiting
        click.echo(f"warning: {_no_daemon(cfg, daemon)}", err=True)
    ok, state = _run(lambda: wait_zero_lag(cfg, plan, list(targets or plan.targets), timeout))
    for s in state:
        copying = f", initial copy pending: {', '.join(s.copying)}" if s.copying else ""
        click.echo(f"{s.source}: captured {s.captured}, behind {s.behind}{copying}")
    click.echo("zero lag" if ok else f"still behind after {timeout:g}s")
    if not ok:
        daemon = daemon_state(read_status(cfg.state_dir), time.time())
        hint = (
            _no_daemon(cfg, daemon)
            if daemon.state != "running"
            else ("the daemon runs but has not caught up: see `cdc status` for lag and errors")
        )
        click.echo(f"hint: {hint}", err=True)
    sys.exit(0 if ok else EXIT_TIMEOUT)


def _no_daemon(cfg, daemon) -> str:  # noqa: ANN001 - Config, DaemonState
    pid = f", pid {daemon.pid}" if daemon.pid else ""
    return (
        f"no cdc daemon is running on {cfg.state_dir} ({daemon.state}{pid}); "
        f"start one with `cdc run -c {cfg.config_path or 'cdc.toml'}`"
    )


@cli.command()
@config_option
@click.argument("target")
@click.option("--abort", "do_abort", is_flag=True, help="Lift the fences of an unfinished cutover.")
@click.option("--lag-timeout", type=float, default=30.0, show_default=True)
@click.option("--drain-timeout", type=float, default=30.0, show_default=True)
@click.option(
    "--refs",
    "refs_src",
    multiple=True,
    type=click.Path(),
    help="Application code (file or folder, repeatable): refuse while `cdc refs` finds an "
    "unreviewed reference to this stage in it.",
)
def cutover(
    config_path: str,
    target: str,
    do_abort: bool,
    lag_timeout: float,
    drain_timeout: float,
    refs_src: tuple[str, ...],
) -> None:
    """Cut one stage over: fence its legacy tables, drain, verify, hand over to TARGET.

    Re-running it completes an interrupted cutover. Exit code 0 once done.
    """
    from cdc.cutover import cutover as co
    from cdc.planning.resolve import resolve_plan

    cfg = _load(config_path, postgres=True)
    plan = _run(lambda: resolve_plan(cfg))
    if do_abort:
        _run(lambda: co.abort(cfg, plan, target, echo=click.echo))
        click.echo(f"{target}: cutover aborted; the bots may write to their legacy tables again")
        return
    if refs_src:
        _run(lambda: _refs_gate(cfg, target, list(refs_src)))
    rec = _run(lambda: co.cutover(cfg, plan, target, lag_timeout, drain_timeout, echo=click.echo))
    click.echo(f"{target}: cut over; the bots were fenced for {rec.pause_ms:.0f} ms")
    for line in co.instructions(plan, rec):
        click.echo(line)


def _refs_gate(cfg, target: str, src: list[str]) -> None:  # noqa: ANN001 - a Config
    from cdc.application.refs import require_reviewed

    n = require_reviewed(src, cfg, target)
    click.echo(f"{target}: cdc refs: no unreviewed reference in {n} Python files")


@cli.command()
@config_option
@click.argument("target")
@click.option("--abort", "do_abort", is_flag=True, help="Give the target back to the bots instead.")
@click.option("--drain-timeout", type=float, default=30.0, show_default=True)
def rollback(config_path: str, target: str, do_abort: bool, drain_timeout: float) -> None:
    """Give a cut-over stage back to its legacy files, with the bots' writes since.

    Fences TARGET's tables, waits until the daemon wrote their last changes back, verifies,
    lifts the legacy fences. Re-running it completes an interrupted rollback.
    """
    from cdc.cutover import rollback as rb
    from cdc.planning.resolve import resolve_plan

    cfg = _load(config_path, postgres=True)
    plan = _run(lambda: resolve_plan(cfg))
    if do_abort:
        _run(lambda: rb.abort(cfg, plan, target, echo=click.echo))
        return
    rec = _run(lambda: rb.rollback(cfg, plan, target, drain_timeout, echo=click.echo))
    click.echo(f"point the bots back at their legacy files; {rec.path} is fenced for them")


@cli.command()
@config_option
@click.argument("target")
@click.option(
    "--archive",
    "archive_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the archive copies go (default: <state_dir>/archive).",
)
def finalize(config_path: str, target: str, archive_dir: str | None) -> None:
    """End a cut-over stage: archive the legacy files it emptied (verified copies and a
    SHA-256 manifest; originals untouched) and remove capture from them."""
    from cdc.cutover.finalize import finalize as run_finalize
    from cdc.planning.resolve import resolve_plan

    cfg = _load(config_path, postgres=True)
    plan = _run(lambda: resolve_plan(cfg))
    m = _run(lambda: run_finalize(cfg, plan, target, archive_dir, echo=click.echo))
    click.echo(f"{target}: finalized; {len(m.files)} files archived, {len(m.waiting)} waiting")


class _Null:
    """A progress bar target that shows nothing (JSON output, or not a terminal)."""

    def write(self, _s: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@log_group.command(name="check")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def log_check(config_path: str, as_json: bool) -> None:
    """Verify every frame's checksum; name the segment and offset of any damage."""
    from cdc.changelog.check import check_log

    cfg = _load(config_path)
    report = check_log(cfg.log_dir)
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        for s in report.segments:
            state = "ok" if s.error is None else f"DAMAGED: {s.error}"
            if s.torn_tail:
                state += f", torn tail of {s.torn_tail} bytes (cut when the daemon starts)"
            click.echo(
                f"{s.segment}: {s.frames} frames ({s.rows} rows, {s.marks} marks), "
                f"{s.bytes} bytes, {state}"
            )
        click.echo("log ok" if report.ok else "log damaged")
    sys.exit(0 if report.ok else LogCorruptError.exit_code)


@cli.command()
@click.option(
    "--dir",
    "root",
    default="cdc-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where to build the demo.",
)
@click.option("--seconds", default=20.0, show_default=True, help="How long the bots write.")
@click.option(
    "--postgres",
    is_flag=True,
    help="Put the core target on PostgreSQL: start a private cluster of the installed "
    "server for the demo, and cut core over instead of cache.",
)
def demo(root: str, seconds: float, postgres: bool) -> None:
    """Build sample legacy DBs, run bots and the daemon, and prove the copies equal."""
    from cdc.demo.runner import run_demo

    sys.exit(_run(lambda: run_demo(root, seconds, echo=click.echo, postgres=postgres)))


# Command groups kept in their own modules; importing them registers them on `cli`.
from cdc.cli import controls, history, manual, planning, queries, refs  # noqa: E402, F401


def main() -> None:
    try:
        cli()
    except OSError as e:  # the file system said no (read-only, permission, full, ...)
        from cdc.config import file_error

        _fail(file_error(e, cli_base._loaded))


if __name__ == "__main__":
    main()
