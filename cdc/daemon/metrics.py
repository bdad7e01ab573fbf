"""Prometheus metrics (`cdc run --metrics-addr`), built from `cdc status` at each scrape.

Every figure comes from `collect_status`, the same function `cdc status` uses, so the
dashboard and the terminal never disagree, and the hot paths (harvest, apply) carry no
instrumentation at all: a scrape costs what one `cdc status` costs (it opens each legacy
file read-only for its capture count), at the scraper's pace.

Names and labels are in docs/metrics.md. Counters are the totals the daemon reports;
`rate()` over them gives events/s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from cdc.config import Config
from cdc.daemon.status import Status, collect_status
from cdc.planning.plan import Plan

log = logging.getLogger(__name__)


def _g(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _c(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def families(st: Status) -> list:
    """The metric families of one status."""
    return [
        *_daemon_families(st),
        *_source_families(st),
        *_target_families(st),
        *_verifier_families(st),
        *_pool_families(st),
        *_problem_families(st),
    ]


def _daemon_families(st: Status) -> list:
    up = _g("cdc_daemon_up", "1 while the daemon runs and its status file is fresh", [])
    up.add_metric([], 1.0 if st.daemon.state == "running" else 0.0)
    uptime = _g("cdc_daemon_uptime_seconds", "seconds since the daemon started", [])
    if st.daemon.started_at and st.daemon.updated_at:
        uptime.add_metric([], max(0.0, st.daemon.updated_at - st.daemon.started_at))
    log_end = _g("cdc_log_end_offset_bytes", "end of the change log (byte offset)", [])
    log_end.add_metric([], float(st.log.end_offset))
    segs = _g("cdc_log_segments", "change-log segments on disk", [])
    segs.add_metric([], float(st.log.segments))
    return [up, uptime, log_end, segs]


def _source_families(st: Status) -> list:
    src = ["source"]
    captured = _c("cdc_source_captured", "capture sequence reached in the legacy file", src)
    logged = _c("cdc_source_logged", "capture sequence the change log holds", src)
    applied = _c("cdc_source_applied", "capture sequence every target fed has applied", src)
    backlog = _g("cdc_source_backlog_events", "captured but not yet applied (sequences)", src)
    lag = _g("cdc_source_lag_seconds", "how far the targets are behind (see docs)", src)
    heartbeat = _g("cdc_source_heartbeat_timestamp_seconds", "last complete harvest pass", src)
    errored = _g("cdc_source_error", "1 while the source's last harvest failed", src)
    hooked = _c("cdc_source_hook_changes", "hook capture: changes through the pool", src)
    foreign = _c("cdc_source_foreign_changes", "hook capture: changes by other writers", src)
    for s in st.sources:
        lab = [s.name]
        captured.add_metric(lab, float(s.captured))
        logged.add_metric(lab, float(s.logged))
        applied.add_metric(lab, float(s.applied))
        backlog.add_metric(lab, float(s.backlog_events))
        if s.lag_seconds is not None:  # unknown is absent, never a stale 0
            lag.add_metric(lab, s.lag_seconds)
        if s.heartbeat_at:
            heartbeat.add_metric(lab, s.heartbeat_at)
        errored.add_metric(lab, 1.0 if s.last_error else 0.0)
        if s.capture == "hooks":
            hooked.add_metric(lab, float(s.hook_changes))
            foreign.add_metric(lab, float(s.foreign_changes))
    return [captured, logged, applied, backlog, lag, heartbeat, errored, hooked, foreign]


def _target_families(st: Status) -> list:
    tgt = ["target"]
    t_applied = _c("cdc_target_applied_events", "events applied to the target", tgt)
    t_offset = _g("cdc_target_log_offset_bytes", "log offset the target has applied", tgt)
    t_behind = _g("cdc_target_backlog_bytes", "log bytes not yet applied", tgt)
    t_lag = _g("cdc_target_apply_lag_seconds", "harvest-to-apply delay of the last batch", tgt)
    t_err = _g("cdc_target_error", "1 while the target's last apply failed", tgt)
    for t in st.targets:
        lab = [t.name]
        t_applied.add_metric(lab, float(t.applied_events))
        t_offset.add_metric(lab, float(t.log_offset))
        t_behind.add_metric(lab, float(t.backlog_bytes))
        if t.lag_seconds is not None:
            t_lag.add_metric(lab, t.lag_seconds)
        t_err.add_metric(lab, 1.0 if t.last_error else 0.0)
    return [t_applied, t_offset, t_behind, t_lag, t_err]


def _verifier_families(st: Status) -> list:
    v_tables = _g("cdc_verifier_tables", "tables per verifier state", ["state"])
    v_mismatch = _g("cdc_verifier_mismatched_rows", "rows found different, per table", ["table"])
    if st.verifier is not None:
        counts: dict[str, int] = {}
        for tv in st.verifier.tables:
            counts[tv.state] = counts.get(tv.state, 0) + 1
            v_mismatch.add_metric([f"{tv.source}.{tv.table}"], float(tv.mismatches))
        for state, n in sorted(counts.items()):
            v_tables.add_metric([state], float(n))
    return [v_tables, v_mismatch]


def _pool_families(st: Status) -> list:
    pl = ["database", "pid"]
    p_checkouts = _c("cdc_pool_checkouts", "connections lent", pl)
    p_waits = _c("cdc_pool_waits", "checkouts that had to queue", pl)
    p_wait_max = _g("cdc_pool_wait_seconds_max", "longest wait for a connection", pl)
    p_timeouts = _c("cdc_pool_timeouts", "borrowers that gave up", pl)
    p_errors = _c("cdc_pool_errors", "checkouts that ended badly", pl)
    p_fenced = _c("cdc_pool_fenced_writes", "writes a cutover's fence refused (a stale bot)", pl)
    p_open = _g("cdc_pool_open_connections", "connections open", pl)
    p_in_use = _g("cdc_pool_in_use_connections", "connections lent out now", pl)
    p_hold = _g("cdc_pool_longest_hold_seconds", "longest time one borrower held one", pl)
    for m in st.pools:
        lab = [m.database, str(m.pid)]
        p_checkouts.add_metric(lab, float(m.checkouts))
        p_waits.add_metric(lab, float(m.waits))
        p_wait_max.add_metric(lab, m.wait_seconds_max)
        p_timeouts.add_metric(lab, float(m.timeouts))
        p_errors.add_metric(lab, float(m.errors))
        p_fenced.add_metric(lab, float(m.fenced))
        p_open.add_metric(lab, float(m.open))
        p_in_use.add_metric(lab, float(m.in_use))
        p_hold.add_metric(lab, m.longest_hold_seconds)
    return [
        *(p_checkouts, p_waits, p_wait_max, p_timeouts, p_errors, p_fenced),
        *(p_open, p_in_use, p_hold),
    ]


def _problem_families(st: Status) -> list:
    problems = _g("cdc_plan_problems", "mapping problems found now (unmapped tables...)", [])
    problems.add_metric([], float(len(st.problems)))
    kept = _g(
        "cdc_cutover_kept_out",
        "1 per cut-over table whose other side changed (kept out of its live copy)",
        ["source", "table", "path", "side"],
    )
    for k in st.kept_out:
        kept.add_metric([k.source, k.table, k.path, k.side], 1.0)
    return [problems, kept]


class StatusCollector(Collector):
    """Collects at scrape time, one scrape at a time (a status read is not free)."""

    def __init__(self, cfg: Config, plan: Plan | None = None) -> None:
        self.cfg, self.plan = cfg, plan
        self._lock = threading.Lock()

    def collect(self) -> Iterator:
        with self._lock:
            try:
                st = collect_status(self.cfg, self.plan)
            except Exception as e:  # noqa: BLE001 - a failed scrape says so, never kills the daemon
                log.warning("metrics: status unavailable: %s", e)
                fail = GaugeMetricFamily("cdc_status_error", "1 when status could not be read")
                fail.add_metric([], 1.0)
                yield fail
                return
            yield from families(st)


def parse_addr(addr: str) -> tuple[str, int]:
    """`PORT` or `HOST:PORT`; a bare port binds to loopback only (docs/metrics.md)."""
    host, _, port = addr.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--metrics-addr {addr!r}: use PORT or HOST:PORT")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def serve(cfg: Config, addr: str, plan: Plan | None = None):  # noqa: ANN201 - server, thread
    """Start the HTTP endpoint in a daemon thread; returns what prometheus_client returns."""
    host, port = parse_addr(addr)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(cfg, plan))
    log.info("metrics on http://%s:%d/metrics", host, port)
    return start_http_server(port, addr=host, registry=registry)
