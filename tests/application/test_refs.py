"""`cdc refs` on the fixture application (tests/application/fixture_app) against real legacy
files and a real `cdc.toml` (tests/application/app_setup.py): every shape of reference,
what it becomes, the review comment, the exit codes and the report formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import cdc.cli.refs  # noqa: F401 - registers `refs` on the group
from cdc.application.names import legacy_names
from cdc.application.refs import CREATE_IF_NOT_EXISTS, PATH_FROM_VARIABLE, find_refs, refs_gate
from cdc.application.refs_render import render_markdown, render_text
from cdc.cli.base import cli
from cdc.cli.refs import EXIT_UNREVIEWED_REFS
from cdc.config import load_config
from cdc.errors import ConfigError
from tests.application.app_setup import FIXTURE_APP, make_legacy

MERGED_LLM = "merged: reads need `WHERE origin = 'llm'`, inserts need the tag column"
MERGED_METRICS = "merged: reads need `WHERE origin = 'metrics'`, inserts need the tag column"
EVERY = ["analytics", "cache", "core"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    config = make_legacy(root)
    names = legacy_names(load_config(str(config)))
    return root, config, names


@pytest.fixture(scope="module")
def report(setup):
    return find_refs([str(FIXTURE_APP)], setup[2])


def refs_at(report, rel: str, line: int, kind: str | None = None):
    out = [
        r
        for r in report.references
        if r.file == str(FIXTURE_APP / rel) and r.line == line and kind in (None, r.kind)
    ]
    assert out, f"no reference at {rel}:{line}"
    return out


def one(report, rel: str, line: int, kind: str | None = None):
    found = refs_at(report, rel, line, kind)
    assert len(found) == 1, found
    return found[0]


# (file, line, kind, shape, root, written tail, legacy source, action, fixable)
PATHS = [
    # module constant joined under a data dir built from __file__
    (
        "common/paths.py",
        8,
        "path",
        "constant",
        "file",
        "data/trading.db",
        "trading",
        "rewrite path",
        True,
    ),
    # os.getenv default spanning four lines
    (
        "common/paths.py",
        9,
        "path",
        "getenv default",
        "env default",
        "data/telegram.db",
        "telegram",
        "rewrite path (if $TELEGRAM_DB is set, it still wins)",
        True,
    ),
    # Path.home()-relative: the target is outside ~/.jarvis, so no proven rewrite
    (
        "common/paths.py",
        13,
        "path",
        "constant",
        "home",
        ".jarvis/http_cache.db",
        "http_cache",
        "rewrite path to {cache} (by hand)",
        False,
    ),
    # a class constant, home-relative
    (
        "common/db.py",
        12,
        "path",
        "constant",
        "home",
        ".jarvis/http_cache.db",
        "http_cache",
        "rewrite path to {cache} (by hand)",
        False,
    ),
    # a bare file name in a constant, joined in another function
    (
        "bots/trading_bot.py",
        9,
        "path",
        "constant",
        "file",
        "data/trading.db",
        "trading",
        "rewrite path",
        True,
    ),
    # default argument db_path=...
    (
        "bots/telegram_bot.py",
        12,
        "path",
        "default argument",
        "cwd",
        "data/telegram.db",
        "telegram",
        "rewrite path",
        True,
    ),
    # Path("data/x.db"), CWD-relative, in a file keeping an excluded table
    (
        "services/metrics.py",
        8,
        "path",
        "Path()",
        "cwd",
        "data/metrics.db",
        "metrics",
        "moves to analytics but excluded tables stay on the legacy file (debug_log): change by hand",
        False,
    ),
    # os.path.join from os.path.dirname(__file__), file split across two targets
    (
        "services/llm_costs.py",
        7,
        "path",
        "constant",
        "file",
        "data/llm_costs.db",
        "llm_costs",
        "split across targets analytics, cache: open each for its tables",
        False,
    ),
    # an f-string in a script, its folder a resolved constant (Path.cwd())
    (
        "scripts/backup.py",
        16,
        "connect",
        "f-string",
        "cwd",
        "data/trading.db",
        "trading",
        "rewrite path to {core} (by hand)",
        False,
    ),
    # more of the path written: only this one of the two state.db files
    (
        "bots/state_bot.py",
        7,
        "path",
        "constant",
        "file",
        "bots/alpha/state.db",
        "alpha_state",
        "rewrite path to {cache} (by hand)",
        False,
    ),
]


@pytest.mark.parametrize("case", PATHS, ids=[f"{c[0]}:{c[1]}" for c in PATHS])
def test_each_path_shape(report, setup, case) -> None:
    rel, line, kind, shape, root, written, source, action, fixable = case
    targets = setup[2].targets
    r = one(report, rel, line, kind)
    assert (r.shape, r.root, r.written, r.source) == (shape, root, written, source)
    assert r.action == action.format(**targets)
    assert r.fixable is fixable and r.blocking and not r.reviewed
    assert r.stages == sorted({b.target for b in r.becomes})


def test_path_becomes_the_target(report, setup) -> None:
    r = one(report, "common/paths.py", 8)
    assert [(b.source, b.target, b.path) for b in r.becomes] == [
        ("trading", "core", setup[2].targets["core"])
    ]
    split = one(report, "services/llm_costs.py", 7)
    assert [b.target for b in split.becomes] == ["analytics", "cache"]


def test_ambiguous_file_name_lists_candidates(report) -> None:
    r = one(report, "bots/state_bot.py", 6)
    assert r.source is None and r.candidates == ["alpha_state", "beta_state"]
    assert r.action.startswith("ambiguous: 2 legacy files are named like this")
    assert not r.fixable and r.stages == ["cache"]


# (file, line, origin, source, stages)
VARIABLE_CONNECTS = [
    (
        "bots/telegram_bot.py",
        13,
        'parameter `db_path` (line 12) default `"data/telegram.db"`',
        "telegram",
        ["core"],
    ),
    (
        "bots/telegram_bot.py",
        20,
        "parameter `db` (line 19) default `DB_FILE`; module constant `DB_FILE` = `paths.TELEGRAM_DB` (line 7)",
        None,
        EVERY,
    ),
    ("bots/trading_bot.py", 13, "`DATA_DIR / DB_NAME`", "trading", ["core"]),
    (
        "common/db.py",
        15,
        'attribute `self.DB` = `Path.home() / ".jarvis" / "http_cache.db"` (line 12)',
        "http_cache",
        ["cache"],
    ),
    ("common/db.py", 23, "parameter `path` (line 21), no default: the caller's value", None, EVERY),
    (
        "services/metrics.py",
        9,
        'assigned `path` = `Path("data/metrics.db")` (line 8)',
        "metrics",
        ["analytics"],
    ),
    (
        "services/llm_costs.py",
        20,
        'module constant `DB_PATH` = `os.path.join(os.path.dirname(__file__), "..", "data", "llm_costs.db")` (line 7)',
        "llm_costs",
        ["analytics", "cache"],
    ),
]


@pytest.mark.parametrize(
    "case", VARIABLE_CONNECTS, ids=[f"{c[0]}:{c[1]}" for c in VARIABLE_CONNECTS]
)
def test_connect_from_a_variable_needs_review(report, case) -> None:
    rel, line, origin, source, stages = case
    r = one(report, rel, line, "connect")
    assert r.action == PATH_FROM_VARIABLE
    assert (r.origin, r.source, r.stages) == (origin, source, stages)
    assert r.blocking and not r.fixable


def test_aliases_of_connect_are_seen(report) -> None:
    # `import sqlite3 as sq`, `from sqlite3 import connect as open_sqlite`, `apsw.Connection`
    assert one(report, "bots/telegram_bot.py", 13).text == "sq.connect(db_path)"
    assert one(report, "common/db.py", 23).text == "open_sqlite(path)"
    assert one(report, "common/db.py", 15).text == "apsw.Connection(str(self.DB))"


def test_memory_connect_and_its_sql_are_not_references(report) -> None:
    telegram = [r for r in report.references if r.file.endswith("telegram_bot.py")]
    assert all(r.line < 24 for r in telegram), telegram  # scratch(): lines 24-26
    assert not any(":memory:" in r.text for r in report.references)


def test_file_name_built_at_run_time(report) -> None:
    r = one(report, "scripts/backup.py", 10)
    assert (r.kind, r.shape, r.written) == ("connect", "f-string", "data/{name}.db")
    assert r.action == "needs review: file name built at run time" and r.stages == EVERY


# (file, line, table, source, action, becomes (target, table, tag column, tag), fixable, blocking)
SQL = [
    (
        "bots/trading_bot.py",
        19,
        "trades",
        "trading",
        "keeps its name in core: no SQL change",
        ("core", "trades", None, None),
        False,
        False,
    ),
    (
        "bots/trading_bot.py",
        20,
        "orders",
        "trading",
        "rename table to trade_orders",
        ("core", "trade_orders", None, None),
        True,
        True,
    ),
    (
        "bots/trading_bot.py",
        27,
        "orders",
        "trading",
        "rename table to trade_orders",
        ("core", "trade_orders", None, None),
        True,
        True,
    ),
    (
        "bots/telegram_bot.py",
        14,
        "messages",
        "telegram",
        "keeps its name in core: no SQL change",
        ("core", "messages", None, None),
        False,
        False,
    ),
    (
        "bots/telegram_bot.py",
        9,
        "users",
        "telegram",
        CREATE_IF_NOT_EXISTS,
        ("core", "tg_users", None, None),
        False,
        True,
    ),
    (
        "bots/telegram_bot.py",
        21,
        "users",
        "telegram",
        "rename table to tg_users",
        ("core", "tg_users", None, None),
        True,
        True,
    ),
    (
        "services/llm_costs.py",
        15,
        "costs",
        "llm_costs",
        MERGED_LLM,
        ("analytics", "costs", "origin", "llm"),
        False,
        True,
    ),
    (
        "services/llm_costs.py",
        26,
        "costs",
        "llm_costs",
        MERGED_LLM,
        ("analytics", "costs", "origin", "llm"),
        False,
        True,
    ),
    (
        "services/llm_costs.py",
        32,
        "llm_cache",
        "llm_costs",
        "keeps its name in cache: no SQL change",
        ("cache", "llm_cache", None, None),
        False,
        False,
    ),
    (
        "services/metrics.py",
        17,
        "samples",
        "metrics",
        "keeps its name in analytics: no SQL change",
        ("analytics", "samples", None, None),
        False,
        False,
    ),
    (
        "services/metrics.py",
        18,
        "debug_log",
        "metrics",
        "stays on the legacy file (excluded)",
        (None, None, None, None),
        False,
        False,
    ),
    (
        "common/db.py",
        18,
        "responses",
        "http_cache",
        "keeps its name in cache: no SQL change",
        ("cache", "responses", None, None),
        False,
        False,
    ),
]


@pytest.mark.parametrize("case", SQL, ids=[f"{c[0]}:{c[1]}" for c in SQL])
def test_each_sql_table(report, case) -> None:
    rel, line, table, source, action, becomes, fixable, blocking = case
    found = [
        r
        for r in refs_at(report, rel, line, "sql")
        if r.table == table and not r.action.startswith("table created in two modules")
    ]
    assert len(found) == 1, found
    r = found[0]
    assert (r.source, r.action, r.fixable, r.blocking) == (source, action, fixable, blocking)
    assert [(b.target, b.table, b.tag_column, b.tag) for b in r.becomes] == [becomes]


def test_sql_on_an_ambiguous_connection_lists_candidates(report) -> None:
    r = one(report, "bots/state_bot.py", 12, "sql")
    assert r.table == "kv" and r.candidates == ["alpha_state", "beta_state"]
    assert r.action == (
        "ambiguous table: alpha_state: rename table to alpha_state_kv; "
        "beta_state: rename table to beta_state_kv"
    )
    assert not r.fixable


def test_create_if_not_exists_in_a_script_and_two_schemas(report) -> None:
    """Two modules creating one legacy table (telegram's `users`) differently is flagged;
    two members of a merge each creating their own legacy table (`costs` of llm_costs and
    of metrics) are two tables, not a conflict."""
    for rel, line in (("services/llm_costs.py", 10), ("services/metrics.py", 12)):
        found = refs_at(report, rel, line, "sql")
        assert [r.action.split(":")[0] for r in found] == [
            "CREATE TABLE IF NOT EXISTS of a moved table"
        ], found
    bot = refs_at(report, "bots/telegram_bot.py", 9, "sql")
    sync = refs_at(report, "services/user_sync.py", 9, "sql")
    for found in (bot, sync):
        assert sorted(r.action.split(":")[0] for r in found) == [
            "CREATE TABLE IF NOT EXISTS of a moved table",
            "table created in two modules with different schemas",
        ], found
    conflict = next(r for r in sync if r.action.startswith("table created"))
    assert "telegram_bot.py:9 (id, name)" in conflict.action, conflict.action
    assert "user_sync.py:9 (id, name, email)" in conflict.action, conflict.action


def test_unparsed_sql_is_reported(report) -> None:
    r = one(report, "services/llm_costs.py", 38, "sql")
    assert r.action.startswith("unparsed SQL: ") and r.source == "llm_costs"
    assert r.blocking and r.stages == ["analytics", "cache"]


def test_interpolated_table_is_built_at_run_time(report) -> None:
    r = one(report, "services/metrics.py", 22, "sql")
    assert r.text == "DELETE FROM {table} WHERE value < 0"
    assert r.action == "needs review: SQL built at run time (a table name is interpolated)"
    assert r.source == "metrics" and r.stages == ["analytics"]


def test_review_comment_marks_the_reference(report) -> None:
    r = one(report, "services/metrics.py", 20, "sql")
    assert r.reviewed and r.action == MERGED_METRICS
    assert not any(x.reviewed for x in report.references if x is not r)


def test_every_reference_is_accounted_for(report) -> None:
    """No reference beyond the ones asserted above (a new one would be a false positive)."""
    expected = {(c[0], c[1]) for c in PATHS + VARIABLE_CONNECTS + SQL}
    expected |= {
        ("bots/state_bot.py", 6),
        ("bots/state_bot.py", 11),
        ("bots/state_bot.py", 12),
        ("scripts/backup.py", 10),
        ("scripts/backup.py", 11),
        ("services/llm_costs.py", 10),
        ("services/llm_costs.py", 25),
        ("services/llm_costs.py", 31),
        ("services/llm_costs.py", 37),
        ("services/llm_costs.py", 38),
        ("services/metrics.py", 12),
        ("services/metrics.py", 20),
        ("services/metrics.py", 22),
        ("services/user_sync.py", 8),
        ("services/user_sync.py", 9),
        ("services/user_sync.py", 10),
    }
    seen = {(str(Path(r.file).relative_to(FIXTURE_APP)), r.line) for r in report.references}
    assert seen == expected
    assert report.files_scanned == 14


def test_stage_summary_and_gate(report, setup) -> None:
    by = {s.target: s for s in report.stages}
    assert by["core"].legacy_files == ["telegram", "trading"]
    assert by["analytics"].legacy_files == ["llm_costs", "metrics"]
    assert by["cache"].legacy_files == ["alpha_state", "beta_state", "http_cache", "llm_costs"]
    assert all(s.unreviewed > 0 for s in report.stages)
    assert not report.ok_for("core") and not report.ok_for(None)
    services = refs_gate(
        [str(FIXTURE_APP / "services" / "metrics.py")], load_config(str(setup[1])), "cache"
    )
    assert services.references == [] and services.ok_for("cache")


def test_stage_filter_and_unknown_stage(setup) -> None:
    core = find_refs([str(FIXTURE_APP)], setup[2], "core")
    assert core.references and all("core" in r.stages for r in core.references)
    with pytest.raises(ConfigError, match="no such target"):
        find_refs([str(FIXTURE_APP)], setup[2], "nope")


def test_text_lines(report) -> None:
    text = render_text(report)
    line = (
        f"{FIXTURE_APP}/bots/trading_bot.py:20: sql: UPDATE orders SET filled = 1 WHERE symbol = ?"
    )
    assert (
        f"{line} -> trading table orders -> core.trade_orders; rename table to trade_orders [fixable]"
        in text
    )
    assert text.rstrip().endswith("unreviewed hold all stages back")


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["refs", *args], catch_exceptions=False)


def test_cli_exit_codes(setup) -> None:
    config = str(setup[1])
    assert _invoke(str(FIXTURE_APP), "-c", config).exit_code == EXIT_UNREVIEWED_REFS == 14
    metrics = str(FIXTURE_APP / "services" / "metrics.py")
    assert _invoke(metrics, "-c", config, "--stage", "analytics").exit_code == 14
    ok = _invoke(metrics, "-c", config, "--stage", "core")
    assert ok.exit_code == 0 and "0 references in 1 files" in ok.output
    bad = _invoke(str(FIXTURE_APP), "-c", config, "--stage", "nope")
    assert bad.exit_code == 2 and "error: --stage nope: no such target" in bad.output
    missing = _invoke(str(FIXTURE_APP / "nowhere"), "-c", config)
    assert missing.exit_code == 2 and "no such file or folder" in missing.output


def test_cli_json_shape(setup, report) -> None:
    out = _invoke(str(FIXTURE_APP), "-c", str(setup[1]), "--json")
    assert out.exit_code == 14
    data = json.loads(out.output)
    assert set(data) == {"references", "stages", "files_scanned", "stage"}
    assert len(data["references"]) == len(report.references)
    first = next(r for r in data["references"] if r["line"] == 20 and r["kind"] == "sql")
    assert {
        "file",
        "line",
        "end_line",
        "col",
        "kind",
        "text",
        "action",
        "source",
        "becomes",
        "reviewed",
        "fixable",
        "stages",
        "candidates",
        "edit",
    } <= set(first)
    assert first["becomes"][0]["table"] == "trade_orders"
    assert {s["target"] for s in data["stages"]} == set(EVERY)


def test_markdown_summary_per_stage(setup, tmp_path, report) -> None:
    md = tmp_path / "refs.md"
    _invoke(str(FIXTURE_APP), "-c", str(setup[1]), "--markdown", str(md))
    text = md.read_text()
    for stage in EVERY:
        assert f"## Stage `{stage}`" in text
    assert text == render_markdown(report)
    assert "| no |" in text and "| yes |" in text


def test_a_file_that_does_not_parse_is_one_finding(setup, tmp_path) -> None:
    (tmp_path / "good.py").write_text('import sqlite3\nsqlite3.connect("data/trading.db")\n')
    (tmp_path / "bad.py").write_text("def broken(:\n    pass\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "lib.py").write_text('DB = "data/trading.db"\n')
    rep = find_refs([str(tmp_path)], setup[2])
    assert [(Path(r.file).name, r.line, r.kind) for r in rep.references] == [
        ("bad.py", 1, "python"),
        ("good.py", 2, "connect"),
    ]
    assert rep.references[0].action.startswith("unparsed Python:")
    assert rep.references[0].stages == EVERY and rep.files_scanned == 2


def test_more_shapes_in_one_module(setup, tmp_path) -> None:
    (tmp_path / "more.py").write_text(
        "import os\n"
        "import sqlite3\n"
        "from pathlib import Path\n"
        "\n"
        'ENV_DB = os.environ.get("TRADES", default="data/trading.db")\n'
        'JOINED = Path(__file__).parent.joinpath("data", "telegram.db")\n'
        "# cdc-refs: reviewed: read-only report, moves with the stage\n"
        'URI = "file:data/metrics.db?mode=ro"\n'
        'HOME = str(Path.home() / ".jarvis" / "http_cache.db")\n'
        "\n"
        "\n"
        "def read():\n"
        "    with sqlite3.connect(URI, uri=True) as conn:\n"
        '        return conn.execute("SELECT count(*) FROM samples").fetchone()\n'
    )
    rep = find_refs([str(tmp_path)], setup[2])
    got = [
        (r.line, r.kind, r.shape, r.root, r.written, r.source, r.reviewed) for r in rep.references
    ]
    assert got == [
        (5, "path", "getenv default", "env default", "data/trading.db", "trading", False),
        (6, "path", "constant", "file", "data/telegram.db", "telegram", False),
        (8, "path", "constant", "cwd", "data/metrics.db", "metrics", True),
        (9, "path", "constant", "home", ".jarvis/http_cache.db", "http_cache", False),
        (13, "connect", "connect", "cwd", "data/metrics.db", "metrics", False),
        (14, "sql", "statement", None, None, "metrics", False),
    ]
    assert rep.references[0].fixable and not rep.references[2].fixable  # a URI is not rewritten
    assert rep.references[-1].action == "keeps its name in analytics: no SQL change"


def test_json_with_fix_keeps_stdout_one_document(setup, tmp_path) -> None:
    (tmp_path / "one.py").write_text('DB = "data/trading.db"\n')
    out = CliRunner().invoke(cli, ["refs", str(tmp_path), "-c", str(setup[1]), "--json", "--fix"])
    assert out.exit_code == 14
    assert json.loads(out.stdout)["references"][0]["fixable"] is True
    assert '+DB = "data/core.db"' in out.stderr
