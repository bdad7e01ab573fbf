"""Fixtures for the benchmarks: an end-of-run summary of the derived figures.

pytest-benchmark's table shows timings only, while what the issue asks about are derived
figures (with/without ratios, changes/s, lag percentiles). Each benchmark stores them in
`benchmark.extra_info`, where `--benchmark-json` keeps them, and adds a line here so
they are also printed at the end of the run.
"""

from __future__ import annotations

import os

import pytest

_SUMMARY: list[str] = []


@pytest.fixture
def summary():
    """`summary(line)` adds a line to the "sqlite-cdc derived figures" section."""
    return _SUMMARY.append


@pytest.fixture(autouse=True)
def _machine_load(request):
    """Record the load average: this 2-core VM may be shared, and load skews every figure."""
    if "benchmark" in request.fixturenames:
        bench = request.getfixturevalue("benchmark")
        bench.extra_info["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)


def pytest_terminal_summary(terminalreporter) -> None:
    if _SUMMARY:
        terminalreporter.section("sqlite-cdc derived figures")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
