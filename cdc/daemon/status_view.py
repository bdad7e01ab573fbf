"""Human rendering of `Status` for `cdc status` (the JSON form is the struct itself)."""

from __future__ import annotations

import time

from cdc.control.controls import describe
from cdc.daemon.status import Status


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    return f"{max(0.0, time.time() - ts):.1f}s ago"


def _duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render_status(st: Status, prev: Status | None = None, dt: float = 0.0) -> str:
    """The status as text. Given the previous frame of `cdc status --watch` and the seconds
    between them, rates are shown too (changes/s harvested per source, applied per target)."""
    return _render(st, _rates(st, prev, dt))


def _rates(st: Status, prev: Status | None, dt: float) -> dict[str, float]:
    if prev is None or dt <= 0:
        return {}
    out = {}
    before = {s.name: s.logged for s in prev.sources}
    for s in st.sources:
        if s.name in before:
            out[f"source:{s.name}"] = max(0, s.logged - before[s.name]) / dt
    before = {t.name: t.applied_events for t in prev.targets}
    for t in st.targets:
        if t.name in before:
            out[f"target:{t.name}"] = max(0, t.applied_events - before[t.name]) / dt
    return out


def _render(st: Status, rates: dict[str, float]) -> str:
    lines = _render_daemon(st)
    lines.append("")
    lines.extend(_render_sources(st, rates))
    lines.append("")
    lines.extend(_render_targets(st, rates))
    lines.extend(_render_sections(st))
    lines.append("")
    lines.append(_render_verdict(st))
    return "\n".join(lines)


def _render_daemon(st: Status) -> list[str]:
    d = st.daemon
    up = f", up {_duration(time.time() - d.started_at)}" if d.started_at else ""
    lines = [
        f"daemon: {d.state}"
        + (f" (pid {d.pid}{up}, updated {_age(d.updated_at)})" if d.pid else "")
    ]
    if d.error:
        lines.append(f"  error: {d.error}")
    lines.append(
        f"log: {st.log.segments} segments, offsets {st.log.first_offset}..{st.log.end_offset}"
    )
    return lines


def _render_sources(st: Status, rates: dict[str, float]) -> list[str]:
    lines = [
        f"{'source':<24} {'tables':>6} {'captured':>9} {'logged':>9} {'applied':>9} "
        f"{'backlog':>8} {'lag':>7} {'rate/s':>8}  snapshot"
    ]
    for s in st.sources:
        lag = "?" if s.lag_seconds is None else f"{s.lag_seconds:.2f}s"
        inst = "" if s.installed or not s.tables else "  NOT INSTALLED"
        rate = rates.get(f"source:{s.name}")
        rate_s = "-" if rate is None else f"{rate:.0f}"
        lines.append(
            f"{s.name:<24} {s.tables:>6} {s.captured:>9} {s.logged:>9} {s.applied:>9} "
            f"{s.backlog_events:>8} {lag:>7} {rate_s:>8}  {s.snapshot}{inst}"
        )
        if s.capture == "hooks":
            lines.append(
                f"  hook capture: {s.hook_changes} changes through the pool, "
                f"{s.foreign_changes} by writers outside it (captured by the triggers)"
            )
        if s.last_error:
            lines.append(f"  last error: {s.last_error}")
    return lines


def _render_targets(st: Status, rates: dict[str, float]) -> list[str]:
    lines = [
        f"{'target':<12} {'applied events':>14} {'log offset':>12} {'behind (bytes)':>15} "
        f"{'batch lag':>9} {'rate/s':>8} {'last apply':>12}"
    ]
    for t in st.targets:
        rate = rates.get(f"target:{t.name}")
        rate_s = "-" if rate is None else f"{rate:.0f}"
        tlag = "-" if t.lag_seconds is None else f"{t.lag_seconds:.2f}s"
        lines.append(
            f"{t.name:<12} {t.applied_events:>14} {t.log_offset:>12} {t.backlog_bytes:>15} "
            f"{tlag:>9} {rate_s:>8} {_age(t.last_applied_at):>12}"
        )
        if t.last_error:
            lines.append(f"  last error: {t.last_error}")
    return lines


def _render_sections(st: Status) -> list[str]:
    """The optional parts (verifier, cutovers, rollback windows, pools, controls,
    problems): each shows only when there is something to say."""
    lines: list[str] = []
    if st.verifier is not None:
        lines.append("")
        lines.extend(_render_verifier(st.verifier))
    for c in st.cutovers:
        lines.append(_render_cutover(c))
    for name, b in sorted(st.backflow.items()):
        lines.append(_render_backflow(name, b))
    if st.pools:
        lines.append("")
        lines.extend(_render_pool(m) for m in st.pools)
    if st.controls.active:
        lines.append("")
        lines.extend(f"CONTROL: {c}" for c in describe(st.controls))
    for p in st.problems:
        lines.append(f"PROBLEM: {p}")
    return lines


def _render_verdict(st: Status) -> str:
    if st.in_sync and st.problems:  # what is replicated is in sync; the rest is not
        return f"in sync, except {len(st.problems)} problem(s) above"
    if st.in_sync:
        return "in sync"
    behind = sum(t.backlog_bytes for t in st.targets)
    return (
        f"backlog: {st.backlog_events} changes not yet applied, {behind} log bytes not yet applied"
    )


def _render_verifier(v) -> list[str]:  # noqa: ANN001 - VerifierStatus
    counts: dict[str, int] = {}
    for t in v.tables:
        counts[t.state] = counts.get(t.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    doing = f", now {v.current}" if v.current else ""
    out = [f"verifier: {v.cycle} passes done{doing} ({summary}; updated {_age(v.updated_at)})"]
    for t in v.tables:
        if t.state in ("equal", "pending"):
            continue
        what = f"{t.mismatches} rows differ" if t.state == "diverged" else (t.reason or "")
        out.append(
            f"  {t.state.upper()} {t.source}.{t.table} -> {t.target}.{t.target_table}: {what}"
            f" (last equal {_age(t.last_verified_at)})"
        )
        for d in t.diverged[:3]:
            out.append(f"    {d.kind} key ({', '.join(d.key)})")
    return out


_CUTOVER_STATES = {
    "fencing": "INTERRUPTED while fencing the legacy tables: run `cdc cutover {t}` again "
    "(or `cdc cutover --abort {t}`)",
    "fenced": "legacy tables FENCED, not yet handed over: run `cdc cutover {t}` again "
    "(or `cdc cutover --abort {t}`)",
    "done": "cut over {when}: the bots write to {path}",
    "aborted": "cutover aborted; the bots use the legacy tables",
    "rolling_back": "ROLLING BACK, both sides fenced: run `cdc rollback {t}` again "
    "(or `cdc rollback --abort {t}`)",
    "rolled_back": "rolled back {rb_when}: the bots write to their legacy files; {path} "
    "follows them, fenced",
}


def _render_cutover(c) -> str:  # noqa: ANN001 - CutoverRecord
    rb = c.rollback
    text = _CUTOVER_STATES.get(c.state, c.state).format(
        t=c.target,
        when=_when(c.done_at),
        rb_when=_when(rb.rolled_back_at if rb else None),
        path=c.path,
    )
    pause = f" (bots fenced {c.pause_ms:.0f} ms)" if c.pause_ms is not None else ""
    if c.state == "rolled_back" and rb and rb.pause_ms is not None:
        pause = f" (bots fenced {rb.pause_ms:.0f} ms)"
    err = f"; last error: {c.error}" if c.error and c.state != "done" else ""
    rounds = f"; {len(c.history)} earlier round(s)" if c.history else ""
    return f"cutover {c.target}: {text}{pause}{rounds}{err}"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def _render_backflow(name: str, b) -> str:  # noqa: ANN001 - BackflowRuntime
    err = f"; last error: {b.last_error}" if b.last_error else ""
    return (
        f"rollback window {name}: {b.events} target changes written back, "
        f"{b.behind} behind (target sequence {b.captured_seq}){err}"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _render_pool(m) -> str:  # noqa: ANN001 - PoolMetrics
    hooks = ", hooks" if m.hooks else ""
    return (
        f"pool {m.database} pid {m.pid}: {m.open}/{m.size} open, {m.in_use} in use, "
        f"{m.checkouts} checkouts, {m.waits} waits (max {_ms(m.wait_seconds_max)}), "
        f"{m.timeouts} timeouts, {m.errors} errors, longest hold {_ms(m.longest_hold_seconds)}"
        f"{hooks}"
    )
