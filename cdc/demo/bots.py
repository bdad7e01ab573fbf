"""Simulated legacy bots as separate processes: `python -m cdc.demo.bots --root R --bot KIND`.

One bot kind per process, because the real writers were separate processes: file locks, WAL
readers and "database is locked" only behave for real across processes. A bot runs until
`--seconds` pass or it gets SIGTERM/SIGINT, then writes its stats as JSON and exits 0.
`start_bots` / `stop_bots` launch and stop a fleet of them for demos and tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cdc.demo.botlib import Bot, run_bot
from cdc.demo.kinds_services import CacheBot, LlmCostBot, MetricsBot, TelegramBot
from cdc.demo.kinds_trading import BuyTrackerBot, TraderBot

if TYPE_CHECKING:
    from cdc.demo.legacy_file import LegacyFile

KINDS: dict[str, type[Bot]] = {
    k.kind: k for k in (TraderBot, BuyTrackerBot, TelegramBot, MetricsBot, CacheBot, LlmCostBot)
}
"""Bot kind name -> class; each kind writes the one legacy file its `spec` names."""

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class BotProcess(subprocess.Popen):
    """A launched bot: a Popen that also knows its kind and where its stats will be."""

    def __init__(self, kind: str, stats_file: Path, args: list[str], **kwargs: object) -> None:
        super().__init__(args, **kwargs)  # type: ignore[call-overload]
        self.kind = kind
        self.stats_file = stats_file

    def read_stats(self) -> dict[str, object]:
        """The bot's JSON stats (present once it has exited cleanly)."""
        return json.loads(self.stats_file.read_text(encoding="utf-8"))


def start_bots(
    root: Path,
    files: Iterable[LegacyFile] | None,
    seconds: float,
    seed: int = 7,
    *,
    kinds: Sequence[str] | None = None,
    rate: float | None = 50.0,
    alter: bool = False,
    stats_dir: Path | None = None,
) -> list[BotProcess]:
    """Launch one process per bot kind (all kinds whose file is in `files`, by default).

    `files` are the generator's LegacyFile records (only `.source` is used; None means every
    demo file). Repeating a kind in `kinds` starts several processes writing the same file,
    as the real system did. Each process gets its own seed (`seed + index`), a stats file and a
    log file (stdout+stderr) in `stats_dir` (default `root/bot-stats`).
    """
    root = Path(root)
    sources = None if files is None else {f.source for f in files}
    if kinds is None:
        kinds = [k for k, cls in KINDS.items() if sources is None or cls.spec.source in sources]
    stats_dir = Path(stats_dir) if stats_dir else root / "bot-stats"
    stats_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
    )
    procs: list[BotProcess] = []
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            raise ValueError(f"unknown bot kind {kind!r} (known: {', '.join(KINDS)})")
        stats = stats_dir / f"{kind}.{i}.json"
        stats.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "cdc.demo.bots",
            "--root",
            str(root),
            "--bot",
            kind,
            "--seconds",
            str(seconds),
            "--seed",
            str(seed + i),
            "--stats-file",
            str(stats),
        ]
        args += ["--rate", str(rate or 0)]
        if alter:
            args.append("--alter")
        with open(stats_dir / f"{kind}.{i}.log", "wb") as log:
            procs.append(
                BotProcess(kind, stats, args, stdout=log, stderr=subprocess.STDOUT, env=env)
            )
    return procs


def stop_bots(procs: Iterable[subprocess.Popen], timeout: float = 10.0) -> list[int]:
    """SIGTERM every bot still running, wait for all, and return their exit codes.

    A bot that ignores SIGTERM for `timeout` seconds is killed (its code is then negative).
    """
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes: list[int] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cdc.demo.bots", description=__doc__)
    ap.add_argument("--root", type=Path, required=True, help="demo root (holds legacy/)")
    ap.add_argument("--bot", required=True, choices=sorted(KINDS), help="bot kind")
    ap.add_argument("--seconds", type=float, default=10.0, help="run time (default 10)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rate", type=float, default=50.0, help="ops/second cap; 0 = flat out")
    ap.add_argument("--alter", action="store_true", help="drift the schema at start-up")
    ap.add_argument("--stats-file", type=Path, help="write JSON stats here at exit")
    a = ap.parse_args(argv)

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bot = KINDS[a.bot](a.root, random.Random(f"{a.seed}:{a.bot}"))
    if not bot.path.exists():
        print(f"{bot.path}: no such legacy file (generate the demo first)", file=sys.stderr)
        return 2
    stats = run_bot(bot, a.seconds, a.rate or None, a.alter, lambda: stopping)
    doc = stats.as_dict() | {"source": bot.spec.source, "alter": a.alter, "pid": os.getpid()}
    if a.stats_file:
        tmp = a.stats_file.with_name(a.stats_file.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        tmp.replace(a.stats_file)
    print(json.dumps({k: doc[k] for k in ("bot", "ops", "errors", "max_stall_ms")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
