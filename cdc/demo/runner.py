"""`cdc demo`: the whole product in one command, as an operator would drive it.

It builds a demo tree (legacy files, `cdc.toml`), runs `check` and `install`, starts the daemon
as a real `cdc run` process, lets the simulated bots (real processes) write and drift their
schemas, shows the backlog converging, stops everything the way an operator would (SIGTERM)
and finally compares every consolidated table with its legacy table, row by row.

A table a bot creates while the daemon runs (the LLM cost bot's `budget_alerts`) is not
captured by that daemon: triggers are installed only by `cdc install`, and the daemon resolves
its plan only at start. The demo shows the table as NOT captured, then does what an operator
must: `cdc install` again (retried while a bot holds the file locked, as its hint says; if the
bots keep it out for a few seconds, once they have stopped), then restart the daemon, which
snapshots the new table and resumes the others from the change log.

The folder is wiped only if it is empty or carries the MARKER file a previous demo left.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from cdc.config import Config, load_config
from cdc.demo.bots import KINDS, BotProcess, start_bots, stop_bots
from cdc.demo.generator import LegacyFile, generate_legacy, write_demo_config
from cdc.errors import CdcError, SourceError
from cdc.inventory import table_info
from cdc.ops import InstallReport, install
from cdc.plan import Plan, resolve_plan
from cdc.sqlconn import open_legacy
from cdc.sqlident import q
from cdc.status import Status, collect_status
from cdc.status_file import read_status
from cdc.status_view import render_status
from verifier.compare import TableDiff, canonical, compare_plan

MARKER = ".cdc-demo"
"""A file in the demo root saying the folder was made by `cdc demo` (and may be wiped)."""

SEED = 7
BOT_RATE = 50.0  # writes/s per bot: busy, but readable on a laptop
BOT_GRACE = 60.0  # seconds a bot may outlive the demo if the demo itself is killed
STATE_DIR = "state"  # what `write_demo_config` puts in the config
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

Echo = Callable[[str], object]


class DemoError(CdcError):
    """The demo cannot run here (folder not ours, daemon would not start, ...)."""

    exit_code = 1


# -- the demo folder ------------------------------------------------------------------------


def prepare_root(root: str | os.PathLike[str]) -> Path:
    """Create `root`, or empty it if a previous demo made it; refuse anything else."""
    path = Path(root).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise DemoError(f"{path}: exists and is not a folder", hint="choose another --dir")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MARKER).is_file():
            raise DemoError(
                f"{path}: folder is not empty and was not made by `cdc demo`; refusing to wipe it",
                hint="give an empty or new folder with --dir",
            )
        _refuse_if_daemon_running(path / STATE_DIR)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text(
        "made by `cdc demo`: the next `cdc demo --dir` here deletes this whole folder\n",
        encoding="utf-8",
    )
    return path


def _refuse_if_daemon_running(state_dir: Path) -> None:
    lock = state_dir / "daemon.lock"
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = lock.read_text(encoding="utf-8", errors="replace").strip() or "?"
        raise DemoError(
            f"{state_dir}: a daemon of the previous demo is still running (pid {pid})",
            hint=f"stop it first: kill -TERM {pid}",
        ) from None
    finally:
        os.close(fd)


# -- the daemon process ---------------------------------------------------------------------


class DaemonProcess:
    """`python -m cdc -v run -c cdc.toml` in the background, its output appended to a log."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cdc", "-v", "run", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_running(self, state_dir: str, timeout: float = 30.0) -> None:
        """Until the daemon's status file says it runs (its plan is resolved by then)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise DemoError(
                    f"the daemon exited with code {self.proc.returncode} at start-up:\n"
                    + self.tail()
                )
            ds = read_status(state_dir)
            if ds is not None and ds.pid == self.pid and ds.state == "running":
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the daemon did not report running within {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as an operator (or systemd) would; SIGKILL only if it does not stop."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -signal.SIGKILL

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join("    | " + ln for ln in text.splitlines()[-lines:])


# -- status ----------------------------------------------------------------------------------


def _uncaptured(running: Plan, now: Plan) -> list[str]:
    """Tables the current files and rules map, that the running daemon's plan does not."""
    return [
        f"{sp.name}.{m.table}"
        for sp in now.sources
        for m in sp.tables
        if running.mapping(sp.name, m.table) is None
    ]


def _synced(st: Status) -> bool:
    return all(s.backlog_events == 0 for s in st.sources) and all(
        t.backlog_bytes == 0 for t in st.targets
    )


def _line(t: float, st: Status, uncaptured: list[str]) -> str:
    """One compact status line: what an operator watches converge."""
    captured = sum(s.captured for s in st.sources)
    applied = sum(s.applied for s in st.sources)
    lags = [x.lag_seconds for x in st.targets if x.lag_seconds is not None]
    lag = f"{max(lags):.2f}s" if lags else "-"
    with_tables = [s for s in st.sources if s.tables]
    snap = sum(s.snapshot == "done" for s in with_tables)
    text = (
        f"  {t:5.1f}s  captured {captured:>6}  applied {applied:>6}  "
        f"backlog {st.backlog_events:>5}  apply lag {lag:>6}  "
        f"snapshots {snap}/{len(with_tables)}  daemon {st.daemon.state}"
    )
    errors = [f"{s.name}: {s.last_error}" for s in st.sources if s.last_error]
    if uncaptured:
        text += f"  | NOT captured: {', '.join(uncaptured)}"
    if errors:
        text += f"  | source errors: {'; '.join(errors)}"
    if st.problems:
        text += f"  | mapping problems: {'; '.join(st.problems)}"
    return text


# -- the demo ----------------------------------------------------------------------------------


def run_demo(root: str, seconds: float, echo: Echo = print) -> int:
    """Build, replicate under live writes, verify; 0 only if every table ends up equal."""
    path = prepare_root(root)
    cfg_path = path / "cdc.toml"
    daemon_log = path / "daemon.log"
    daemon: DaemonProcess | None = None
    bots: list[BotProcess] = []
    t_start = time.monotonic()
    try:
        echo(f"== sqlite-cdc demo in {path} ==")
        echo("")
        echo(f"[1/6] legacy databases (written by the demo's own generator, seed {SEED})")
        files = generate_legacy(path, seed=SEED)
        write_demo_config(path, files)
        _show_files(files, echo)
        echo(f"  config: {cfg_path}")
        echo("")

        echo(f"[2/6] $ cdc check -c {cfg_path}  &&  cdc install -c {cfg_path}")
        cfg = load_config(cfg_path)
        plan = resolve_plan(cfg)
        _show_check(plan, echo)
        _install(cfg, plan, echo)
        echo("")

        echo(f"[3/6] $ cdc run -c {cfg_path}   (log: {daemon_log})")
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

        echo(f"[4/6] live: bots writing, daemon replicating (`cdc status -c {cfg_path}`)")
        t0 = time.monotonic()
        tried = False
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
            echo(_line(time.monotonic() - t0, collect_status(cfg, current), missing))
            if missing and not tried and time.monotonic() - t0 >= seconds / 2:
                daemon, running_plan, _ = _adopt(
                    cfg, cfg_path, daemon, running_plan, missing, echo, live=True
                )
                tried = True
        echo("")

        echo("[5/6] stop the bots (SIGTERM), drain the backlog, stop the daemon (SIGTERM)")
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
            echo(f"  backlog drained to zero in {waited:.1f}s; `cdc status` now says:")
            echo("")
            echo(_indent(render_status(st)))
            echo("")
        daemon_code = daemon.stop()
        echo(f"  $ kill -TERM {daemon.pid}  ->  daemon exited with code {daemon_code}")
        if daemon_code != 0:
            echo(daemon.tail())
        daemon = None
        _show_daemon_log(daemon_log, echo)
        echo("")

        echo("[6/6] verify: every mapped table, legacy vs consolidated (key, values, types)")
        final_plan = resolve_plan(cfg)
        diffs = compare_plan(final_plan, cfg.daemon.busy_timeout_ms)
        all_equal = _show_diffs(diffs, final_plan, cfg, echo)
        bot_errors = _show_bots(bots, codes, echo)
        ok = all_equal and bot_errors == 0 and daemon_code == 0 and st is not None
        echo("")
        _show_next(cfg_path, path, cfg, echo)
        echo("")
        elapsed = time.monotonic() - t_start
        if ok:
            echo(f"RESULT: PASS ({elapsed:.1f}s): every consolidated table equals its legacy table")
        else:
            why = []
            if not all_equal:
                why.append("tables differ")
            if bot_errors:
                why.append(f"bots reported {bot_errors} errors")
            if st is None:
                why.append("backlog did not drain")
            if daemon_code != 0:
                why.append(f"daemon exited {daemon_code}")
            echo(f"RESULT: FAIL ({elapsed:.1f}s): {', '.join(why)}")
        return 0 if ok else 1
    finally:
        if bots:
            stop_bots(bots)
        if daemon is not None:
            daemon.stop()


def _install(cfg: Config, plan: Plan, echo: Echo) -> None:
    report = install(cfg, plan)
    for s in report.sources:
        rel = os.path.relpath(s.path, Path(cfg.config_path).parent)
        echo(
            f"  {s.source}: capturing {len(s.captured)} tables, {len(s.excluded)} excluded ({rel})"
        )
    echo(f"  installed: {report.tables} tables in {len(report.sources)} databases")


def _adopt(
    cfg: Config,
    cfg_path: Path,
    daemon: DaemonProcess,
    running: Plan,
    missing: list[str],
    echo: Echo,
    live: bool,
) -> tuple[DaemonProcess, Plan, bool]:
    """A bot created a table: `cdc install` again, then restart the daemon so it captures it.

    Install runs first, while the old daemon still runs: a daemon (re)started while a mapped
    table has no triggers refuses to start. Live, install is given a few seconds of retries;
    if the bots keep it locked out, the caller tries again once they have stopped.
    Returns (daemon, its plan, adopted).
    """
    if live:
        echo(f"  ! new table(s) appeared in a live legacy file: {', '.join(missing)}")
        echo("    The running daemon does not capture them: capture triggers are installed by")
        echo("    `cdc install`, and the daemon reads cdc.toml and the table list only at start.")
        echo("    Operator's fix, done now while the bots keep writing:")
    else:
        echo(f"  still not captured: {', '.join(missing)}; adopting it now that the bots stopped:")
    echo(f"    $ cdc install -c {cfg_path}")
    plan = resolve_plan(cfg)
    report = _install_retrying(cfg, plan, echo, give_up_after=4.0 if live else 30.0)
    if report is None:
        echo("      gave up for now: every attempt met 'database is locked' while a bot wrote;")
        echo("      the daemon keeps running without the new table, retried after the bots stop")
        return daemon, running, False
    echo(f"      installed: {report.tables} tables in {len(report.sources)} databases")
    code = daemon.stop()
    echo(f"    $ kill -TERM {daemon.pid}  ->  daemon exited with code {code}")
    if code != 0:
        raise DemoError(f"the daemon exited with code {code} on SIGTERM:\n" + daemon.tail())
    new = DaemonProcess(cfg_path, daemon.log_path)
    try:
        new.wait_running(cfg.state_dir)
    except BaseException:
        new.stop()
        raise
    echo(
        f"    $ cdc run -c {cfg_path}  ->  pid {new.pid}: snapshots the new table(s), "
        "resumes the others from the change log"
    )
    return new, plan, True


def _install_retrying(
    cfg: Config, plan: Plan, echo: Echo, give_up_after: float
) -> InstallReport | None:
    """`cdc install` against live bots, retried as its "database is locked" hint says.

    None if it still meets a locked database after `give_up_after` seconds.
    """
    root = Path(cfg.config_path).parent
    locked: dict[str, int] = {}
    deadline = time.monotonic() + give_up_after
    attempt = 0
    while True:
        attempt += 1
        try:
            report = install(cfg, plan)
        except SourceError as e:
            if "locked" not in e.message:
                raise
            where = os.path.relpath(e.message.split(":", 1)[0], root)
            if not locked:
                echo(f"      error: {where}: database is locked (a bot is writing); retrying")
            locked[where] = locked.get(where, 0) + 1
            if time.monotonic() > deadline:
                counts = ", ".join(f"{w} x{n}" for w, n in locked.items())
                echo(f"      {attempt} attempts, 'database is locked' on {counts}")
                return None
            time.sleep(min(0.3, 0.05 * attempt))
            continue
        if locked:
            counts = ", ".join(f"{w} x{n}" for w, n in locked.items())
            echo(f"      succeeded at attempt {attempt}; 'database is locked' on {counts}")
        return report


def _snapshots_done(st: Status) -> bool:
    return _synced(st) and all(s.snapshot == "done" for s in st.sources if s.tables)


def _wait(
    cfg: Config, daemon: DaemonProcess, cond: Callable[[Status], bool], timeout: float
) -> tuple[Status | None, float]:
    """Poll `cdc status` until `cond`; (None, waited) on timeout. A dead daemon is an error."""
    t0 = time.monotonic()
    while True:
        if not daemon.alive():
            raise DemoError(
                f"the daemon died (exit code {daemon.proc.returncode}):\n" + daemon.tail()
            )
        st = collect_status(cfg)
        waited = time.monotonic() - t0
        if cond(st):
            return st, waited
        if waited > timeout:
            return None, waited
        time.sleep(0.1)


# -- printing -------------------------------------------------------------------------------


def _wrap(first: str, text: str, width: int = 100) -> str:
    return textwrap.fill(
        text,
        width,
        initial_indent=first,
        subsequent_indent=" " * len(first),
        break_on_hyphens=False,
    )


def _indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + ln if ln else ln for ln in text.splitlines())


def _show_files(files: list[LegacyFile], echo: Echo) -> None:
    w = max(len(f.path.as_posix()) for f in files)
    echo(f"  {'source':<13} {'file':<{w}}  {'journal':<7}  tables")
    for f in files:
        echo(f"  {f.source:<13} {f.path.as_posix():<{w}}  {f.journal:<7}  {', '.join(f.tables)}")


def _show_check(plan: Plan, echo: Echo) -> None:
    n = sum(len(s.tables) for s in plan.sources)
    excluded = [f"{s.name}.{t}" for s in plan.sources for t in s.excluded + s.uncapturable]
    echo(
        f"  ok: {len(plan.sources)} sources, {n} tables mapped onto {len(plan.targets)} "
        f"targets ({', '.join(plan.targets)}), {len(excluded)} excluded "
        f"({', '.join(excluded) or 'none'})"
    )
    merged = sorted(
        {f"{m.target}.{m.target_table}" for s in plan.sources for m in s.tables if m.tag_column}
    )
    renamed = [
        f"{m.source}.{m.table} -> {m.target}.{m.target_table}"
        for s in plan.sources
        for m in s.tables
        if m.target_table != m.table
    ]
    if merged:
        echo(f"  merged (tagged by source): {', '.join(merged)}")
    if renamed:
        echo(_wrap("  renamed: ", ", ".join(renamed)))


def _show_diffs(diffs: list[TableDiff], plan: Plan, cfg: Config, echo: Echo) -> bool:
    dest = [f"{d.target}.{d.target_table}" for d in diffs]
    ws = max([6] + [len(d.source) for d in diffs])
    wt = max([5] + [len(d.table) for d in diffs])
    wd = max([12] + [len(x) for x in dest])
    echo(
        f"  {'source':<{ws}}  {'table':<{wt}}  {'consolidated':<{wd}}  "
        f"{'legacy':>7}  {'consol.':>7}  result"
    )
    for d, to in zip(diffs, dest, strict=True):
        echo(
            f"  {d.source:<{ws}}  {d.table:<{wt}}  {to:<{wd}}  "
            f"{d.source_rows:>7}  {d.target_rows:>7}  {'EQUAL' if d.equal else 'DIFFERENT'}"
        )
        if d.equal:
            continue
        for what, keys in (("missing", d.missing), ("extra", d.extra), ("changed", d.different)):
            if keys:
                sample = ", ".join(_key_text(k) for k in keys[:3])
                more = ", ..." if len(keys) > 3 else ""
                echo(f"      {what} rows, key {sample}{more}")
        if d.different:
            try:
                echo(f"      e.g. {_explain(d, plan, cfg)}")
            except Exception as e:  # noqa: BLE001 - an explanation is a courtesy
                echo(f"      (could not read the differing row: {e})")
    equal = sum(d.equal for d in diffs)
    src = sum(d.source_rows for d in diffs)
    tgt = sum(d.target_rows for d in diffs)
    echo(
        f"  total: {len(diffs)} tables, {equal} EQUAL, {len(diffs) - equal} DIFFERENT; "
        f"{src} legacy rows, {tgt} consolidated rows"
    )
    return equal == len(diffs) and bool(diffs)


def _key_value(k: list) -> object:
    return k[1] if len(k) > 1 else None  # a `canonical` tuple: (storage class, value)


def _key_text(key: list) -> str:
    vals = [_key_value(k) for k in key]
    return repr(vals[0]) if len(vals) == 1 else repr(tuple(vals))


def _explain(d: TableDiff, plan: Plan, cfg: Config) -> str:
    """Which columns differ in the first differing row, legacy value vs consolidated value."""
    m = plan.mapping(d.source, d.table)
    src = open_legacy(plan.source(d.source).path, cfg.daemon.busy_timeout_ms, readonly=True)
    tgt = apsw.Connection(plan.targets[d.target], flags=apsw.SQLITE_OPEN_READONLY)
    try:
        info = table_info(src, d.table)
        kexpr = [q(k) for k in info.key] or [info.rowid_alias()]
        where = " AND ".join(f"{e} IS ?" for e in kexpr)
        args = [_key_value(k) for k in d.different[0]]
        cols = info.column_names
        sel = ", ".join(q(c) for c in cols)
        a = src.execute(f"SELECT {sel} FROM {q(d.table)} WHERE {where}", args).fetchone()
        if m is not None and m.tag_column:
            where, args = f"{where} AND {q(m.tag_column)} IS ?", [*args, m.tag]
        b = tgt.execute(f"SELECT {sel} FROM {q(d.target_table)} WHERE {where}", args).fetchone()
    finally:
        src.close()
        tgt.close()
    if a is None or b is None:
        return f"key {_key_text(d.different[0])} changed while comparing"
    parts = [
        f"{c}: legacy {x!r}, consolidated {y!r}"
        for c, x, y in zip(cols, a, b, strict=True)
        if canonical(x) != canonical(y)
    ]
    return f"key {_key_text(d.different[0])}: " + "; ".join(parts)


def _show_daemon_log(log_path: Path, echo: Echo) -> None:
    """What the daemon's log says an operator should know: schema drift followed, errors."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    added: dict[str, list[str]] = {}
    for ln in lines:
        head, sep, col = ln.partition(": added column ")
        if sep:
            added.setdefault(head.rsplit("target ", 1)[-1], []).append(col)
    if added:
        echo("  daemon log: columns it added to consolidated tables (merged-table widening and")
        echo("  the bots' ALTER TABLEs):")
        for target, cols in sorted(added.items()):
            echo(_wrap(f"    {target}: ", ", ".join(cols)))
    bad = [ln for ln in lines if " ERROR " in ln or " CRITICAL " in ln]
    if bad:
        echo(f"  daemon log: {len(bad)} line(s) at ERROR or above:")
        for ln in bad[:5]:
            echo(f"    | {ln}")


def _show_bots(bots: list[BotProcess], codes: list[int], echo: Echo) -> int:
    """Print each bot's stats; return the error count (a missing stats file counts as one)."""
    total_ops = total_errors = 0
    echo("")
    echo("  bots:")
    for b, code in zip(bots, codes, strict=True):
        try:
            s = b.read_stats()
        except (OSError, ValueError):
            echo(f"    {b.kind:<12} exit {code}: no stats written (see {b.stats_file.parent}/)")
            total_errors += 1
            continue
        ops, errors = int(s["ops"]), int(s["errors"])
        total_ops += ops
        total_errors += errors + (code != 0)
        echo(
            f"    {b.kind:<12} {ops:>6} ops  {errors:>3} errors  "
            f"longest write {float(s['max_stall_ms']):7.1f} ms  exit {code}"
        )
        for msg, n in dict(s.get("error_messages") or {}).items():
            echo(f"      {n} x {msg}")
    echo(f"    {'total':<12} {total_ops:>6} ops  {total_errors:>3} errors")
    return total_errors


def _show_next(cfg_path: Path, root: Path, cfg: Config, echo: Echo) -> None:
    core = Path(cfg.targets.get("core", next(iter(cfg.targets.values()))))
    steps = [
        (f"cdc status -c {cfg_path}", "positions and backlog, per source and target"),
        (f"cdc run -c {cfg_path}", "resume replication (Ctrl-C or SIGTERM stops it)"),
        (f"python -m cdc.demo.bots --root {root} --bot trader --seconds 30", "more writes"),
        (f"sqlite3 {core} .tables", "look at the consolidated data"),
        (f"cdc uninstall -c {cfg_path}", "remove every trigger from the legacy files"),
    ]
    w = max(len(cmd) for cmd, _ in steps)
    echo("next, as an operator:")
    for cmd, why in steps:
        echo(f"  {cmd:<{w}}  # {why}")
    echo(f"  logs: {root / 'daemon.log'} (daemon), {root / 'bot-stats'}/ (bots)")
