"""The demo world keeps its promises: the generated legacy files have the awkward features the
replicator must handle, the demo config maps every table, and the bots really write live files
and stop cleanly. Real SQLite files in tmp_path, real bot processes, no mocks.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import random
import sqlite3
import subprocess
import sys
import time
import tomllib
from contextlib import closing
from pathlib import Path

import pytest

from cdc.demo.botlib import run_bot
from cdc.demo.bots import KINDS, start_bots, stop_bots
from cdc.demo.generator import LegacyFile, demo_config_toml, generate_legacy, write_demo_config
from cdc.demo.kinds_trading import TraderBot
from cdc.demo.schema import ODD_TABLE, quote


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[LegacyFile]]:
    """One generated tree for the read-only checks (tests that write make their own)."""
    root = tmp_path_factory.mktemp("demo")
    return root, generate_legacy(root, seed=7)


def _db(root: Path, f: LegacyFile) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{root / f.path}?mode=ro", uri=True)


def _tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%'"
        " ESCAPE '\\'"
    )
    return [n for (n,) in rows]


def _schema(root: Path, files: list[LegacyFile]) -> dict[tuple[str, str], dict]:
    """(source, table) -> sql, columns, pk columns, unique-constraint count, row count."""
    out = {}
    for f in files:
        with closing(_db(root, f)) as c:
            for t in _tables(c):
                info = c.execute(f"PRAGMA table_info({quote(t)})").fetchall()
                uniques = [i for i in c.execute(f"PRAGMA index_list({quote(t)})") if i[3] == "u"]
                out[f.source, t] = {
                    "sql": c.execute(
                        "SELECT sql FROM sqlite_master WHERE name = ?", (t,)
                    ).fetchone()[0],
                    "cols": [r[1] for r in info],
                    "types": {r[1]: r[2] for r in info},
                    "defaults": {r[1]: r[4] for r in info},
                    "pk": [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]],
                    "uniques": len(uniques),
                    "rows": c.execute(f"SELECT count(*) FROM {quote(t)}").fetchone()[0],
                }
    return out


def _digest(path: Path, table: str) -> str:
    with closing(sqlite3.connect(path)) as c:
        rows = c.execute(f"SELECT * FROM {quote(table)} ORDER BY 1").fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def test_files_exist_with_both_journal_modes(demo):
    root, files = demo
    assert len(files) == 8
    assert len({f.source for f in files}) == 8
    for f in files:
        assert (root / f.path).is_file()
        assert f.path.parts[0] == "legacy"
        with closing(_db(root, f)) as c:
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == f.journal
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert tuple(_tables(c)) == f.tables
    modes = [f.journal for f in files]
    assert 0 < modes.count("wal") < modes.count("delete")
    assert {str(f.path) for f in files} >= {
        "legacy/data/trading.db",
        "legacy/bots/buy_tracker/trades.db",
        "legacy/data/cache/file_cache.db",
    }


def test_schema_features(demo):
    root, files = demo
    s = _schema(root, files)
    sqls = [t["sql"].upper() for t in s.values()]
    assert any("AUTOINCREMENT" in q for q in sqls)
    assert any(q.rstrip().endswith("WITHOUT ROWID") for q in sqls)
    assert not any(q.startswith("CREATE VIRTUAL") for q in sqls)
    assert any(len(t["pk"]) == 1 and t["types"][t["pk"][0]] == "TEXT" for t in s.values())
    assert any(len(t["pk"]) > 1 for t in s.values())
    assert [k for k, t in s.items() if not t["pk"]] == [("metrics", "component_correlations")]
    assert sum(t["uniques"] > 0 for t in s.values()) >= 5
    assert any("CURRENT_TIMESTAMP" in t["defaults"].values() for t in s.values())
    assert "CHECK (ID = 1)" in s["trading", "scorecard"]["sql"].upper()
    assert s["trading", "positions"]["types"]["entry_amount_sol"] == "REAL"
    assert s["trading", "positions"]["types"]["entry_lamports"] == "INTEGER"
    assert "select" in s["metrics", ODD_TABLE]["cols"]
    assert ("trading", "test") in s
    for name in ("trades", "users", "memories"):
        owners = [src for src, t in s if t == name]
        assert len(owners) == 2, name
        a, b = (s[o, name] for o in owners)
        assert a["cols"] != b["cols"], name
    # merged tables share the key column names
    assert s["trading", "trades"]["pk"] == s["buy_tracker", "trades"]["pk"] == ["id"]
    for key, t in s.items():
        if key not in {("trading", "scorecard"), ("rate_limiter", "rate_configs")}:
            assert 200 <= t["rows"] <= 600, key


def test_values_cover_storage_classes_and_edge_cases(demo):
    root, files = demo
    by = {f.source: f for f in files}
    with closing(_db(root, by["metrics"])) as c:
        kinds = {t for (t,) in c.execute(f"SELECT DISTINCT typeof(raw) FROM {quote(ODD_TABLE)}")}
        assert kinds == {"null", "integer", "real", "text", "blob"}
        reals = [x for (x,) in c.execute(f"SELECT raw FROM {quote(ODD_TABLE)}")]
        assert any(isinstance(x, float) and x == 0 and math.copysign(1, x) < 0 for x in reals)
        assert 1e-300 in reals and 0.1 + 0.2 in reals
        dup = c.execute(
            "SELECT count(*) FROM (SELECT 1 FROM component_correlations"
            " GROUP BY timestamp, component, correlation, sample_size HAVING count(*) > 1)"
        ).fetchone()[0]
        assert dup > 0
    with closing(_db(root, by["file_cache"])) as c:
        blobs = [b for (b,) in c.execute("SELECT value FROM cache_entries")]
        assert all(isinstance(b, bytes) for b in blobs)
        assert sum(b"\x00" in b for b in blobs) > 100
        assert b"" in blobs
    with closing(_db(root, by["telegram"])) as c:
        text = " ".join(x for (x,) in c.execute("SELECT content FROM messages"))
        assert "🚀" in text and "مرحبا" in text and "שלום" in text
    with closing(_db(root, by["trading"])) as c:
        metas = [m for (m,) in c.execute("SELECT meta_json FROM positions") if m is not None]
        assert all(isinstance(json.loads(m), dict) for m in metas)
        assert c.execute("SELECT count(*) FROM positions WHERE meta_json IS NULL").fetchone()[0]
        assert c.execute("SELECT count(*) FROM orders").fetchone()[0] < 270  # gaps in ids


def test_generation_is_deterministic(tmp_path):
    a = generate_legacy(tmp_path / "a", seed=3)
    b = generate_legacy(tmp_path / "b", seed=3)
    c = generate_legacy(tmp_path / "c", seed=4)
    assert a == b
    for fa, fc in zip(a, c, strict=True):
        for t in fa.tables:
            d = _digest(tmp_path / "a" / fa.path, t)
            assert d == _digest(tmp_path / "b" / fa.path, t), (fa.source, t)
            if t != "scorecard":
                assert d != _digest(tmp_path / "c" / fc.path, t), (fa.source, t)


def _resolve(rules: list[dict], source: str, table: str) -> dict:
    """The engine's documented rule semantics: literal table beats glob, ties are errors."""

    def literal(p: str) -> bool:
        return not any(ch in p for ch in "*?[")

    hits = [
        r
        for r in rules
        if fnmatch.fnmatchcase(source, r.get("source", "*"))
        and fnmatch.fnmatchcase(table, r["table"])
    ]
    assert hits, f"{source}.{table}: no rule"
    best = max(literal(r["table"]) for r in hits)
    best_hits = [r for r in hits if literal(r["table"]) == best]
    best_src = max(literal(r.get("source", "*")) for r in best_hits)
    best_hits = [r for r in best_hits if literal(r.get("source", "*")) == best_src]
    assert len(best_hits) == 1, f"{source}.{table}: ambiguous {best_hits}"
    return best_hits[0]


def test_config_maps_every_table(demo):
    root, files = demo
    cfg = tomllib.loads(demo_config_toml(root, files))
    assert set(cfg["targets"]) == {"core", "analytics", "cache"}
    assert {s["name"]: s["path"] for s in cfg["sources"]} == {
        f.source: f.path.as_posix() for f in files
    }
    placed: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for f in files:
        with closing(_db(root, f)) as c:
            for t in _tables(c):
                r = _resolve(cfg["rules"], f.source, t)
                if r.get("exclude"):
                    assert (f.source, t) == ("trading", "test")
                    continue
                dest = (r["target"], r.get("as", t))
                placed.setdefault(dest, []).append((f.source, t))
                if len(placed[dest]) > 1:
                    assert r.get("merge") and r.get("tag_column") == "source", dest
    assert sorted(placed["core", "trades"]) == [("buy_tracker", "trades"), ("trading", "trades")]
    assert placed["core", "telegram_users"] == [("telegram", "users")]
    assert placed["core", "x_users"] == [("x_memory", "users")]
    assert {d for d, srcs in placed.items() if srcs[0][1] == "memories"} == {
        ("core", "telegram_memories"),
        ("core", "x_memories"),
    }
    targets = {src: d[0] for d, srcs in placed.items() for src, _ in srcs}
    assert targets["llm_costs"] == targets["metrics"] == "analytics"
    assert targets["rate_limiter"] == targets["file_cache"] == "cache"
    assert targets["trading"] == "core"
    # a table a bot creates later still has a home (the per-source glob fallback)
    assert _resolve(cfg["rules"], "llm_costs", "budget_alerts")["target"] == "analytics"


def test_config_loads_and_resolves_in_engine(demo):
    """Cross-check with the engine's own reader and resolver (skipped if they are absent)."""
    config = pytest.importorskip("cdc.config")
    plan_mod = pytest.importorskip("cdc.planning.resolve")
    root, files = demo
    cfg = config.load_config(write_demo_config(root, files))
    assert set(cfg.targets) == {"core", "analytics", "cache"}
    assert {Path(s.path) for s in cfg.sources} == {root.resolve() / f.path for f in files}
    plan = plan_mod.resolve_plan(cfg)
    trades = [plan.mapping(src, "trades") for src in ("trading", "buy_tracker")]
    assert {(m.target, m.target_table, m.tag_column) for m in trades} == {
        ("core", "trades", "source")
    }
    assert plan.mapping("trading", "test") is None


def test_every_bot_op_runs(tmp_path):
    root = tmp_path
    generate_legacy(root, seed=11)
    for kind, cls in KINDS.items():
        bot = cls(root, random.Random(kind))
        bot.setup(alter=True)
        for name, _ in cls.OPS:
            for _ in range(3):
                getattr(bot, name)()
        stats = run_bot(bot, seconds=0.15, rate=None)
        assert stats.ops > 0 and stats.errors == 0, (kind, stats)
    with closing(sqlite3.connect(root / "legacy/data/llm_costs.db")) as c:
        assert "budget_alerts" in _tables(c)
        assert c.execute("SELECT count(*) FROM budget_alerts").fetchone()[0] > 0


def test_trader_whole_table_churn_and_rekey(tmp_path):
    generate_legacy(tmp_path)
    bot = TraderBot(tmp_path, random.Random(1))
    bot.setup(alter=False)
    path = tmp_path / "legacy/data/trading.db"

    def snapshot() -> tuple[dict, set[int]]:
        with closing(sqlite3.connect(path)) as c:
            pos = {r[0]: r for r in c.execute("SELECT * FROM positions")}
            ids = {i for (i,) in c.execute("SELECT id FROM orders")}
        return pos, ids

    before, ids_before = snapshot()
    bot.save_positions()
    bot.rekey_order()
    after, ids_after = snapshot()
    assert before.keys() == after.keys()
    assert 1 <= sum(before[k] != after[k] for k in before) <= 3
    assert len(ids_before) == len(ids_after) and ids_before != ids_after
    assert max(ids_after) == max(ids_before) + 1
    assert "notes" not in bot.columns("positions")


def test_bot_processes_write_and_stop_on_sigterm(tmp_path):
    files = generate_legacy(tmp_path)
    watched = {
        "trading": ("legacy/data/trading.db", "trades"),
        "telegram": ("legacy/data/telegram_memory.db", "messages"),
        "file_cache": ("legacy/data/cache/file_cache.db", "cache_entries"),
        "buy_tracker": ("legacy/bots/buy_tracker/trades.db", "tracked_tokens"),
    }
    before = {k: _digest(tmp_path / p, t) for k, (p, t) in watched.items()}
    procs = start_bots(tmp_path, files, seconds=60, seed=5, rate=40)
    assert sorted(p.kind for p in procs) == sorted(KINDS)
    time.sleep(2.0)
    assert all(p.poll() is None for p in procs), "a bot died early"
    assert stop_bots(procs) == [0] * len(procs)
    for p in procs:
        stats = p.read_stats()
        assert stats["ops"] > 10, (p.kind, stats)
        assert stats["errors"] == 0, (p.kind, stats)
        assert {"ops", "errors", "max_stall_ms"} <= stats.keys()
    for k, (p, t) in watched.items():
        assert _digest(tmp_path / p, t) != before[k], k
    with closing(sqlite3.connect(tmp_path / "legacy/data/trading.db")) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert "notes" not in [r[1] for r in c.execute("PRAGMA table_info(positions)")]


def test_bot_cli_alters_and_exits_after_seconds(tmp_path):
    generate_legacy(tmp_path)
    stats_file = tmp_path / "trader.json"
    cmd = [
        sys.executable,
        "-m",
        "cdc.demo.bots",
        "--root",
        str(tmp_path),
        "--bot",
        "trader",
        "--seconds",
        "0.7",
        "--alter",
        "--stats-file",
        str(stats_file),
    ]
    root_dir = Path(__file__).resolve().parents[2]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=root_dir)
    assert done.returncode == 0, done.stderr
    stats = json.loads(stats_file.read_text())
    assert stats["bot"] == "trader" and stats["alter"] is True and stats["ops"] > 0
    with closing(sqlite3.connect(tmp_path / "legacy/data/trading.db")) as c:
        assert "notes" in [r[1] for r in c.execute("PRAGMA table_info(positions)")]

    missing = subprocess.run(
        [*cmd[:4], str(tmp_path / "nowhere"), *cmd[5:]], capture_output=True, cwd=root_dir
    )
    assert missing.returncode == 2
