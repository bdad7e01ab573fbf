"""The `cdc` command: a thin shell over the engine.

Each command loads the config, calls one engine function and formats the result. Errors
from the engine (`CdcError`) are turned into one line on stderr, an optional hint, and the
error class's exit code, in one place (`_run`).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

import click
import msgspec

from cdc.config import Config, load_config
from cdc.errors import CdcError, ConfigError, LogCorruptError

T = TypeVar("T")

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    default="cdc.toml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Path to cdc.toml.",
)


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except CdcError as e:
        _fail(e)


def _fail(e: CdcError) -> NoReturn:
    _report(e)
    sys.exit(e.exit_code)


def _report(e: CdcError) -> None:
    """The one place an error reaches the operator: one line, then the hint if any."""
    click.echo(f"error: {e.message}", err=True)
    if e.hint:
        click.echo(f"hint: {e.hint}", err=True)


def _load(path: str) -> Config:
    return _run(lambda: load_config(path))


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text (default) or one JSON object each (source/table/target/offset).",
)
def cli(verbose: int, log_format: str | None) -> None:
    """sqlite-cdc: replicate live legacy SQLite databases into consolidated ones."""
    from cdc import logfmt

    logfmt.configure(logging.WARNING - 10 * min(verbose, 2), log_format)


@cli.command()
@config_option
def install(config_path: str) -> None:
    """Check the mapping and install capture triggers in every legacy database."""
    from cdc import ops

    cfg = _load(config_path)
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
    from cdc import ops

    cfg = _load(config_path)
    for r in _run(lambda: ops.uninstall(cfg)):
        click.echo(f"{r.source}: capture removed from {r.tables_released} tables ({r.path})")


@cli.command()
@config_option
def check(config_path: str) -> None:
    """Validate the config and the table mapping against the legacy files, changing nothing."""
    from cdc.plan import resolve_plan

    cfg = _load(config_path)
    plan = _run(lambda: resolve_plan(cfg))
    n = sum(len(s.tables) for s in plan.sources)
    x = sum(len(s.excluded) + len(s.uncapturable) for s in plan.sources)
    click.echo(f"ok: {len(plan.sources)} sources, {n} tables mapped, {x} excluded")


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the inventory files.",
)
@click.option(
    "--mapping",
    "mapping",
    default=None,
    type=click.Path(dir_okay=False),
    help="An earlier migration_mapping.csv whose decisions are carried over.",
)
@click.option(
    "--progress/--no-progress",
    "progress",
    default=None,
    help="Progress bar on stderr (default: on a terminal, from 20 databases).",
)
def inventory(
    dirs: tuple[str, ...], out_dir: str, mapping: str | None, progress: bool | None
) -> None:
    """Find every SQLite database under DIRS (read-only) and write the inventory files."""
    from cdc.inventory_report import run_inventory, summary_lines

    bar = _ProgressBar(progress)
    try:
        result = _run(lambda: run_inventory(dirs, out_dir, mapping, progress=bar))
    finally:
        bar.close()
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for line in summary_lines(result):
        click.echo(line)


class _ProgressBar:
    """A click progress bar, made on the first report, once the number of databases is known."""

    def __init__(self, forced: bool | None) -> None:
        self.forced = forced
        self.bar = None

    def __call__(self, done: int, total: int, _relpath: str) -> None:
        if self.bar is None and done == 1:
            show = self.forced if self.forced is not None else sys.stderr.isatty() and total >= 20
            if show:
                self.bar = click.progressbar(length=total, label="inventory", file=sys.stderr)
                self.bar.__enter__()
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@cli.command(name="plan")
@click.option(
    "--inventory",
    "inventory_path",
    default="inventory.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="inventory.json written by `cdc inventory`.",
)
@click.option(
    "--mapping",
    "mapping_path",
    default="migration_mapping.csv",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The filled-in mapping (CSV), or a cdc.toml whose [targets] and [[rules]] to use.",
)
@click.option("--out", "out_path", default="cdc.toml", show_default=True, help="Config to write.")
@click.option("--target", "targets", multiple=True, help="Allowed target name (repeatable).")
@click.option("--targets-dir", default="consolidated", show_default=True)
@click.option("--state-dir", default="cdc-state", show_default=True)
def plan_cmd(inventory_path, mapping_path, out_path, targets, targets_dir, state_dir) -> None:  # noqa: ANN001
    """Turn an inventory and a mapping into a checked cdc.toml (written only if it passes)."""
    from cdc.planner import make_plan

    res = _run(
        lambda: make_plan(
            inventory_path, mapping_path, out_path, list(targets) or None, targets_dir, state_dir
        )
    )
    for t, n in sorted(res.targets.items()):
        click.echo(f"{t}: {n} tables")
    click.echo(
        f"ok: wrote {res.config_path} ({len(res.plan.sources)} sources, "
        f"{sum(res.targets.values())} tables mapped, {res.excluded} excluded, "
        f"{res.fts} FTS tables rebuilt in their target)"
    )


@cli.command()
@config_option
@click.option("--out", "out_dir", default=".", show_default=True, help="Folder to write into.")
def schema(config_path: str, out_dir: str) -> None:
    """Write each target's DDL (<target>_schema.sql) and schema_comparison.md."""
    from cdc.plan import resolve_plan
    from cdc.schema_out import write_schema

    cfg = _load(config_path)
    plan = _run(lambda: resolve_plan(cfg))
    for p in write_schema(plan, out_dir):
        click.echo(f"wrote {p}")


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

    from cdc.daemon import Daemon

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cfg = _load(config_path)
    daemon = _run(lambda: Daemon(cfg, stop_event=stop))
    if metrics_addr:
        from cdc import metrics

        try:
            metrics.serve(cfg, metrics_addr, daemon.plan)
        except (OSError, ValueError) as e:
            _fail(ConfigError(f"--metrics-addr {metrics_addr}: {e}"))
    code = daemon.run(install_signals=False)
    if daemon.fatal is not None:
        _report(daemon.fatal)
    sys.exit(code)


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable fields).")
@click.option("--watch", "watch", type=float, default=None, help="Refresh every N seconds.")
def status(config_path: str, as_json: bool, watch: float | None) -> None:
    """Show capture, log and apply positions and the backlog per source and target."""
    from cdc.status import collect_status
    from cdc.status_view import render_status

    cfg = _load(config_path)
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


EXIT_DIVERGED = 10  # a verified table differs (keys named in the output)
EXIT_NOT_PROVEN = 11  # nothing found wrong, but some table could not be proven (see reason)


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
    from cdc.errors import ConfigError
    from cdc.plan import resolve_plan
    from verifier import estimate_rows, select_tables, verify_tables
    from verifier.repair import repair_diverged
    from verifier.report import render_summary, write_validation_reports

    cfg = _load(config_path)
    plan = _run(lambda: resolve_plan(cfg))
    chosen = select_tables(plan, list(tables))
    if not chosen:
        _fail(ConfigError(f"no mapped table matches {' '.join(tables)}"))
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
    from cdc.errors import ConfigError
    from cdc.lag import wait_zero_lag
    from cdc.plan import resolve_plan

    cfg = _load(config_path)
    plan = _run(lambda: resolve_plan(cfg))
    unknown = [t for t in targets if t not in plan.targets]
    if unknown:
        _fail(ConfigError(f"no such target: {', '.join(unknown)}"))
    ok, state = _run(lambda: wait_zero_lag(cfg, plan, list(targets or plan.targets), timeout))
    for s in state:
        copying = f", initial copy pending: {', '.join(s.copying)}" if s.copying else ""
        click.echo(f"{s.source}: captured {s.captured}, behind {s.behind}{copying}")
    click.echo("zero lag" if ok else f"still behind after {timeout:g}s")
    sys.exit(0 if ok else EXIT_TIMEOUT)


@cli.command()
@config_option
@click.argument("target")
@click.option("--abort", "do_abort", is_flag=True, help="Lift the fences of an unfinished cutover.")
@click.option("--lag-timeout", type=float, default=30.0, show_default=True)
@click.option("--drain-timeout", type=float, default=30.0, show_default=True)
def cutover(
    config_path: str, target: str, do_abort: bool, lag_timeout: float, drain_timeout: float
) -> None:
    """Cut one stage over: fence its legacy tables, drain, verify, hand over to TARGET.

    Re-running it completes an interrupted cutover. Exit code 0 once done.
    """
    from cdc import cutover as co
    from cdc.plan import resolve_plan

    cfg = _load(config_path)
    plan = _run(lambda: resolve_plan(cfg))
    if do_abort:
        _run(lambda: co.abort(cfg, plan, target, echo=click.echo))
        click.echo(f"{target}: cutover aborted; the bots may write to their legacy tables again")
        return
    rec = _run(lambda: co.cutover(cfg, plan, target, lag_timeout, drain_timeout, echo=click.echo))
    click.echo(f"{target}: cut over; the bots were fenced for {rec.pause_ms:.0f} ms")
    for line in co.instructions(plan, rec):
        click.echo(line)


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
    from cdc import rollback as rb
    from cdc.plan import resolve_plan

    cfg = _load(config_path)
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
    from cdc.finalize import finalize as run_finalize
    from cdc.plan import resolve_plan

    cfg = _load(config_path)
    plan = _run(lambda: resolve_plan(cfg))
    m = _run(lambda: run_finalize(cfg, plan, target, archive_dir, echo=click.echo))
    click.echo(f"{target}: finalized; {len(m.files)} files archived, {len(m.waiting)} waiting")


EXIT_TIMEOUT = 75


class _Null:
    """A progress bar target that shows nothing (JSON output, or not a terminal)."""

    def write(self, _s: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@cli.group(name="log")
def log_group() -> None:
    """Inspect the change log."""


@log_group.command(name="check")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def log_check(config_path: str, as_json: bool) -> None:
    """Verify every frame's checksum; name the segment and offset of any damage."""
    from cdc.logcheck import check_log

    cfg = _load(config_path)
    report = check_log(cfg.log_dir)
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        for s in report.segments:
            state = "ok" if s.error is None else f"DAMAGED: {s.error}"
            click.echo(
                f"{s.segment}: {s.frames} frames ({s.rows} rows, {s.marks} marks), "
                f"{s.bytes} bytes, {state}"
            )
        click.echo("log ok" if report.ok else "log damaged")
    sys.exit(0 if report.ok else LogCorruptError.exit_code)


@log_group.command(name="tail")
@config_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new batches until Ctrl-C.")
@click.option("--from", "from_offset", type=int, default=None, help="Start at this log offset.")
@click.option("--last", type=int, default=None, help="Start with the last N events [10].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--source", default=None, help="Only this source (glob).")
@click.option("--table", default=None, help="Only this legacy table (glob).")
def log_tail(config_path, follow, from_offset, last, as_json, source, table) -> None:  # noqa: ANN001
    """Print the change log's events, one line each: rows (values as SQL literals, so
    1, 1.0, '1' and X'31' differ), schemas and marks (docs/history.md)."""
    import os
    import signal
    import threading

    from cdc import history

    cfg = _load(config_path)
    stop = threading.Event()  # Ctrl-C / SIGTERM end the output between two batches, exit 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if from_offset is None and last is None:
        last = 10
    fmt = history.event_json if as_json else history.format_event
    events = history.tail(
        cfg,
        from_offset=from_offset,
        last=last,
        follow=follow,
        source=source,
        table=table,
        stop=stop,
    )

    def show() -> None:
        for e in events:
            click.echo(fmt(e))

    try:
        _run(show)
    except BrokenPipeError:  # `| head`: the reader is gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@cli.command(name="history")
@config_option
@click.argument("table_ref", metavar="TARGET.TABLE")
@click.argument("key", nargs=-1)
@click.option("--key-json", default=None, help="The key as a JSON array, e.g. '[5]'.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def history_cmd(config_path, table_ref, key, key_json, as_json) -> None:  # noqa: ANN001
    """Every change of one row of a target table, from the retained change log.

    KEY values are read as the legacy key column would store them ("5" is 5 in an
    INTEGER key); a merged table's key may start with the tag. Says so when older
    segments were deleted and the history is incomplete.
    """
    from cdc import history as h
    from cdc.errors import ConfigError
    from cdc.plan import resolve_plan

    cfg = _load(config_path)
    plan = _run(lambda: resolve_plan(cfg, strict=False))
    target, table = _run(lambda: h.split_table_ref(plan, table_ref))
    if (key_json is None) == (not key):
        _fail(ConfigError("give the key as KEY... or as --key-json, once"))
    if key_json is not None:
        values = _run(lambda: h.key_from_json(key_json))
    else:
        values = _run(lambda: h.parse_key(plan, target, table, list(key)))
    found = _run(lambda: h.row_history(cfg, plan, target, table, values))
    click.echo(h.history_json(found) if as_json else h.format_history(found))


@cli.command(name="rebuild")
@config_option
@click.argument("target")
@click.option(
    "--as-of",
    "as_of",
    required=True,
    help="A log offset, an ISO time (UTC unless it says) or @UNIX_SECONDS.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="New file to write.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rebuild_cmd(config_path, target, as_of, out, as_json) -> None:  # noqa: ANN001
    """Write TARGET as it was right after a log offset (or time) into a new file, by
    replaying the retained change log through the replicator (docs/history.md)."""
    from cdc.history_rebuild import parse_as_of, rebuild
    from cdc.plan import resolve_plan

    cfg = _load(config_path)
    point = _run(lambda: parse_as_of(as_of))
    plan = _run(lambda: resolve_plan(cfg))
    res = _run(lambda: rebuild(cfg, plan, target, point, out))
    if as_json:
        click.echo(msgspec.json.encode(res).decode())
        return
    rows = sum(t.rows for t in res.tables)
    click.echo(
        f"{res.target} as of offset {res.offset}: {len(res.tables)} tables, {rows} rows, "
        f"{res.events} events from {res.frames} frames replayed in {res.seconds:.2f}s"
    )
    for t in res.tables:
        click.echo(f"  {t.name}: {t.rows} rows")
    click.echo(f"wrote {res.out}")


def _control_what(fn, panic: bool = False):  # noqa: ANN001, ANN202
    """The options of `cdc pause` and `cdc resume`: what to pause or resume."""
    opts = [
        click.option(
            "--harvest",
            "what",
            flag_value="harvest",
            default=True,
            help="Harvesting of the sources NAMES (the default).",
        ),
        click.option("--apply", "what", flag_value="apply", help="Applying to the targets NAMES."),
        click.option("--both", "what", flag_value="both", help="Harvest and apply, everything."),
        click.option("--cutover", "what", flag_value="cutover", help="New cutovers."),
    ]
    if panic:
        opts.append(click.option("--panic", "what", flag_value="panic", help="Lift a panic stop."))
    for opt in reversed([config_option, click.argument("names", nargs=-1), *opts]):
        fn = opt(fn)
    return fn


@cli.command()
@_control_what
def pause(config_path: str, names: tuple[str, ...], what: str) -> None:
    """Pause harvesting of the sources NAMES (default: all): the daemon stops reading their
    legacy files, and their capture rows wait there. --apply: stop applying to the targets
    NAMES; --both: everything; --cutover: refuse new cutovers. Kept across restarts until
    `cdc resume` (docs/controls.md)."""
    _steer(config_path, what, names, True)


@cli.command()
@functools.partial(_control_what, panic=True)
def resume(config_path: str, names: tuple[str, ...], what: str) -> None:
    """Undo `cdc pause` (same options); --panic lifts a panic stop so `cdc run` may start."""
    _steer(config_path, what, names, False)


def _steer(config_path: str, what: str, names: tuple[str, ...], on: bool) -> None:
    from cdc import controls

    cfg = _load(config_path)
    _show_controls(cfg, _run(lambda: controls.steer(cfg, what, list(names), on)))


def _show_controls(cfg: Config, now) -> None:  # noqa: ANN001 - cdc.controls.Controls
    from cdc.controls import describe
    from cdc.status import daemon_running

    for line in describe(now) or ["no controls in force"]:
        click.echo(line)
    if daemon_running(cfg):
        click.echo("the running daemon follows within about a second")
    else:
        click.echo("the daemon is not running; it follows these when it starts")


@cli.command()
@config_option
@click.argument("sources", nargs=-1)
@click.option(
    "--max-changes-per-second",
    type=float,
    default=None,
    help="Harvest at most this many changes per second, per source.",
)
@click.option(
    "--max-lock-ms",
    type=float,
    default=None,
    help="Keep each harvest read transaction under this many ms (adaptive batch size).",
)
@click.option("--off", is_flag=True, help="Remove the throttle.")
def throttle(
    config_path: str,
    sources: tuple[str, ...],
    max_changes_per_second: float | None,
    max_lock_ms: float | None,
    off: bool,
) -> None:
    """Slow down the harvest of SOURCES (default: all) so their bots feel it less. The
    limits replace any earlier throttle of those sources; kept until `--off`."""
    from cdc import controls

    cfg = _load(config_path)
    now = _run(
        lambda: controls.throttle(cfg, list(sources), max_changes_per_second, max_lock_ms, off)
    )
    _show_controls(cfg, now)


@cli.command()
@config_option
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the daemon to stop.",
)
def panic(config_path: str, timeout: float) -> None:
    """Stop the daemon at once (harvest, apply and its worker) and keep it stopped: it exits
    with code 9 and refuses to start until `cdc resume --panic`. Exit 0 once it stopped,
    75 if it still runs after --timeout."""
    from cdc import controls
    from cdc.status import daemon_running

    cfg = _load(config_path)
    running = daemon_running(cfg)
    _run(lambda: controls.set_panic(cfg.state_dir, True))
    click.echo(f"panic stop requested ({controls.control_dir(cfg.state_dir)}/panic)")
    if not controls.wait_daemon_gone(cfg, timeout):
        click.echo(f"the daemon still runs after {timeout:g}s", err=True)
        sys.exit(EXIT_TIMEOUT)
    what = "the daemon is stopped" if running else "no daemon was running"
    click.echo(f"{what}; it will not start until `cdc resume --panic`")


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
def demo(root: str, seconds: float) -> None:
    """Build sample legacy DBs, run bots and the daemon, and prove the copies equal."""
    from cdc.demo.runner import run_demo

    sys.exit(_run(lambda: run_demo(root, seconds, echo=click.echo)))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
