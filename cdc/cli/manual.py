"""`cdc docs [TOPIC]`: the manual, installed with the package, so every hint that says
"see `cdc docs config`" works on a machine that only ran `pip install` (man-page style:
through a pager on a terminal, plain text when piped). Registered on `cdc` by cdc.cli.

The pages are docs/*.md, shipped as `cdc/manual/*.md` (pyproject.toml, package-data).
"""

from __future__ import annotations

import difflib
import sys
from importlib import resources

import click

from cdc.cli.base import _run, cli
from cdc.errors import ConfigError


def pages() -> dict[str, str]:
    """Topic -> its Markdown text."""
    root = resources.files("cdc") / "manual"
    return {
        p.name.removesuffix(".md"): p.read_text(encoding="utf-8")
        for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".md")
    }


def title(text: str) -> str:
    first = next((line for line in text.splitlines() if line.startswith("# ")), "")
    return first[2:].strip()


def page(topic: str) -> str:
    known = pages()
    name = topic.lower().removesuffix(".md").removeprefix("docs/")
    if name in known:
        return known[name]
    near = difflib.get_close_matches(name, known, n=1)
    raise ConfigError(
        f"no manual page {topic!r}",
        hint=(f"did you mean `cdc docs {near[0]}`? " if near else "") + "`cdc docs` lists them all",
    )


@cli.command("docs")
@click.argument("topic", required=False)
def docs(topic: str | None) -> None:
    """Show the manual: the list of pages, or one page (e.g. `cdc docs config`)."""
    if topic is None:
        known = pages()
        width = max(map(len, known))
        for name, text in known.items():
            click.echo(f"{name:<{width}}  {title(text)}")
        click.echo("\n`cdc docs TOPIC` shows one.")
        return
    text = _run(lambda: page(topic))
    if sys.stdout.isatty():
        click.echo_via_pager(text)
    else:
        click.echo(text, nl=False)
