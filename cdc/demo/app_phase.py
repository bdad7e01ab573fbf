"""The demo's application phase: `cdc refs` and `cdc queries` on a generated application.

Run while the daemon still runs, the bots are stopped and the backlog is zero, so the
legacy and the consolidated files hold the same rows. It writes the bots' database code
into `<demo>/app/` (`cdc.demo.app_code`), finds every reference it makes to a legacy file or
table and what that becomes (a Markdown summary and the `--fix` diff are written next to
it; the diff is not applied), then runs the bots' reads on both sides and compares the
answers exactly, the latencies and the plans.

With a PostgreSQL target (`cdc demo --postgres`), `cdc queries` compares the reads of the
sources whose tables stay in SQLite targets only (it opens SQLite files; a PostgreSQL
target's reads are not compared yet), and says so in one line.

Unreviewed references are expected (the application has not been migrated) and never fail
the demo; a query that answers differently, fails, or cannot be rewritten does. The library
calls are made from the demo folder, so the files written name `app/...` exactly as the
echoed `cdc refs` / `cdc queries` commands, run from there, would.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cdc.application import refs_fix
from cdc.application.names import LegacyNames, legacy_names
from cdc.application.queries import (
    QueriesReport,
    QueryResult,
    exit_status,
    load_queries,
    run_queries,
)
from cdc.application.query_report import markdown
from cdc.application.refs import CREATE_IF_NOT_EXISTS, Reference, RefsReport, find_refs
from cdc.application.refs_render import render_markdown
from cdc.config import Config
from cdc.demo.app_code import write_app, write_queries
from cdc.demo.show import Echo, _wrap
from cdc.errors import CdcError
from cdc.postgres.dsn import is_postgres

RUNS = 5  # timed runs per side: enough for a p95 on files this small, well under a second

# What each reference asks for, told from its action's opening words: (prefix, kind).
_KINDS = (
    ("rewrite path", "path to rewrite"),
    ("moves to ", "path to rewrite"),
    ("split across", "path to rewrite"),
    (CREATE_IF_NOT_EXISTS, "CREATE TABLE IF NOT EXISTS of a moved table"),
    ("table created in two modules", "same table name created with two schemas"),
    ("merged:", "merged table (needs its tag)"),
    ("rename table", "table to rename"),
    ("keeps its name", "no change needed"),
    ("stays", "stays on the legacy file"),
    ("needs review", "to review"),
    ("ambiguous", "ambiguous"),
    ("unparsed", "unparsed"),
)

# The examples shown, one of each where the application has one.
_EXAMPLES: tuple[Callable[[Reference], bool], ...] = (
    lambda r: r.kind == "path" and r.fixable,
    lambda r: r.kind == "path" and not r.fixable and r.action.startswith("rewrite path"),
    lambda r: r.kind == "connect",
    lambda r: r.action.startswith("rename table") and r.fixable,
    lambda r: r.action.startswith("merged:"),
    lambda r: r.action == CREATE_IF_NOT_EXISTS,
    lambda r: r.action.startswith("stays"),
    lambda r: r.action.startswith("moves to "),
)


def run_app_phase(root: Path, cfg: Config, echo: Echo) -> list[str]:
    """Every reason the phase fails the demo (none: every query gave the same answer)."""
    root = Path(root)
    modules = write_app(root)
    echo(
        _wrap(
            "  ",
            f"wrote an example application into {root / 'app'}: {len(modules)} modules, the "
            "bots' database code as it is today (not migrated)",
        )
    )
    echo(f"  $ cd {root}")
    if any(is_postgres(where) for where in cfg.targets.values()):
        echo(
            _wrap(
                "  ",
                "(`cdc refs` and `cdc queries` refuse a config naming a PostgreSQL target so far, "
                "exit 2: the demo runs what they run, through the library)",
            )
        )
    try:
        names = legacy_names(cfg)
        with contextlib.chdir(root):  # the reports name `app/...`, as the CLI's would
            _refs(names, echo)
            return _queries(cfg, names, echo)
    except CdcError as e:
        echo(f"  FAILED: {e}")
        return [f"the application phase failed: {e}"]


# -- cdc refs ---------------------------------------------------------------------------


def _refs(names: LegacyNames, echo: Echo) -> None:
    echo("  $ cdc refs app -c cdc.toml --markdown app/refs.md")
    report = find_refs(["app"], names)
    Path("app/refs.md").write_text(render_markdown(report), encoding="utf-8")
    _refs_summary(report, echo)
    echo("  for example:")
    for r in _examples(report):
        echo(_example(r))
    echo(
        _wrap(
            "  ",
            "expected: the application is not migrated yet. Until fixed or marked "
            "`# cdc-refs: reviewed`, each of these references holds its stage's cutover back "
            "(`cdc refs` exits 14); they do not fail the demo.",
        )
    )
    echo("  $ cdc refs app -c cdc.toml --fix > app/refs-fix.diff")
    diff, fixable = _fix_diff(report)
    Path("app/refs-fix.diff").write_text(diff, encoding="utf-8")
    files = len({r.file for r in fixable})
    echo(
        _wrap(
            "  ",
            f"{len(fixable)} rewrites it can prove, in {files} files (a path written in one "
            "literal, renamed tables); not applied (`--fix --write` would apply them)",
        )
    )


def _refs_summary(report: RefsReport, echo: Echo) -> None:
    refs = report.references
    held = len(report.unreviewed())
    echo(
        f"  {len(refs)} references in {report.files_scanned} files, {held} unreviewed "
        "(they hold a stage back)"
    )
    kinds = Counter(_kind(r) for r in refs)
    echo(_wrap("  by kind: ", ", ".join(f"{n} {k}" for k, n in kinds.most_common())))
    echo(
        "  by stage: "
        + ", ".join(f"{s.target} {s.references} ({s.unreviewed} unreviewed)" for s in report.stages)
    )


def _kind(r: Reference) -> str:
    for prefix, kind in _KINDS:
        if r.action.startswith(prefix):
            return f"{r.kind} {kind}" if kind == "to review" else kind
    return r.action.split(":", 1)[0]


def _examples(report: RefsReport) -> list[Reference]:
    out: list[Reference] = []
    for wanted in _EXAMPLES:
        r = next((r for r in report.references if wanted(r) and r not in out), None)
        if r is not None:
            out.append(r)
    return out


def _example(r: Reference) -> str:
    if r.kind == "sql":
        op = " (CREATE TABLE IF NOT EXISTS)" if r.action == CREATE_IF_NOT_EXISTS else ""
        what = f"table {r.table}{op}"
    elif r.kind == "path":
        what = f"path {r.written}"
    else:
        what = " ".join(r.text.split())
    fixable = " [fixable]" if r.fixable else ""
    return f"    {r.file}:{r.line}: {what} -> {_becomes(r)}: {r.action}{fixable}"


def _becomes(r: Reference) -> str:
    out = []
    for b in r.becomes:
        if b.target is None:
            out.append("stays")
        elif r.kind == "sql":
            tag = f" [{b.tag_column}='{b.tag}']" if b.tag_column else ""
            out.append(f"{b.target}.{b.table}{tag}")
        elif b.path and is_postgres(b.path):
            out.append(f"{b.target} ({b.path})")  # a URL, not a path to make relative
        else:
            out.append(f"{b.target} ({os.path.relpath(b.path)})" if b.path else b.target)
    return " | ".join(dict.fromkeys(out)) or "?"


def _fix_diff(report: RefsReport) -> tuple[str, list[Reference]]:
    """What `--fix` prints, as cdc/cli/refs.py builds it: the edits of every fixable
    reference, by file."""
    fixable = [r for r in report.references if r.fixable and r.edit is not None]
    edits: dict[str, list[refs_fix.Edit]] = {}
    for r in fixable:
        edits.setdefault(r.file, []).append(r.edit)
    return refs_fix.fix_files(edits, write=False), fixable


# -- cdc queries --------------------------------------------------------------------------


def _queries(cfg: Config, names: LegacyNames, echo: Echo) -> list[str]:
    echo(f"  $ cdc queries app/queries.toml -c cdc.toml --runs {RUNS} --markdown app/queries.md")
    specs = load_queries(str(write_queries(Path("."))), names)
    pg = sorted(t for t, where in cfg.targets.items() if is_postgres(where))
    if pg:
        kept = [s for s in specs if not set(names.source(s.source).targets) & set(pg)]
        echo(
            _wrap(
                "  ",
                f"`cdc queries` reads SQLite targets only so far: the {len(specs) - len(kept)} "
                f"queries of {', '.join(pg)} (PostgreSQL) are not compared, the {len(kept)} "
                "of the SQLite targets are",
            )
        )
        specs = kept
    report = run_queries(cfg, names, specs, runs=RUNS)
    Path("app/queries.md").write_text(markdown(report), encoding="utf-8")
    for r in report.queries:
        echo(_query_line(r))
    echo(
        f"  {exit_status(report)}: {len(report.queries)} queries, {report.wrong_answers} wrong "
        f"answers, {report.not_rewritable} not rewritable, {report.regressions} plan "
        f"regressions, {report.over_budget} over the {report.budget_ms:g} ms p95 budget "
        "(app/queries.md)"
    )
    return _query_failures(report)


def _query_line(r: QueryResult) -> str:
    head = f"    {r.name} [{r.source} -> {r.target or '?'}]"
    if r.status == "not rewritable":
        return f"{head}: NOT REWRITABLE: {r.error}"
    if r.status == "error":
        return f"{head}: ERROR: {r.error}"
    said = "same answer" if r.same_answer else f"WRONG ANSWER: {r.difference}"
    p95 = ""
    if r.legacy is not None and r.consolidated is not None:
        p95 = f"; p95 {r.legacy.p95_ms:.3f} ms legacy, {r.consolidated.p95_ms:.3f} ms consolidated"
    plan = "".join(f"; plan regression: {g.detail}" for g in r.regressions)
    return f"{head}: {said}, {r.rows_legacy} rows{p95}{plan}"


def _query_failures(report: QueriesReport) -> list[str]:
    why = []
    if report.wrong_answers:
        bad = [r.name for r in report.queries if r.status in ("wrong answer", "error")]
        why.append(
            f"{report.wrong_answers} application queries answered differently or failed on "
            f"the consolidated files ({'; '.join(bad)})"
        )
    if report.not_rewritable:
        bad = [r.name for r in report.queries if r.status == "not rewritable"]
        why.append(
            f"{report.not_rewritable} application queries could not be rewritten to the "
            f"consolidated names ({'; '.join(bad)})"
        )
    return why
