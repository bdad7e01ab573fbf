"""What the demo watches while the bots write: convergence, and tables the daemon misses."""

from __future__ import annotations

from cdc.plan import Plan
from cdc.status import Status


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


def _snapshots_done(st: Status) -> bool:
    return _synced(st) and all(s.snapshot == "done" for s in st.sources if s.tables)
