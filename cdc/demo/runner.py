"""`cdc demo`: the whole product in one command, as an operator would drive it.

Its phases, as printed:

1. legacy databases: the demo's generator writes them, `cdc inventory` reads them, `cdc.toml`;
2. `cdc check`, `cdc schema`, `cdc install`;
3. the daemon started as a real `cdc run` process; the initial snapshot; the simulated bots
   (real processes) start writing and drifting their schemas;
4. live: the backlog converging while the daemon's continuous verifier proves the tables
   equal;
5. the bots stopped (SIGTERM), the backlog drained, the continuous verifier's last word;
6. the application side, the daemon still running (`cdc.demo.app_phase`): `cdc refs` on a
   generated application (the bots' database code) and `cdc queries` comparing its reads on
   the legacy and the consolidated files; a wrong answer fails the demo, an unreviewed
   reference does not (the application is not migrated);
7. the cache stage cut over, written to as a switched bot would and rolled back (no write
   lost); the daemon stopped the way an operator would (SIGTERM);
8. the product's verifier (`cdc verify --report`) on every consolidated table against its
   legacy table, writing the validation reports into `validation/` of the demo folder.

A table a bot creates while the daemon runs (the LLM cost bot's `budget_alerts`) is
mapped by a rule: the running daemon adopts it by itself (plan resolved again, capture
installed on the new table, snapshot, the other tables resumed from the change log), and
the demo shows the moment it is captured, by the same daemon process, with no operator
action (`cdc.demo.adoption`).

`--postgres` (`postgres=True`) puts the `core` target on PostgreSQL: the demo starts a
private cluster of the installed server (`cdc.demo.pg_server`), creates the `core` database
there and names it in `cdc.toml`; `cdc check` counts the legacy values against PostgreSQL's
types; the application phase compares the queries of the SQLite targets only (`cdc queries`
reads SQLite files); and the cutover round is run on `core`, the PostgreSQL stage, with the
switched bot writing through `cdc.pool` (`cdc.demo.pg_cutover_phase`). The server is stopped
and its folder removed however the demo ends.

The folder is wiped only if it is empty or carries the MARKER file a previous demo left.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from cdc.config import Config, load_config
from cdc.daemon.status import Status, collect_status
from cdc.daemon.status_view import render_status
from cdc.demo import adoption
from cdc.demo.app_phase import run_app_phase
from cdc.demo.bots import KINDS, BotProcess, start_bots, stop_bots
from cdc.demo.cutover_phase import run_cutover_round
from cdc.demo.daemon import DaemonProcess, _wait
from cdc.demo.folder import MARKER, DemoError, prepare_root
from cdc.demo.generator import generate_legacy, write_demo_config
from cdc.demo.install import _install
from cdc.demo.legacy_file import LegacyFile
from cdc.demo.live import (
    _all_equal,
    _line,
    _snapshots_done,
    _synced,
    _uncaptured,
    _verified_by,
    _verifier_counts,
)
from cdc.demo.pg_cutover_phase import run_pg_cutover_round
from cdc.demo.pg_server import sigterm_unwinds, start_server, stop_server
from cdc.demo.report import _verify
from cdc.demo.show import (
    Echo,
    _indent,
    _show_bots,
    _show_check,
    _show_daemon_log,
    _show_files,
    _show_inventory,
    _show_next,
    _show_pg_check,
    _show_schema,
)
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan
from cdc.postgres.cluster import Cluster, require_server_bin
from verifier import VerifyReport

# what cdc/cli/main.py and tests/cli/test_demo.py import from here; MARKER and DemoError live in folder.py
__all__ = ["MARKER", "DemoError", "prepare_root", "run_demo"]

SEED = 7
BOT_RATE = 50.0  # writes/s per bot: busy, but readable on a laptop
BOT_GRACE = 60.0  # seconds a bot may outlive the demo if the demo itself is killed


def run_demo(root: str, seconds: float, echo: Echo = print, postgres: bool = False) -> int:
    """Build, replicate under live writes, verify; 0 only if every table ends up equal.

    `postgres`: the `core` target on a private PostgreSQL cluster the demo starts, and the
    cutover round on `core` instead of `cache` (`cdc demo --postgres`)."""
    if postgres:
        require_server_bin()  # no server installed: one error line, before the folder is touched
    demo = _Demo(prepare_root(root), seconds, echo, postgres=postgres)
    t_start = time.monotonic()
    with sigterm_unwinds() if postgres else contextlib.nullcontext():
        return _run_phases(demo, t_start)


def _run_phases(demo: _Demo, t_start: float) -> int:
    echo = demo.echo
    try:
        echo(f"== sqlite-cdc demo in {demo.path} ==")
        echo("")
        files = _legacy_phase(demo)
        plan = _install_phase(demo)
        _start_phase(demo, plan, files)
        _live_phase(demo)
        _drain_phase(demo)
        if demo.st is not None:
            _app_phase(demo)
            _cutover_phase(demo)
        _stop_daemon(demo)
        _verify_phase(demo)
        _stop_server(demo)
        return _result(demo, t_start)
    finally:
        if demo.bots:
            stop_bots(demo.bots)
        if demo.daemon is not None:
            demo.daemon.stop()
        _stop_server(demo)


@dataclass
class _Demo:
    """What the phases hand on. The daemon and the bots live here, not in a phase's locals,
    so that `run_demo` stops them whichever phase fails."""

    path: Path
    seconds: float
    echo: Echo
    cfg: Config | None = None
    daemon: DaemonProcess | None = None
    running_plan: Plan | None = None  # what the running daemon captured at start
    new_tables: list[str] = field(default_factory=list)  # appeared since, to be adopted
    new_since: float = 0.0  # when they were first seen
    adopted: bool = False  # the daemon captured them
    bots: list[BotProcess] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)  # the bots' exit codes
    t0: float = 0.0  # when the live phase began
    live_mismatches: int = 0  # the most rows the continuous verifier found differing at once
    st: Status | None = None  # the status once drained; None if the backlog did not drain
    verified: bool = (
        False  # the daemon's continuous verifier found every table equal before it stopped
    )
    round_trip: bool = False
    app_failures: list[str] = field(default_factory=list)  # queries answering differently
    daemon_code: int = 0
    report: VerifyReport | None = None  # the final `cdc verify`
    bot_errors: int = 0
    postgres: bool = False  # `--postgres`: core on a private PostgreSQL cluster
    server: Cluster | None = None  # that cluster, while it runs

    @property
    def cfg_path(self) -> Path:
        return self.path / "cdc.toml"

    @property
    def daemon_log(self) -> Path:
        return self.path / "daemon.log"


def _legacy_phase(demo: _Demo) -> list[LegacyFile]:
    echo, path = demo.echo, demo.path
    echo(f"[1/8] legacy databases (written by the demo's own generator, seed {SEED})")
    core = None
    if demo.postgres:
        demo.server, core = start_server(echo)
    files = generate_legacy(path, seed=SEED)
    write_demo_config(path, files, core=core)
    _show_files(files, echo)
    echo(f"  $ cdc inventory {path / 'legacy'} --out {path / 'plan'}")
    _show_inventory(path / "legacy", path / "plan", echo)
    echo(f"  config: {demo.cfg_path}")
    echo("")
    return files


def _install_phase(demo: _Demo) -> Plan:
    echo, path = demo.echo, demo.path
    echo(f"[2/8] $ cdc check, cdc schema --out {path / 'plan'}, cdc install  (-c {demo.cfg_path})")
    demo.cfg = cfg = load_config(demo.cfg_path, postgres=demo.postgres)
    plan = resolve_plan(cfg)
    _show_check(plan, echo)
    if demo.postgres:
        _show_pg_check(cfg, echo)
    _show_schema(plan, path / "plan", echo)
    _install(cfg, plan, echo)
    echo("")
    return plan


def _start_phase(demo: _Demo, plan: Plan, files: list[LegacyFile]) -> None:
    echo, cfg, seconds = demo.echo, demo.cfg, demo.seconds
    echo(f"[3/8] $ cdc run -c {demo.cfg_path}   (log: {demo.daemon_log})")
    demo.daemon = daemon = DaemonProcess(demo.cfg_path, demo.daemon_log)
    daemon.wait_running(cfg.state_dir)
    demo.running_plan = plan  # what that daemon captures: the files had not changed since install
    echo(f"  daemon running, pid {daemon.pid}")
    st, waited = _wait(cfg, daemon, _snapshots_done, timeout=60.0)
    if st is None:
        raise DemoError(f"the initial snapshot did not finish within {waited:.0f}s")
    rows = sum(t.applied_events for t in st.targets)
    echo(f"  initial snapshot copied and applied: {rows} rows in {waited:.1f}s")
    # The bots' own deadline is only a safety net: the demo stops them with SIGTERM at
    # `seconds`, so a bot never races its own exit against the signal.
    demo.bots = bots = start_bots(
        demo.path, files, seconds + BOT_GRACE, seed=SEED, rate=BOT_RATE, alter=True
    )
    written = {KINDS[b.kind].spec.source for b in bots}
    echo(
        f"  started {len(bots)} bot processes for {seconds:g}s, at most {BOT_RATE:g} "
        f"writes/s each: {', '.join(b.kind for b in bots)}"
    )
    quiet = [f.source for f in files if f.source not in written]
    if quiet:
        echo(f"  no bot writes {', '.join(quiet)} (copied by the initial snapshot only)")
    echo("  --alter: at start-up every bot adds a column (ALTER TABLE ... ADD COLUMN), and")
    echo("  the llm_costs bot creates a table that did not exist at `cdc install` time")
    echo("")


def _live_phase(demo: _Demo) -> None:
    """One status line a second while the bots write. A table the bots create meanwhile is
    announced when it appears and shown captured once the daemon has adopted it."""
    echo, cfg, seconds = demo.echo, demo.cfg, demo.seconds
    echo(f"[4/8] live: bots writing, daemon replicating (`cdc status -c {demo.cfg_path}`)")
    demo.t0 = t0 = time.monotonic()
    next_tick = t0 + 1.0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds or all(b.poll() is not None for b in demo.bots):
            break
        time.sleep(max(0.0, min(next_tick, t0 + seconds) - now))
        next_tick = max(next_tick + 1.0, time.monotonic() + 0.5)
        daemon = demo.daemon
        if not daemon.alive():
            raise DemoError(
                f"the daemon died (exit code {daemon.proc.returncode}):\n" + daemon.tail()
            )
        current = resolve_plan(cfg, strict=False)  # a live system may drift: show it
        missing = [] if demo.adopted else _uncaptured(demo.running_plan, current)
        now_st = collect_status(cfg, current)
        if now_st.verifier is not None:
            demo.live_mismatches = max(demo.live_mismatches, now_st.verifier.mismatches)
        echo(_line(time.monotonic() - t0, now_st, missing))
        _follow_adoption(demo, current, missing)
    echo("")


def _follow_adoption(demo: _Demo, current: Plan, missing: list[str]) -> None:
    if missing and not demo.new_tables:
        demo.new_tables, demo.new_since = missing, time.monotonic()
        adoption.announce(missing, demo.daemon, demo.echo)
    if demo.new_tables and not demo.adopted and adoption.captured(current, demo.new_tables):
        demo.adopted = True
        adoption.say_captured(demo.new_tables, demo.new_since, demo.daemon, demo.echo)


def _drain_phase(demo: _Demo) -> None:
    echo, cfg = demo.echo, demo.cfg
    echo("[5/8] stop the bots (SIGTERM), drain the backlog (the daemon keeps running)")
    demo.codes = stop_bots(demo.bots)
    echo(
        f"  bots stopped after {time.monotonic() - demo.t0:.1f}s of writes, exit codes {demo.codes}"
    )
    plan = resolve_plan(cfg)
    missing = [] if demo.adopted else _uncaptured(demo.running_plan, plan)
    if missing:
        if not demo.new_tables:
            demo.new_tables, demo.new_since = missing, time.monotonic()
            adoption.announce(missing, demo.daemon, echo)
        if not adoption.wait_captured(plan, missing, demo.new_since, demo.daemon, echo, 30.0):
            raise DemoError(
                f"the daemon did not adopt {', '.join(missing)}:\n" + demo.daemon.tail()
            )
        demo.adopted = True
    daemon = demo.daemon
    st, waited = _wait(cfg, daemon, _synced, timeout=max(60.0, 2 * demo.seconds))
    demo.st = st
    if st is None:
        echo(f"  FAILED: backlog still not zero after {waited:.0f}s")
        return
    echo(f"  backlog drained to zero in {waited:.1f}s")
    # before the daemon stops, its own verifier proves every table equal once quiet
    vst, _ = _wait(cfg, daemon, _verified_by(daemon.pid), timeout=30.0)
    demo.st = st = vst or collect_status(cfg)
    if st.verifier is not None:
        demo.live_mismatches = max(demo.live_mismatches, st.verifier.mismatches)
        rechecked = sum(t.rechecked_total for t in st.verifier.tables)
        echo(
            f"  continuous verifier in the daemon: {_verifier_counts(st.verifier)}; "
            f"{rechecked} row{'' if rechecked == 1 else 's'} re-checked after changing "
            "under it"
        )
    demo.verified = vst is not None and _all_equal(vst.verifier)
    if vst is None:
        echo("  FAILED: the continuous verifier did not find every table equal in 30s")
    echo("  `cdc status` now says:")
    echo("")
    echo(_indent(render_status(st)))
    echo("")


def _app_phase(demo: _Demo) -> None:
    demo.echo("[6/8] the application side: `cdc refs` and `cdc queries`")
    demo.app_failures = run_app_phase(demo.path, demo.cfg, demo.echo)
    demo.echo("")


def _cutover_phase(demo: _Demo) -> None:
    if demo.postgres:
        demo.echo(
            "[7/8] cut over the core stage (PostgreSQL), write as a switched bot, roll it back"
        )
        demo.round_trip = run_pg_cutover_round(
            demo.cfg, resolve_plan(demo.cfg), demo.cfg_path, demo.echo
        )
    else:
        demo.echo("[7/8] cut over the cache stage, write as a switched bot, roll it back")
        demo.round_trip = run_cutover_round(demo.cfg, resolve_plan(demo.cfg), demo.echo)
    demo.echo("")


def _stop_daemon(demo: _Demo) -> None:
    echo, daemon = demo.echo, demo.daemon
    demo.daemon_code = daemon_code = daemon.stop()
    echo(f"  $ kill -TERM {daemon.pid}  ->  daemon exited with code {daemon_code}")
    if daemon_code != 0:
        echo(daemon.tail())
    demo.daemon = None
    _show_daemon_log(demo.daemon_log, echo)
    echo("")


def _verify_phase(demo: _Demo) -> None:
    echo, cfg = demo.echo, demo.cfg
    validation = demo.path / "validation"
    echo("[8/8] verify: every mapped table, legacy vs consolidated (keys, values, types)")
    echo(f"  $ cdc verify -c {demo.cfg_path} --report {validation}")
    demo.report = _verify(cfg, resolve_plan(cfg), validation, echo)
    demo.bot_errors = _show_bots(demo.bots, demo.codes, echo)


def _stop_server(demo: _Demo) -> None:
    """The private PostgreSQL cluster stopped and its folder removed (once)."""
    server, demo.server = demo.server, None
    if server is not None:
        stop_server(server, demo.path, demo.echo)


def _result(demo: _Demo, t_start: float) -> int:
    echo, cfg, report, bot_errors = demo.echo, demo.cfg, demo.report, demo.bot_errors
    all_equal = report.verdict == "equal" and bool(report.tables)
    ok = (
        all_equal
        and demo.live_mismatches == 0
        and demo.verified
        and bot_errors == 0
        and demo.daemon_code == 0
        and demo.st is not None
        and demo.round_trip
        and not demo.app_failures
    )
    echo("")
    _show_next(demo.cfg_path, demo.path, cfg, echo)
    echo("")
    elapsed = time.monotonic() - t_start
    if ok:
        echo(f"RESULT: PASS ({elapsed:.1f}s): every consolidated table equals its legacy table")
    else:
        why = _failures(demo, report, all_equal, bot_errors)
        echo(f"RESULT: FAIL ({elapsed:.1f}s): {', '.join(why)}")
    return 0 if ok else 1


def _failures(demo: _Demo, report: VerifyReport, all_equal: bool, bot_errors: int) -> list[str]:
    """Every reason the demo failed, not only the first: the RESULT line may be all a CI
    log shows."""
    why = []
    if not all_equal:
        why.append(f"verifier verdict: {report.verdict}")
    if demo.live_mismatches:
        why.append(f"the continuous verifier found {demo.live_mismatches} rows differing")
    if not demo.verified and demo.st is not None:
        why.append("the continuous verifier did not find every table equal")
    if bot_errors:
        why.append(f"bots reported {bot_errors} errors")
    if demo.st is None:
        why.append("backlog did not drain")
    if demo.daemon_code != 0:
        why.append(f"daemon exited {demo.daemon_code}")
    if demo.st is not None and not demo.round_trip:
        why.append("the cutover and rollback round did not bring every write back")
    why.extend(demo.app_failures)
    return why
