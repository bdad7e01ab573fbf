"""Fixtures for the benchmarks: side-by-side ratios and a summary of the derived figures.

A ratio between two benchmarks (with/without triggers, pipeline/raw copy) is only
meaningful when both ran in the same session on the same machine, so `pairs` computes it
from the medians of that session and writes it into both benchmarks' `extra_info`, where
`--benchmark-json` keeps it. The derived figures (ratios, rates, lag percentiles) are also
printed at the end of the run, because pytest-benchmark's table shows only timings.
"""

from __future__ import annotations

import pytest

_SUMMARY: list[str] = []


def note(line: str) -> None:
    """Add a line to the end-of-run summary."""
    _SUMMARY.append(line)


class Pairs:
    """Medians of paired benchmarks; the ratio appears once both sides have run."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, tuple[float, dict]]] = {}

    def add(self, pair: str, role: str, benchmark, *, ratio: tuple[str, str, str]) -> None:
        """Record `benchmark`'s median as `role` of `pair`.

        `ratio` is (name, numerator role, denominator role); when both roles are in, the
        ratio of their medians goes into the `extra_info` of every member of the pair.
        """
        if benchmark.stats is None:  # --benchmark-disable: nothing was timed
            return
        median = benchmark.stats.stats.median
        members = self._seen.setdefault(pair, {})
        members[role] = (median, benchmark.extra_info)
        benchmark.extra_info["median_s"] = median
        name, num, den = ratio
        if num in members and den in members:
            value = members[num][0] / members[den][0]
            for _, info in members.values():
                info[name] = round(value, 4)
                info[f"{num}_median_s"] = members[num][0]
                info[f"{den}_median_s"] = members[den][0]
            note(f"{pair}: {name} = {value:.3f} (median {num} {members[num][0] * 1e3:.2f} ms"
                 f" / {den} {members[den][0] * 1e3:.2f} ms)")


_PAIRS = Pairs()


@pytest.fixture
def pairs() -> Pairs:
    return _PAIRS


@pytest.fixture
def summary():
    return note


def pytest_terminal_summary(terminalreporter) -> None:
    if _SUMMARY:
        terminalreporter.section("sqlite-cdc derived figures")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
