"""The Grafana dashboard and Prometheus rules in contrib/ against the metrics the code exports.

The exported names come from two places that must agree: a real daemon scraped over HTTP
(`cdc run --metrics-addr`; a family without samples still has its `# TYPE` line), and the
`_g(`/`_c(`/`GaugeMetricFamily(` name literals in cdc/daemon/metrics.py read with `ast`, which
also covers a family that only appears in some states (`cdc_status_error`). Every metric a
dashboard query or an alert uses must be exported, and every exported family must be on the
dashboard, so a new metric is not forgotten.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, wait_until

DASHBOARD = REPO / "contrib" / "grafana" / "sqlite-cdc.json"
RULES = REPO / "contrib" / "prometheus" / "sqlite-cdc-rules.yml"
METRICS_PY = REPO / "cdc" / "daemon" / "metrics.py"

METRIC = re.compile(r"\bcdc_[a-z_]+\b")
# `docs/runbook.md, "Watching lag"`: how panel descriptions and alert annotations cite a section
SECTION = re.compile(r"\b(docs/[a-z-]+\.md), \"([^\"]+)\"")

# Exported families that genuinely do not belong on the dashboard, each with its reason.
# Empty today: every family has a panel.
NOT_ON_DASHBOARD: dict[str, str] = {}

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "bot"
path = "legacy/bot.db"
[[rules]]
table = "*"
target = "core"
"""


# ------------------------------------------------------------------ what the code exports


def _exported_by_ast() -> dict[str, str]:
    """Exposed name -> type, from the name literals in cdc/daemon/metrics.py."""
    out = {}
    for node in ast.walk(ast.parse(METRICS_PY.read_text())):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        fn = node.func.id if isinstance(node.func, ast.Name) else None
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        if fn in ("_c", "CounterMetricFamily"):
            out[f"{first.value}_total"] = "counter"  # the exposition adds the suffix
        elif fn in ("_g", "GaugeMetricFamily"):
            out[first.value] = "gauge"
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _types(text: str) -> dict[str, str]:
    """Exposed name -> type, from the `# TYPE` lines of an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> dict[str, str]:
    """Exposed name -> type, from one scrape of a real daemon over a real legacy file."""
    root = tmp_path_factory.mktemp("contrib")
    (root / "legacy").mkdir()
    bot = sqlite3.connect(root / "legacy" / "bot.db", isolation_level=None)
    bot.executescript(
        "CREATE TABLE positions(symbol TEXT PRIMARY KEY, qty INTEGER);"
        "INSERT INTO positions VALUES ('A', 1), ('B', 2);"
    )
    bot.close()
    cfg = root / "cdc.toml"
    cfg.write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "cdc"]
    inst = subprocess.run(
        [*run, "install", "-c", str(cfg)], capture_output=True, text=True, env=env, timeout=60
    )
    assert inst.returncode == 0, inst.stderr
    port = _free_port()
    with open(root / "daemon.log", "wb") as log:
        d = subprocess.Popen(
            [*run, "run", "-c", str(cfg), "--metrics-addr", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:

            def up():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                        text = r.read().decode()
                except OSError:
                    return None
                return text if re.search(r"^cdc_daemon_up 1\.0$", text, re.M) else None

            text = wait_until(up, 60, 0.2, "a scrape of a running daemon")
        finally:
            d.terminate()
            d.wait(timeout=60)
    return {n: k for n, k in _types(text).items() if n.startswith("cdc_")}


@pytest.fixture(scope="module")
def exported(scraped) -> dict[str, str]:
    return {**_exported_by_ast(), **scraped}


def test_the_scrape_and_the_source_agree(scraped):
    by_ast = _exported_by_ast()
    # cdc_status_error is only served when the status cannot be read
    assert set(scraped) == set(by_ast) - {"cdc_status_error"}
    assert {n: by_ast[n] for n in scraped} == scraped
    assert len(by_ast) >= 30  # the parse found the families, not nothing


# ------------------------------------------------------------------ what contrib/ queries


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # the panels of a collapsed row
    return out


def _dashboard_exprs(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if v["type"] == "query":
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_every_dashboard_query_uses_exported_metrics(exported):
    exprs = _dashboard_exprs(_dashboard())
    assert len(exprs) > 30
    for e in exprs:
        used = set(METRIC.findall(e))
        assert used, f"no sqlite-cdc metric in {e!r}"
        assert used <= set(exported), f"{e!r} uses {sorted(used - set(exported))}"
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e


def test_every_exported_family_is_on_the_dashboard(exported):
    used = {m for e in _dashboard_exprs(_dashboard()) for m in METRIC.findall(e)}
    missing = set(exported) - used - set(NOT_ON_DASHBOARD)
    assert not missing, f"exported but on no dashboard panel: {sorted(missing)}"
    assert not set(NOT_ON_DASHBOARD) - set(exported), "stale entries in NOT_ON_DASHBOARD"


def test_every_alert_uses_exported_metrics(exported):
    for r in _rules():
        used = set(METRIC.findall(r["expr"]))
        assert used, r["alert"]
        assert used <= set(exported), f"{r['alert']} uses {sorted(used - set(exported))}"


def test_the_alerts_the_runbook_recommends_are_there():
    exprs = " | ".join(r["expr"] for r in _rules())
    for needed in (
        "cdc_daemon_up == 0",
        "absent(cdc_daemon_up)",
        "cdc_source_lag_seconds > 60",
        "unless cdc_source_lag_seconds",  # lag absent for a source that is reported
        "cdc_source_backlog_events[15m]",
        "cdc_target_error == 1",
        'cdc_verifier_tables{state="diverged"} > 0',
        "cdc_verifier_mismatched_rows > 0",
        "cdc_plan_problems > 0",
        "increase(cdc_pool_timeouts_total[5m]) > 0",
        "cdc_cutover_kept_out == 1",
        "cdc_status_error == 1",
    ):
        assert needed in exprs, needed


# ------------------------------------------------------------------ structure


def test_rules_file_structure():
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    alerts = []
    for g in doc["groups"]:
        assert g["rules"], g["name"]
        for r in g["rules"]:
            assert {"alert", "expr", "for", "labels", "annotations"} <= set(r), r
            assert re.fullmatch(r"Cdc[A-Za-z]+", r["alert"]), r["alert"]
            assert re.fullmatch(r"\d+[smh]", r["for"]), r
            assert r["labels"]["severity"] in {"critical", "warning", "info"}, r
            assert r["annotations"]["summary"] and r["annotations"]["description"], r
            assert SECTION.fullmatch(r["annotations"]["runbook"]), r["alert"]
            alerts.append(r["alert"])
    assert len(alerts) == len(set(alerts))


def test_dashboard_structure():
    dash = _dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    for name in ("source", "target"):
        q = variables[name]["query"]
        assert re.fullmatch(rf"label_values\(cdc_[a-z_]+(\{{[^}}]*\}})?, {name}\)", q["query"])
    for p in _panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])
        assert p.get("description"), f"panel {p['title']!r} says nothing about bad values"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]


def test_panels_filter_by_the_source_and_target_variables():
    for p in _panels(_dashboard()):
        for t in p.get("targets", []):
            e = t["expr"]
            if "cdc_source_" in e:
                assert 'source=~"$source"' in e, e
            if "cdc_target_" in e:
                assert 'target=~"$target"' in e, e


# ------------------------------------------------------------------ the docs they cite


def _headings(path: Path) -> set[str]:
    return {ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")}


def test_cited_doc_sections_exist():
    texts = [p.get("description", "") for p in _panels(_dashboard())]
    texts += [a for r in _rules() for a in r["annotations"].values()]
    cited = {m for t in texts for m in SECTION.findall(t)}
    assert ("docs/runbook.md", "Watching lag") in cited
    for doc, section in sorted(cited):
        assert section in _headings(REPO / doc), f"{doc} has no section {section!r}"
    runbooks = {r["annotations"]["runbook"] for r in _rules()}
    assert all(rb.startswith("docs/runbook.md, ") for rb in runbooks)


def test_docs_point_at_the_contrib_files():
    for doc in ("docs/metrics.md", "docs/runbook.md"):
        text = (REPO / doc).read_text()
        assert "contrib/grafana/sqlite-cdc.json" in text, doc
        assert "contrib/prometheus/sqlite-cdc-rules.yml" in text, doc
    metrics_md = (REPO / "docs" / "metrics.md").read_text()
    for r in _rules():
        assert f"`{r['alert']}`" in metrics_md, f"docs/metrics.md does not list {r['alert']}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH")
def test_promtool_accepts_the_rules():
    r = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
