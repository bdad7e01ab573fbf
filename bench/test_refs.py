"""`cdc refs` over a large application tree: 3,000 Python files (the fixture application's
modules copied into many packages, with their constants and table names varied so each
copy is parsed, folded and matched afresh), against the fixture's real legacy files.

Reported: files per second of `find_refs` (parse, fold every path, parse every SQL
statement with sqlglot, match against the plan). No timed assertion: the machine is shared.
"""

from __future__ import annotations

import statistics
import time

from bench.support import scaled
from cdc.application.names import legacy_names
from cdc.application.refs import find_refs
from cdc.config import load_config
from tests.application.app_setup import FIXTURE_APP, make_legacy

FILES = scaled(3000, 30)


def _tree(root, n: int) -> int:
    modules = sorted(
        p for p in FIXTURE_APP.rglob("*.py") if p.name not in ("conftest.py", "__init__.py")
    )
    texts = [p.read_text() for p in modules]
    for i in range(n):
        text = texts[i % len(texts)].replace("keep the quotes", f"variant {i}")
        pkg = root / f"pkg{i // 100}" / f"sub{i % 7}"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / f"mod{i}.py").write_text(text)
    return n


def test_refs_over_a_large_tree(benchmark, summary, tmp_path):
    config = make_legacy(tmp_path)
    names = legacy_names(load_config(str(config)))
    root = tmp_path / "app"
    n = _tree(root, FILES)
    times: list[float] = []

    def run():
        t = time.perf_counter()
        report = find_refs([str(root)], names)
        times.append(time.perf_counter() - t)
        return report

    report = benchmark.pedantic(run, rounds=3, iterations=1)
    assert report.files_scanned == n
    med = statistics.median(times)
    benchmark.extra_info.update(
        {"files": n, "references": len(report.references), "files_per_s": n / med}
    )
    summary(
        f"refs over {n} Python files: {med:.2f} s median of 3, {n / med:.0f} files/s, "
        f"{len(report.references)} references"
    )
