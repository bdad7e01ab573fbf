"""Prometheus metrics of a running daemon (`cdc run --metrics-addr`), scraped over HTTP."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdc.daemon.metrics import parse_addr
from tests.conftest import REPO, wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_scrape_shows_backlog_lag_and_applied_events(tmp_path, bot_cfg):
    cfg = bot_cfg(wal=False, rows=100)
    port = _free_port()
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    d = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run", "-c", str(cfg), "--metrics-addr", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        src = (("source", "bot"),)

        def synced():
            try:
                m = _scrape(port)
            except OSError:
                return None
            ok = (
                m.get(("cdc_daemon_up", ())) == 1 and m.get(("cdc_source_backlog_events", src)) == 0
            )
            core = m.get(("cdc_target_applied_events_total", (("target", "core"),)), 0)
            return m if ok and core >= 200 else None  # the initial copy: 2 x 100 rows

        m = wait_until(synced, 60, 0.3, "a synced scrape")
        assert m[("cdc_source_lag_seconds", src)] == 0.0
        assert m[("cdc_target_applied_events_total", (("target", "core"),))] >= 200
        bot = sqlite3.connect(tmp_path / "legacy" / "bot.db", isolation_level=None, timeout=10)
        bot.executemany("INSERT INTO log_lines VALUES (?, ?)", [(f"m{i}", i) for i in range(50)])
        bot.close()
        before = m[("cdc_source_captured_total", src)]
        wait_until(
            lambda: _scrape(port)[("cdc_source_applied_total", src)] >= before + 50,
            60,
            0.3,
            "the new changes in the counters",
        )
        with pytest.raises(OSError):  # a bare port is bound to loopback only
            other = [a for a in _addresses() if not a.startswith("127.")]
            if not other:
                raise OSError("no other address to try")
            socket.create_connection((other[0], port), timeout=2).close()
    finally:
        d.terminate()
        d.wait(timeout=60)
        log.close()


def _addresses() -> list[str]:
    try:
        return socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        return []


def test_metrics_addr_forms():
    assert parse_addr("9464") == ("127.0.0.1", 9464)
    assert parse_addr("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert parse_addr("[::1]:9464") == ("::1", 9464)
    with pytest.raises(ValueError):
        parse_addr("host:")


def test_json_logs_carry_source_table_and_target(tmp_path, bot_cfg):
    cfg = bot_cfg(wal=False, rows=10)
    with open(tmp_path / "daemon.log", "wb") as log:
        d = subprocess.Popen(
            [sys.executable, "-m", "cdc", "--log-format", "json", "-v", "run", "-c", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

        def logged():
            lines = (tmp_path / "daemon.log").read_text().splitlines()
            return [json.loads(x) for x in lines] if len(lines) >= 6 else None

        try:
            records = wait_until(logged, 60, 0.2, "log lines")
        finally:
            d.terminate()
            d.wait(timeout=60)
    assert all({"ts", "level", "logger", "msg", "pid"} <= r.keys() for r in records)
    assert any(r.get("source") == "bot" and r.get("table") for r in records)
    assert any(r.get("target") == "core" and r["pid"] != d.pid for r in records)  # the worker
