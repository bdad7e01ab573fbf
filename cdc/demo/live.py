"""What the demo watches while the bots write: convergence, the daemon's continuous verifier,
and tables the daemon misses."""

from __future__ import annotations

from collections.abc import Callable

from cdc.daemon.status import Status
from cdc.planning.plan import Plan
from verifier.continuous import VerifierStatus


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
        f"  | {_verifier_brief(st.verifier)}"
    )
    errors = [f"{s.name}: {s.last_error}" for s in st.sources if s.last_error]
    if uncaptured:
        text += f"  | NOT captured: {', '.join(uncaptured)}"
    if errors:
        text += f"  | source errors: {'; '.join(errors)}"
    if st.problems:
        text += f"  | mapping problems: {'; '.join(st.problems)}"
    return text


def _snapshots_done(st: Status) -> bool:
    return _synced(st) and all(s.snapshot == "done" for s in st.sources if s.tables)


def _passes(v: VerifierStatus) -> int:
    """Full passes the verifier completed: every table verified that many times at least."""
    return min((t.passes for t in v.tables), default=0)


def _verifier_brief(v: VerifierStatus | None) -> str:
    """The continuous verifier in a few words, for the live status line."""
    return "verifier starting" if v is None or not v.tables else f"verifier {_verifier_counts(v)}"


def _verifier_counts(v: VerifierStatus) -> str:
    """Passes done, tables equal in their last pass, rows found differing."""
    n = _passes(v)
    equal = sum(t.state == "equal" for t in v.tables)
    text = (
        f"{n} pass{'' if n == 1 else 'es'}, {equal}/{len(v.tables)} equal, "
        f"{v.mismatches} mismatches"
    )
    others: dict[str, int] = {}  # not `skipped`: its first pass runs during the initial copy
    for t in v.tables:
        if t.state in ("unsettled", "error"):
            others[t.state] = others.get(t.state, 0) + 1
    return text + "".join(f", {k} {s}" for s, k in sorted(others.items()))


def _all_equal(v: VerifierStatus | None) -> bool:
    """The verifier's latest pass found every table equal."""
    return v is not None and bool(v.tables) and all(t.state == "equal" for t in v.tables)


def _verified_by(pid: int) -> Callable[[Status], bool]:
    """A `_wait` condition for a quiet system: daemon `pid`'s continuous verifier found every
    table equal in its latest pass, or found rows that differ (no use waiting then)."""

    def cond(st: Status) -> bool:
        v = st.verifier
        if v is None or v.pid != pid or not v.tables or _passes(v) < 1:
            return False
        return _all_equal(v) or v.mismatches > 0

    return cond
