"""`cdc refs` reports for people (one line per reference, a Markdown page per stage) and
for scripts (the `RefsReport` as JSON, field names as in the structs)."""

from __future__ import annotations

import msgspec

from cdc.application.refs import Reference, RefsReport


def _becomes(r: Reference) -> str:
    if not r.becomes:
        return "?"
    out = []
    for b in r.becomes:
        if b.target is None:
            out.append(f"{b.source}: stays")
        elif r.kind == "sql":
            tag = f" [{b.tag_column}='{b.tag}']" if b.tag_column else ""
            out.append(f"{b.target}.{b.table}{tag}")
        else:
            out.append(f"{b.target} ({b.path})")
    return " | ".join(dict.fromkeys(out))


def text_line(r: Reference) -> str:
    what = " ".join(r.text.split())
    what = what if len(what) <= 90 else what[:87] + "..."
    named = r.source or (f"one of {', '.join(r.candidates)}" if r.candidates else "?")
    table = f" table {r.table}" if r.table else ""
    flags = (" [reviewed]" if r.reviewed else "") + (" [fixable]" if r.fixable else "")
    origin = f" (value: {r.origin})" if r.origin and r.kind == "connect" else ""
    return (
        f"{r.file}:{r.line}: {r.kind}: {what} -> {named}{table} -> {_becomes(r)}; "
        f"{r.action}{origin}{flags}"
    )


def render_text(report: RefsReport) -> str:
    lines = [text_line(r) for r in report.references]
    held = len(report.unreviewed(report.stage))
    scope = f"stage {report.stage}" if report.stage else "all stages"
    lines.append(
        f"{len(report.references)} references in {report.files_scanned} files; "
        f"{held} unreviewed hold {scope} back"
    )
    return "\n".join(lines) + "\n"


def render_json(report: RefsReport) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def render_markdown(report: RefsReport) -> str:
    out = ["# Application references to legacy databases", ""]
    out.append(
        f"{report.files_scanned} Python files scanned, {len(report.references)} references. "
        "A reference holds its stage back until it is fixed or carries "
        "`# cdc-refs: reviewed`."
    )
    for s in report.stages:
        if report.stage and s.target != report.stage:
            continue
        verdict = "ready" if s.unreviewed == 0 else f"{s.unreviewed} unreviewed"
        out += ["", f"## Stage `{s.target}` ({s.path}): {verdict}", ""]
        out.append(f"Legacy files referenced: {', '.join(s.legacy_files) or 'none'}.")
        mine = [r for r in report.references if s.target in r.stages]
        if not mine:
            continue
        out += [
            "",
            "| where | kind | written | becomes | action | reviewed |",
            "|---|---|---|---|---|---|",
        ]
        for r in mine:
            written = r.table or r.written or " ".join(r.text.split())[:60]
            out.append(
                f"| `{r.file}:{r.line}` | {r.kind} | `{_cell(written)}` | {_cell(_becomes(r))} | "
                f"{_cell(r.action)} | {'yes' if r.reviewed else 'no'} |"
            )
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
