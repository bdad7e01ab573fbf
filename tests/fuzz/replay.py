"""Replay a printed reproduction through the in-process pipeline and judge it again.

    python -m tests.fuzz.replay failure.txt

The file is what a failure printed (from `-- cdc.toml:` on): the config, then the SQL
script with the pipeline's steps as comments. Useful to check a fix, or to cut a script
down by hand: every statement runs as written (an `executemany` batch as the separate
INSERTs printed), `-- [sync ...]` drains and judges, and the first failure is printed.
"""

from __future__ import annotations

import logging
import re
import sys
import tomllib

from cdc.config import load_config
from tests.fuzz.schema import TableSpec
from tests.fuzz.statements import Stmt
from tests.fuzz.world import FuzzFailure, World


class Replay(World):
    """A World whose config and tables come from a printed reproduction."""

    def __init__(self, config: str) -> None:
        data = tomllib.loads(config)
        sources = [s["name"] for s in data["sources"]]
        specs = [
            TableSpec(r["table"], "none", merged=bool(r.get("merge")))
            for r in data.get("rules", [])
        ]
        super().__init__(frozenset(), specs, sources, set(), data.get("daemon", {}))
        self.excluded = {r["table"] for r in data.get("rules", []) if r.get("exclude")}
        self.given = config

    def plan(self) -> None:
        """The printed config already excludes what the plan refused: take it as it is."""
        self.cfg = load_config(self._write_config())

    def _write_config(self) -> str:
        self.config = self.given
        path = self.root / "cdc.toml"
        path.write_text(self.given)
        return str(path)


def parse(text: str) -> tuple[str, list[str]]:
    """(cdc.toml, script lines) of a printed reproduction."""
    lines = [re.sub(r"^(?:E\s+|\s*)(?=--|\.open|[A-Z])", "", ln) for ln in text.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("-- cdc.toml:"))
    config, i = [], start + 1
    while lines[i].startswith("--   "):
        config.append(lines[i][5:])
        i += 1
    end = next((j for j in range(i, len(lines)) if lines[j].startswith("Falsifying")), len(lines))
    return "\n".join(config) + "\n", lines[i:end]


def replay(text: str) -> None:
    config, script = parse(text)
    w = Replay(config)
    source = w.sources[0]
    steps = {
        "-- cdc install": w.start,
        "-- [snapshot chunk": w.snapshot_chunk,
        "-- [harvest once]": w.harvest_once,
        "-- [apply]": w.apply,
        "-- [sync": w.check,
    }
    try:
        for ln in script:
            if ln.startswith(".open legacy/"):
                source = ln[len(".open legacy/") : -len(".db")]
            elif ln.startswith("--"):
                for prefix, step in steps.items():
                    if ln.startswith(prefix):
                        step()
            elif ln.strip():
                w.run(source, Stmt([ln.rstrip().rstrip(";")]))
        print("replayed: no failure")
    except FuzzFailure as e:
        print(str(e).split("\n\n--- reproduction ---")[0])
    finally:
        w.close()


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    with open(sys.argv[1]) as f:
        replay(f.read())
