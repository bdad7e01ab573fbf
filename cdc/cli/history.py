"""`cdc log tail`, `cdc history`, `cdc rebuild`: the change log read as history
(docs/history.md). Registered on the `cdc` group by cdc.cli."""

from __future__ import annotations

import sys

import click
import msgspec

from cdc.cli.base import _fail, _load, _run, cli, config_option, log_group


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

    from cdc.history import rows as history

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
    from cdc.errors import ConfigError
    from cdc.history import rows as h
    from cdc.planning.resolve import resolve_plan
    from cdc.stages.finalized import with_finalized

    cfg = _load(config_path)
    plan = _run(lambda: with_finalized(cfg, resolve_plan(cfg, strict=False)))
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
    from cdc.history.rebuild import parse_as_of, rebuild
    from cdc.planning.resolve import resolve_plan

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
