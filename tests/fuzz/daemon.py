"""The daemon variant: the same schemas and workloads, written by bot processes while a
real `cdc run` is SIGKILLed over and over (most kills aimed with CDC_CRASH_AT crash
points), then restarted; once it has caught up, the oracle and both verifiers judge.

The workload is generated up front against a scratch copy of the legacy files (so each
statement is drawn against the shape the previous ones left), then replayed by one bot
process per file (tests/fuzz/bot.py). That program is the printed reproduction; the
interleaving with the daemon's kills is not reproducible, the program and seed are.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import msgspec
from hypothesis import assume
from hypothesis import strategies as st

from cdc.capture import install as ops
from cdc.config import load_config
from cdc.faults import POINTS
from cdc.planning.resolve import resolve_plan
from replicator.worker import read_apply_status
from tests.conftest import REPO, wait_until
from tests.fuzz.schema import schemas
from tests.fuzz.statements import Stmt, ddl, dml, transaction
from tests.fuzz.world import World

AIMED = [p for p in POINTS if p != "gc"]  # gc needs 7 s of uptime: too slow to aim at here


def _action(data, scratch: World, source: str) -> Stmt | None:
    live = [s for s in scratch.specs if s.name not in scratch.excluded] or scratch.specs
    spec = data.draw(st.sampled_from(live), label="table")
    shape = scratch.shape(source, spec.name)
    if shape is None or not shape.writable:
        return None
    kind = data.draw(st.sampled_from(["dml"] * 8 + ["txn", "ddl"]), label="kind")
    if kind == "ddl":
        return data.draw(ddl(spec, shape, scratch.features), label="ddl")
    if kind == "txn" and "txn" in scratch.features:
        return data.draw(transaction([(spec, shape)], scratch.features), label="txn")
    return data.draw(dml(spec, shape, scratch.features), label="dml")


def programs(data, scratch: World, actions: int) -> dict[str, list[Stmt]]:
    """Per legacy file, `actions` bot actions, each run on the scratch copy as drawn."""
    out: dict[str, list[Stmt]] = {s: [] for s in scratch.sources}
    for s in scratch.sources:
        for _ in range(actions):
            stmt = _action(data, scratch, s)
            if stmt is not None:
                scratch.run(s, stmt)
                out[s].append(stmt)
    return out


def _start_bots(world: World, progs: dict[str, list[Stmt]], pause: float) -> list:
    bots = []
    for s, prog in progs.items():
        path = world.root / f"program-{s}.msgpack"
        path.write_bytes(msgspec.msgpack.encode([[p.sqls, p.rows] for p in prog]))
        bots.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.fuzz.bot",
                    str(world.root / "legacy" / f"{s}.db"),
                    str(path),
                    str(pause),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
        )
    return bots


def _kill_once(cfg, start_daemon, rnd: random.Random, aimed: bool) -> str:
    """One daemon life: armed with a crash point (or not), SIGKILLed at the latest after a
    few seconds; waits for its apply worker to exit. Returns where it died."""
    point = rnd.choice(AIMED) if aimed else None
    env = {"CDC_CRASH_AT": f"{point}:{rnd.randint(1, 3)}"} if point else {}
    d = start_daemon(cfg, extra_env=env)
    where = "random moment"
    try:
        d.proc.wait(timeout=rnd.uniform(1.5, 3.0) if point else rnd.uniform(0.3, 1.5))
        where = point if f"crash point {point!r}" in d.output() else f"exit {d.proc.returncode}"
    except subprocess.TimeoutExpired:
        pass
    worker = read_apply_status(str(cfg.parent / "state"))
    d.kill(signal.SIGKILL)
    if where.startswith("exit"):
        raise AssertionError(f"the daemon exited by itself ({where}): {d.output()}")
    if worker is not None and worker.pid:
        wait_until(lambda: _gone(worker.pid), 30, 0.05, "the apply worker to exit")
    return where


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def run_case(
    data, features: frozenset[str], start_daemon, kills: int, actions: int, pause: float
) -> None:
    """Draw a case, run it under kills, check convergence (raises a FuzzFailure)."""
    specs = data.draw(schemas(features), label="schema")
    sources = ["a", "b"] if "two_sources" in features else ["a"]
    daemon = {"snapshot_chunk": 3, "harvest_batch": 7, "trim_interval": 0.2, "apply_batch": 5}
    daemon["snapshot_copy"] = data.draw(st.sampled_from(["reference", "log"]), label="copy")
    daemon["segment_bytes"] = 16384
    scratch = World(features, specs, sources, set(), daemon)
    world = World(features, specs, sources, {"b"}, daemon)
    try:
        for s in sources:  # a few rows before capture: the initial copy has work
            for _ in range(3):
                stmt = _action(data, scratch, s)
                if stmt is not None:
                    scratch.run(s, stmt)
                    world.run(s, stmt)
        world.plan()
        scratch.excluded = world.excluded
        ops.install(world.cfg, resolve_plan(world.cfg))
        mark, scratch._open = len(scratch.script), None
        progs = programs(data, scratch, actions)
        # Hypothesis starts from its simplest case (the same INSERT over and over): a daemon
        # case is too dear to spend on that one.
        assume(len({repr(p) for ps in progs.values() for p in ps}) >= actions // 2)
        world.note("cdc install; `cdc run` starts, and is killed over and over while one bot")
        world.note("per file runs its part of what follows (the interleaving is not kept)")
        world.script += scratch.script[mark:]
        rnd = random.Random(data.draw(st.integers(0, 2**32), label="kill seed"))
        bots = _start_bots(world, progs, pause=pause)
        try:
            where = [
                _kill_once(world.root / "cdc.toml", start_daemon, rnd, i % 3 != 2)
                for i in range(kills)
            ]
            for b in bots:
                out, _ = b.communicate(timeout=120)
                assert b.returncode == 0, out
                print(f"bot: {out.strip()}")
        finally:
            for b in bots:
                if b.poll() is None:
                    b.kill()
                b.communicate()
        print(f"kills: {where}")
        world.note(f"kills: {where}")
        d = start_daemon(world.root / "cdc.toml")
        d.wait_synced(timeout=120)
        assert d.stop() == 0, d.output()
        world.judge(resolve_plan(load_config(world.root / "cdc.toml")))
    finally:
        scratch.close()
        world.close()
