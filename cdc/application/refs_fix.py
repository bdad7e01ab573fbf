"""What `cdc refs --fix` may rewrite, and the rewrite itself.

Only a change that is proven is made, and only inside one plain string literal (no
escapes, not an f-string, not implicitly concatenated), so the file keeps its formatting,
comments and quotes: libcst changes that literal's token and nothing else.

- A path: its literal holds the last components of the path to one legacy file whose
  tables all go to one target. Those components are replaced by the target's path
  relative to the folder they hang from (`"trading.db"` under `data/` becomes
  `"core.db"` when `core.db` is in that folder, `"data/trading.db"` becomes
  `"consolidated/core.db"`), so the code's own root (`__file__`, home, working folder)
  is kept. A target outside that folder would need a path the code does not prove: not
  rewritten. An absolute literal becomes the target's absolute path.
- A table renamed (not merged) by the plan: each token naming it in the statement is
  replaced, quoted identifiers keep their quotes. Refused when a column or alias could be
  the same word, which only the schema could tell apart.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tokenize
from collections import defaultdict
from pathlib import Path, PurePosixPath

import libcst as cst
import msgspec
import sqlglot
from libcst.metadata import MetadataWrapper, PositionProvider
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from cdc.application.path_refs import Literal
from cdc.errors import ConfigError
from cdc.postgres.dsn import is_postgres


class Edit(msgspec.Struct, frozen=True):
    """Replacements inside one string literal: `spans` are (start, end, text) offsets in
    its raw text, so several edits of one literal combine."""

    line: int
    col: int
    raw: str
    spans: list[tuple[int, int, str]]


def _body(lit: Literal) -> int | None:
    """Where the value starts in the raw literal, when the raw text is the value quoted
    (no escapes, one token); None otherwise."""
    raw = lit.raw
    prefix = len(raw) - len(raw.lstrip("rRuU"))
    rest = raw[prefix:]
    for q in ('"""', "'''", '"', "'"):
        if rest.startswith(q) and rest.endswith(q) and len(rest) >= 2 * len(q):
            body = rest[len(q) : len(rest) - len(q)]
            return prefix + len(q) if body == lit.value and q not in body else None
    return None


def path_edit(lit: Literal, legacy_path: str, target_path: str) -> Edit | None:
    start = _body(lit)
    value = lit.value
    if start is None or value.startswith("file:") or "?" in value or "\\" in value:
        return None
    if is_postgres(target_path):  # a server: the code must connect to it (cdc.pool)
        return None
    parts = [p for p in value.split("/") if p not in ("", ".")]
    legacy = PurePosixPath(legacy_path.replace("\\", "/"))
    if not parts or ".." in parts or list(legacy.parts[-len(parts) :]) != parts:
        return None
    base = legacy.parents[len(parts) - 1]
    rel = os.path.relpath(target_path, str(base)).replace("\\", "/")
    if rel.startswith(".."):
        return None
    if value.startswith("/"):
        new = str(base / rel)
    else:
        new = value[: value.index(parts[0])] + rel
    quote = lit.raw[start - 1]
    if quote in new:
        return None
    return Edit(lit.line, lit.col, lit.raw, [(start, start + len(value), new)])


def sql_edit(lit: Literal, offset: int, length: int, table: str, new: str) -> Edit | None:
    start = _body(lit)
    if start is None:
        return None
    sql = lit.value[offset : offset + length]
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
        tokens = sqlglot.tokenize(sql, read="sqlite")
    except SqlglotError:
        return None
    if isinstance(tree, exp.Command | exp.Block):
        return None  # kept raw by sqlglot: its columns cannot be told from its tables
    low = table.lower()
    words = {c.name.lower() for c in tree.find_all(exp.Column)}
    words |= {a.name.lower() for a in tree.find_all(exp.TableAlias)}
    words |= {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    if low in words:
        return None
    spans = []
    for tk in tokens:
        if tk.token_type == TokenType.STRING or tk.text.lower() != low:
            continue
        written = sql[tk.start : tk.end + 1]
        if tk.token_type == TokenType.IDENTIFIER:
            text = written[0] + new + written[-1]
        else:
            text = new
        spans.append((start + offset + tk.start, start + offset + tk.end + 1, text))
    return Edit(lit.line, lit.col, lit.raw, spans) if spans else None


class _Apply(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, edits: dict[tuple[int, int], tuple[str, str]]) -> None:
        self.edits = edits
        self.done: set[tuple[int, int]] = set()

    def leave_SimpleString(self, original, updated):  # noqa: N802 - libcst's name
        pos = self.get_metadata(PositionProvider, original).start
        key = (pos.line, pos.column)
        raw_new = self.edits.get(key)
        if raw_new is None or original.value != raw_new[0]:
            return updated
        self.done.add(key)
        return updated.with_changes(value=raw_new[1])


def _merged(edits: list[Edit]) -> dict[tuple[int, int], tuple[str, str]]:
    """One new raw text per literal, from every edit of it (identical spans counted once;
    overlapping ones leave the literal as it is)."""
    by_lit: dict[tuple[int, int, str], set[tuple[int, int, str]]] = defaultdict(set)
    for e in edits:
        by_lit[(e.line, e.col, e.raw)].update(tuple(s) for s in e.spans)
    out = {}
    for (line, col, raw), spans in by_lit.items():
        ordered = sorted(spans)
        if any(a[1] > b[0] for a, b in zip(ordered, ordered[1:], strict=False)):
            continue
        new = raw
        for s, e, text in reversed(ordered):
            new = new[:s] + text + new[e:]
        out[(line, col)] = (raw, new)
    return out


def rewrite(source: str, edits: list[Edit]) -> str:
    """The module's source with the edits applied through libcst (formatting kept)."""
    wanted = _merged(edits)
    if not wanted:
        return source
    try:
        wrapper = MetadataWrapper(cst.parse_module(source))
    except cst.ParserSyntaxError as e:
        raise ConfigError(f"libcst cannot parse the file to rewrite: {e}") from e
    return wrapper.visit(_Apply(wanted)).code


def fix_files(edits: dict[str, list[Edit]], write: bool) -> str:
    """The unified diff of every rewrite; with `write`, the files are rewritten too."""
    out = []
    for path in sorted(edits):
        with tokenize.open(path) as f:
            old, encoding = f.read(), f.encoding
        new = rewrite(old, edits[path])
        if new == old:
            continue
        out.extend(
            difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                fromfile=f"a/{path}",
                tofile=f"b/{path}",
            )
        )
        if write:
            tmp = Path(f"{path}.cdc-refs.tmp")
            tmp.write_text(new, encoding=encoding)
            shutil.copymode(path, tmp)
            os.replace(tmp, path)
    return "".join(out)
