"""Live controls of a running daemon: small files in `<state_dir>/control/` (docs/controls.md).

A control is a file, not a message: it needs no socket, is written atomically (temporary
file, fsync, rename), survives a daemon restart, and `ls` shows what is in force. The CLI
writes them (`cdc pause`, `resume`, `throttle`, `panic`); the daemon and the apply worker
poll them through a `ControlWatcher` (one `stat` of the folder per look, a re-read only
when it changed), so a control takes effect within about a second, without a restart.

    pause-harvest.<source>   the source's harvest thread leaves its legacy file alone
    pause-apply.<target>     the apply loop skips the target
    throttle.<source>        changes/s and read-transaction time caps for the source
    postpone-cutover         `cdc cutover` refuses to start a new cutover
    panic                    the daemon stops at once and refuses to start again

A pause, postpone or panic file means "on" by existing (its JSON says since when and who
set it; `touch control/panic` works in an emergency). This module also holds `Pacer`, which
turns a source's throttle into batch sizes and waits for its harvest thread.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import time

import msgspec

from cdc.config import Config, expand_sources
from cdc.errors import CdcError, ConfigError, PanicStop
from cdc.fsutil import makedirs_private, safe_component

log = logging.getLogger(__name__)

CONTROL_DIR = "control"
PAUSE_HARVEST = "pause-harvest."
PAUSE_APPLY = "pause-apply."
THROTTLE = "throttle."
POSTPONE_CUTOVER = "postpone-cutover"
PANIC = "panic"


class Mark(msgspec.Struct, frozen=True):
    """The body of a pause, postpone or panic file: when, and by whom (for the operator)."""

    since: float
    by: str = ""


class Throttle(msgspec.Struct, frozen=True):
    """One source's harvest limits. None: that limit is off."""

    max_changes_per_second: float | None = None
    max_lock_ms: float | None = None
    since: float = 0.0
    by: str = ""


class Controls(msgspec.Struct, frozen=True):
    """Every control in force, as `cdc status` shows it and the daemon obeys it."""

    paused_harvest: list[str] = []
    paused_apply: list[str] = []
    throttles: dict[str, Throttle] = {}
    cutover_postponed: bool = False
    panic: bool = False
    since: dict[str, float] = {}  # control file name -> when it was set

    @property
    def active(self) -> bool:
        return bool(
            self.paused_harvest
            or self.paused_apply
            or self.throttles
            or self.cutover_postponed
            or self.panic
        )


def control_dir(state_dir: str) -> str:
    return os.path.join(state_dir, CONTROL_DIR)


# -- reading -------------------------------------------------------------------------------
def read_controls(state_dir: str) -> Controls:
    """The controls in force now (none when the folder does not exist)."""
    folder = control_dir(state_dir)
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except FileNotFoundError:
        return Controls()
    harvest, apply, throttles, since = [], [], {}, {}
    for n in names:
        path = os.path.join(folder, n)
        if n.startswith(THROTTLE):
            t = _read_throttle(path)
            if t is not None:
                throttles[n[len(THROTTLE) :]] = t
                since[n] = t.since
            continue
        if n.startswith(PAUSE_HARVEST):
            harvest.append(n[len(PAUSE_HARVEST) :])
        elif n.startswith(PAUSE_APPLY):
            apply.append(n[len(PAUSE_APPLY) :])
        elif n not in (POSTPONE_CUTOVER, PANIC):
            log.debug("%s: not a control file; ignored", path)
            continue
        mark = _read_mark(path)
        if mark is not None:
            since[n] = mark.since
    return Controls(
        harvest, apply, throttles, POSTPONE_CUTOVER in names, PANIC in names, since=since
    )


def _read_mark(path: str) -> Mark | None:
    """The file's mark; an empty or hand-written file counts from its mtime."""
    try:
        with open(path, "rb") as f:
            return msgspec.json.decode(f.read(), type=Mark)
    except msgspec.DecodeError:
        with contextlib.suppress(OSError):
            return Mark(os.stat(path).st_mtime)
    except OSError:
        pass  # removed between listdir and open: not in force
    return None


_warned: set[tuple[str, int]] = set()


def _read_throttle(path: str) -> Throttle | None:
    try:
        with open(path, "rb") as f:
            return msgspec.json.decode(f.read(), type=Throttle)
    except msgspec.DecodeError as e:
        with contextlib.suppress(OSError):
            seen = (path, os.stat(path).st_mtime_ns)
            if seen not in _warned:  # the daemon re-reads every second: say it once
                _warned.add(seen)
                log.warning("%s: unreadable throttle (%s); not in force", path, e)
    except OSError:
        pass
    return None


class ControlWatcher:
    """Cheap polling for the daemon: a `stat` of the control folder per look, and a re-read
    when its mtime changed (every control is a rename in it) or `refresh` seconds passed
    (a coarse-mtime file system can hide two changes in one tick)."""

    def __init__(self, state_dir: str, refresh: float = 1.0) -> None:
        self.state_dir = state_dir
        self.refresh = refresh
        self._mtime: int | None = -1
        self._read_at = 0.0
        self._controls = Controls()

    def current(self) -> Controls:
        try:
            mtime: int | None = os.stat(control_dir(self.state_dir)).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        except OSError as e:  # keep obeying what we knew; say why it is stale
            log.warning("cannot look at the controls: %s", e)
            return self._controls
        now = time.monotonic()
        if mtime != self._mtime or now - self._read_at >= self.refresh:
            try:
                self._controls = read_controls(self.state_dir)
            except OSError as e:
                log.warning("cannot read the controls: %s", e)
                return self._controls
            self._mtime, self._read_at = mtime, now
        return self._controls


# -- writing -------------------------------------------------------------------------------
def set_pause(
    state_dir: str, harvest: list[str] | None, apply: list[str] | None, on: bool
) -> Controls:
    """Pause (on) or resume harvesting of the `harvest` sources and applying to the `apply`
    targets. None leaves that side as it is; names are explicit (the CLI expands "all")."""
    for prefix, names in ((PAUSE_HARVEST, harvest), (PAUSE_APPLY, apply)):
        for name in names or []:
            _set(state_dir, prefix + _checked(name), Mark(time.time(), _who()) if on else None)
    return read_controls(state_dir)


def set_throttle(
    state_dir: str,
    sources: list[str],
    max_changes_per_second: float | None = None,
    max_lock_ms: float | None = None,
) -> Controls:
    """Set each source's throttle to exactly these limits; both None removes it."""
    for v, what in (
        (max_changes_per_second, "max changes per second"),
        (max_lock_ms, "max lock ms"),
    ):
        if v is not None and not v > 0:
            raise ConfigError(f"{what} must be a positive number, not {v}")
    body = None
    if max_changes_per_second is not None or max_lock_ms is not None:
        body = Throttle(max_changes_per_second, max_lock_ms, time.time(), _who())
    for name in sources:
        _set(state_dir, THROTTLE + _checked(name), body, keep=False)
    return read_controls(state_dir)


def set_postpone(state_dir: str, on: bool) -> Controls:
    """Postpone (on) cutovers: `cdc cutover` refuses to start one until this is lifted."""
    _set(state_dir, POSTPONE_CUTOVER, Mark(time.time(), _who()) if on else None)
    return read_controls(state_dir)


def set_panic(state_dir: str, on: bool) -> Controls:
    """Request (on) a panic stop, or lift it so the daemon may start again."""
    _set(state_dir, PANIC, Mark(time.time(), _who()) if on else None)
    return read_controls(state_dir)


def panic_error(controls: Controls) -> PanicStop:
    """The error a panic file turns into, at start or while running."""
    at = controls.since.get(PANIC)
    when = time.strftime(" at %Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""
    return PanicStop(
        f"panic stop requested{when} (control file `{CONTROL_DIR}/{PANIC}`): "
        "the daemon does not harvest or apply",
        hint="when it is safe to go on: `cdc resume --panic`, then `cdc run`",
    )


def _checked(name: str) -> str:
    """A name becomes part of a file name: refuse what would leave the folder."""
    if not safe_component(name):
        raise ConfigError(f"{name!r} cannot name a source or target")
    return name


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _set(state_dir: str, name: str, body: msgspec.Struct | None, keep: bool = True) -> None:
    try:
        _write(state_dir, name, body, keep)
    except OSError as e:
        raise CdcError(
            f"{control_dir(state_dir)}: cannot set control {name}: {e.strerror or e}",
            hint="run it as the daemon's user (the state dir is theirs, mode 0700)",
        ) from e


def _write(state_dir: str, name: str, body: msgspec.Struct | None, keep: bool) -> None:
    """Write (atomically, durably) or remove one control file. With `keep`, a control
    already on keeps its file, so `since` stays the time it was first set."""
    folder = _ensure_dir(state_dir)
    path = os.path.join(folder, name)
    if body is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
    elif keep and os.path.exists(path):
        return
    else:
        tmp = os.path.join(folder, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a leftover tmp file may have other bits
            os.write(fd, msgspec.json.encode(body) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename (or unlink) itself survives a power loss
    finally:
        os.close(dfd)


def _ensure_dir(state_dir: str) -> str:
    folder = makedirs_private(control_dir(state_dir))  # and the state dir, if it is new
    os.chmod(folder, 0o700)  # whoever can write here can stop the migration
    return folder


# -- the CLI's verbs -----------------------------------------------------------------------
def steer(cfg: Config, what: str, names: list[str], on: bool) -> Controls:
    """`cdc pause`/`cdc resume`: `what` is harvest, apply, both, cutover or panic; no names
    means every source (harvest) or target (apply). Names must be known, except that a
    resume may name a control left over from an older config."""
    if what in ("cutover", "panic", "both") and names:
        raise ConfigError(f"--{what} takes no names: it is for the whole daemon")
    if what == "cutover":
        return set_postpone(cfg.state_dir, on)
    if what == "panic":
        if on:
            raise ConfigError("a panic stop is requested with `cdc panic`")
        return set_panic(cfg.state_dir, False)
    now = read_controls(cfg.state_dir)
    sides = {
        "harvest": ([s[0] for s in expand_sources(cfg)], now.paused_harvest, "source"),
        "apply": (sorted(cfg.targets), now.paused_apply, "target"),
    }
    chosen: dict[str, list[str]] = {}
    for side, (known, paused, kind) in sides.items():
        if what not in (side, "both"):
            continue
        allowed = known + ([] if on else paused)
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise ConfigError(
                f"no such {kind}: {', '.join(unknown)} (known: {', '.join(known) or 'none'})"
            )
        chosen[side] = list(names) or (known if on else known + paused)
    return set_pause(cfg.state_dir, chosen.get("harvest"), chosen.get("apply"), on)


def throttle(
    cfg: Config,
    sources: list[str],
    max_changes_per_second: float | None,
    max_lock_ms: float | None,
    off: bool,
) -> Controls:
    """`cdc throttle`: set (or with `off` remove) the throttle of `sources` (default all)."""
    if off == (max_changes_per_second is not None or max_lock_ms is not None):
        raise ConfigError("give --max-changes-per-second and/or --max-lock-ms, or --off alone")
    known = [s[0] for s in expand_sources(cfg)]
    current = list(read_controls(cfg.state_dir).throttles)
    allowed = known + (current if off else [])
    unknown = [n for n in sources if n not in allowed]
    if unknown:
        raise ConfigError(f"no such source: {', '.join(unknown)} (known: {', '.join(known)})")
    chosen = list(sources) or (known + current if off else known)
    if off:
        return set_throttle(cfg.state_dir, chosen)
    return set_throttle(cfg.state_dir, chosen, max_changes_per_second, max_lock_ms)


def wait_daemon_gone(cfg: Config, timeout: float) -> bool:
    """After `cdc panic`: wait until no daemon runs on the state dir (it writes `stopped`
    once its threads, harvesters and apply worker are done). False on timeout."""
    from cdc.status_file import daemon_running

    deadline = time.monotonic() + timeout
    while daemon_running(cfg):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def describe(c: Controls) -> list[str]:
    """One line per control in force, for `cdc status` and the daemon's log."""
    out = []
    if c.panic:
        out.append(
            f"PANIC STOP requested{_since(c, PANIC)}: the daemon stops and will not start "
            "until `cdc resume --panic`"
        )
    if c.paused_harvest:
        out.append(f"harvest paused: {_names(c, PAUSE_HARVEST, c.paused_harvest)}")
    if c.paused_apply:
        out.append(f"apply paused: {_names(c, PAUSE_APPLY, c.paused_apply)}")
    for name, t in sorted(c.throttles.items()):
        limits = []
        if t.max_changes_per_second is not None:
            limits.append(f"at most {t.max_changes_per_second:g} changes/s")
        if t.max_lock_ms is not None:
            limits.append(f"read transactions under {t.max_lock_ms:g} ms")
        out.append(f"throttle {name}: {', '.join(limits)}{_since(c, THROTTLE + name)}")
    if c.cutover_postponed:
        out.append(f"cutover postponed{_since(c, POSTPONE_CUTOVER)}: `cdc resume --cutover`")
    return out


def _since(c: Controls, file: str) -> str:
    at = c.since.get(file)
    return time.strftime(" (since %Y-%m-%d %H:%M:%S)", time.localtime(at)) if at else ""


def _names(c: Controls, prefix: str, names: list[str]) -> str:
    return ", ".join(n + _since(c, prefix + n) for n in names)
