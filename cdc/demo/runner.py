"""`cdc demo`: the whole product in one command, as an operator would drive it.

It builds a demo tree (legacy files, `cdc.toml`), runs `check` and `install`, starts the daemon
as a real `cdc run` process, lets the simulated bots (real processes) write and drift their
schemas, shows the backlog converging while the daemon's continuous verifier proves the tables
equal, cuts the cache stage over, writes to it as a switched bot would and rolls it back
(no write lost), stops everything the way an operator would (SIGTERM) and finally runs the product's
verifier (`cdc verify --report`) on every consolidated table against its legacy table, writing
the validation reports into `validation/` of the demo folder.

A table a bot creates while the daemon runs (the LLM cost bot's `budget_alerts`) is not
captured by that daemon: triggers are installed only by `cdc install`, and the daemon resolves
its plan only at start. The demo shows the table as NOT captured, then does what an operator
must: `cdc install` again (retried while a bot holds the file locked, as its hint says; if the
bots keep it out for a few seconds, once they have stopped), then restart the daemon, which
snapshots the new table and resumes the others from the change log.

The folder is wiped only if it is empty or carries the MARKER file a previous demo left.
"""

from __future__ import annotations

import time

from cdc.config import load_config
from cdc.daemon.status import collect_status
from cdc.daemon.status_view import render_status
from cdc.demo.bots import KINDS, BotProcess, start_bots, stop_bots
from cdc.demo.cutover_phase import run_cutover_round
from cdc.demo.daemon import DaemonProcess, _wait
from cdc.demo.folder import MARKER, DemoError, prepare_root
from cdc.demo.generator import generate_legacy, write_demo_config
from cdc.demo.install import _adopt, _install
from cdc.demo.live import (
    _all_equal,
    _line,
    _snapshots_done,
    _synced,
    _uncaptured,
    _verified_by,
    _verifier_counts,
)
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
    _show_schema,
)
from cdc.planning.resolve import resolve_plan

# what cdc/cli/main.py and tests/cli/test_demo.py import from here; MARKER and DemoError live in folder.py
__all__ = ["MARKER", "DemoError", "prepare_root", "run_demo"]

SEED = 7
BOT_RATE = 50.0  # writes/s per bot: busy, but readable on a laptop
BOT_GRACE = 60.0  # seconds a bot may outlive the demo if the demo itself is killed


def run_demo(root: str, seconds: float, echo: Echo = print) -> int:
    """Build, replicate under live writes, verify; 0 only if every table ends up equal."""
    path = prepare_root(root)
    cfg_path = path / "cdc.toml"
    daemon_log = path / "daemon.log"
    validation = path / "validation"
    verified = False  # the daemon's continuous verifier found every table equal before it stopped
    daemon: DaemonProcess | None = None
    bots: list[BotProcess] = []
    t_start = time.monotonic()
    try:
        echo(f"== sqlite-cdc demo in {path} ==")
        echo("")
        echo(f"[1/7] legacy databases (written by the demo's own generator, seed {SEED})")
        files = generate_legacy(path, seed=SEED)
        write_demo_config(path, files)
        _show_files(files, echo)
        echo(f"  $ cdc inventory {path / 'legacy'} --out {path / 'plan'}")
        _show_inventory(path / "legacy", path / "plan", echo)
        echo(f"  config: {cfg_path}")
        echo("")

        echo(f"[2/7] $ cdc check, cdc schema --out {path / 'plan'}, cdc install  (-c {cfg_path})")
        cfg = load_config(cfg_path)
        plan = resolve_plan(cfg)
        _show_check(plan, echo)
        _show_schema(plan, path / "plan", echo)
        _install(cfg, plan, echo)
        echo("")

        echo(f"[3/7] $ cdc run -c {cfg_path}   (log: {daemon_log})")
        daemon = DaemonProcess(cfg_path, daemon_log)
        daemon.wait_running(cfg.state_dir)
        running_plan = plan  # what that daemon captures: the files had not changed since install
        echo(f"  daemon running, pid {daemon.pid}")
        st, waited = _wait(cfg, daemon, _snapshots_done, timeout=60.0)
        if st is None:
            raise DemoError(f"the initial snapshot did not finish within {waited:.0f}s")
        rows = sum(t.applied_events for t in st.targets)
        echo(f"  initial snapshot copied and applied: {rows} rows in {waited:.1f}s")
        # The bots' own deadline is only a safety net: the demo stops them with SIGTERM at
        # `seconds`, so a bot never races its own exit against the signal.
        bots = start_bots(path, files, seconds + BOT_GRACE, seed=SEED, rate=BOT_RATE, alter=True)
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

        echo(f"[4/7] live: bots writing, daemon replicating (`cdc status -c {cfg_path}`)")
        t0 = time.monotonic()
        tried = False
        live_mismatches = 0  # the most rows the continuous verifier found differing at once
        next_tick = t0 + 1.0
        while True:
            now = time.monotonic()
            if now - t0 >= seconds or all(b.poll() is not None for b in bots):
                break
            time.sleep(max(0.0, min(next_tick, t0 + seconds) - now))
            next_tick = max(next_tick + 1.0, time.monotonic() + 0.5)
            if not daemon.alive():
                raise DemoError(
                    f"the daemon died (exit code {daemon.proc.returncode}):\n" + daemon.tail()
                )
            current = resolve_plan(cfg, strict=False)  # a live system may drift: show it
            missing = _uncaptured(running_plan, current)
            now_st = collect_status(cfg, current)
            if now_st.verifier is not None:
                live_mismatches = max(live_mismatches, now_st.verifier.mismatches)
            echo(_line(time.monotonic() - t0, now_st, missing))
            if missing and not tried and time.monotonic() - t0 >= seconds / 2:
                daemon, running_plan, _ = _adopt(
                    cfg, cfg_path, daemon, running_plan, missing, echo, live=True
                )
                tried = True
        echo("")

        echo("[5/7] stop the bots (SIGTERM), drain the backlog, stop the daemon (SIGTERM)")
        codes = stop_bots(bots)
        echo(f"  bots stopped after {time.monotonic() - t0:.1f}s of writes, exit codes {codes}")
        missing = _uncaptured(running_plan, resolve_plan(cfg))
        if missing:
            daemon, running_plan, adopted = _adopt(
                cfg, cfg_path, daemon, running_plan, missing, echo, live=False
            )
            if not adopted:
                raise DemoError("`cdc install` still met a locked database with the bots stopped")
        st, waited = _wait(cfg, daemon, _synced, timeout=max(60.0, 2 * seconds))
        if st is None:
            echo(f"  FAILED: backlog still not zero after {waited:.0f}s")
        else:
            echo(f"  backlog drained to zero in {waited:.1f}s")
            # before the daemon stops, its own verifier proves every table equal once quiet
            vst, _ = _wait(cfg, daemon, _verified_by(daemon.pid), timeout=30.0)
            st = vst or collect_status(cfg)
            if st.verifier is not None:
                live_mismatches = max(live_mismatches, st.verifier.mismatches)
                rechecked = sum(t.rechecked_total for t in st.verifier.tables)
                echo(
                    f"  continuous verifier in the daemon: {_verifier_counts(st.verifier)}; "
                    f"{rechecked} row{'' if rechecked == 1 else 's'} re-checked after changing "
                    "under it"
                )
            verified = vst is not None and _all_equal(vst.verifier)
            if vst is None:
                echo("  FAILED: the continuous verifier did not find every table equal in 30s")
            echo("  `cdc status` now says:")
            echo("")
            echo(_indent(render_status(st)))
            echo("")
        round_trip = False
        if st is not None:
            echo("[6/7] cut over the cache stage, write as a switched bot, roll it back")
            round_trip = run_cutover_round(cfg, resolve_plan(cfg), echo)
            echo("")
        daemon_code = daemon.stop()
        echo(f"  $ kill -TERM {daemon.pid}  ->  daemon exited with code {daemon_code}")
        if daemon_code != 0:
            echo(daemon.tail())
        daemon = None
        _show_daemon_log(daemon_log, echo)
        echo("")

        echo("[7/7] verify: every mapped table, legacy vs consolidated (keys, values, types)")
        echo(f"  $ cdc verify -c {cfg_path} --report {validation}")
        report = _verify(cfg, resolve_plan(cfg), validation, echo)
        all_equal = report.verdict == "equal" and bool(report.tables)
        bot_errors = _show_bots(bots, codes, echo)
        ok = (
            all_equal
            and live_mismatches == 0
            and verified
            and bot_errors == 0
            and daemon_code == 0
            and st is not None
            and round_trip
        )
        echo("")
        _show_next(cfg_path, path, cfg, echo)
        echo("")
        elapsed = time.monotonic() - t_start
        if ok:
            echo(f"RESULT: PASS ({elapsed:.1f}s): every consolidated table equals its legacy table")
        else:
            why = []
            if not all_equal:
                why.append(f"verifier verdict: {report.verdict}")
            if live_mismatches:
                why.append(f"the continuous verifier found {live_mismatches} rows differing")
            if not verified and st is not None:
                why.append("the continuous verifier did not find every table equal")
            if bot_errors:
                why.append(f"bots reported {bot_errors} errors")
            if st is None:
                why.append("backlog did not drain")
            if daemon_code != 0:
                why.append(f"daemon exited {daemon_code}")
            if st is not None and not round_trip:
                why.append("the cutover and rollback round did not bring every write back")
            echo(f"RESULT: FAIL ({elapsed:.1f}s): {', '.join(why)}")
        return 0 if ok else 1
    finally:
        if bots:
            stop_bots(bots)
        if daemon is not None:
            daemon.stop()
