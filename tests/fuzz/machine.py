"""The stateful test: Hypothesis chooses a schema, then interleaves bot writes, schema
changes and the pipeline's own steps (a snapshot chunk, one harvest, an apply), and every
few steps drains the pipeline and compares (World.check).

`run(seconds, ...)` runs it for a time budget: batches of examples with seeds derived from
a base seed, until the time is up, collecting every distinct failure it meets. `world`
chooses the World class (default: a SQLite target); one may bring its own `draws`
(tests/fuzz/pg_world.py: a PostgreSQL target, values its column types carry).
"""

from __future__ import annotations

import logging
import os
import time
import traceback

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    precondition,
    rule,
)

from tests.fuzz.features import enabled
from tests.fuzz.schema import schemas
from tests.fuzz.statements import ddl, dml, transaction
from tests.fuzz.world import FuzzFailure, World

CHECK_EVERY = int(os.environ.get("CDC_FUZZ_CHECK_EVERY", "3"))  # steps between two checks


class Draws:
    """What the machine draws: schemas, bot writes, transactions, schema changes. A World
    class may carry its own (`World.draws`, a subclass of this)."""

    schemas = staticmethod(schemas)
    dml = staticmethod(dml)
    transaction = staticmethod(transaction)
    ddl = staticmethod(ddl)


def make_machine(
    features: frozenset[str], world: type[World] = World
) -> type[RuleBasedStateMachine]:
    """A machine class bound to a set of feature families and a World class."""

    class ReplicationFuzz(_Machine):
        F = features
        W = world
        D = getattr(world, "draws", Draws)

    return ReplicationFuzz


class _Machine(RuleBasedStateMachine):
    F: frozenset[str] = frozenset()
    W: type[World] = World
    D: type[Draws] = Draws

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.since_check = 0

    @initialize(data=st.data())
    def setup(self, data) -> None:
        f = self.F
        specs = data.draw(self.D.schemas(f), label="schema")
        sources = ["a", "b"] if "two_sources" in f and data.draw(st.booleans()) else ["a"]
        wal = set(data.draw(st.lists(st.sampled_from(sources), unique=True), label="wal"))
        daemon = {
            "snapshot_chunk": data.draw(st.sampled_from([1, 2, 5, 1000]), label="chunk"),
            "harvest_batch": data.draw(st.sampled_from([1, 3, 1000]), label="harvest_batch"),
            # the initial copy through the log, or by reference (the apply reads the file)
            "snapshot_copy": data.draw(st.sampled_from(["reference", "log"]), label="copy"),
        }
        self.world = self.W(f, specs, sources, wal, daemon)
        for _ in range(data.draw(st.integers(0, 4), label="rows before install")):
            self._write(data)
        self.world.start()

    def _pick(self, data):
        w = self.world
        source = data.draw(st.sampled_from(w.sources), label="source")
        live = [s for s in w.specs if s.name not in w.excluded]
        spec = data.draw(st.sampled_from(live or w.specs), label="table")
        return source, spec, w.shape(source, spec.name)

    def _write(self, data) -> None:
        source, spec, shape = self._pick(data)
        if shape is not None and shape.writable:
            self.world.run(source, data.draw(self.D.dml(spec, shape, self.F), label="dml"))

    def _after_step(self) -> None:
        self.since_check += 1
        if self.since_check >= CHECK_EVERY:
            self.since_check = 0
            self.world.check()

    @rule(data=st.data())
    def write(self, data) -> None:
        self._write(data)
        self._after_step()

    @precondition(lambda self: "txn" in self.F)
    @rule(data=st.data())
    def transaction(self, data) -> None:
        source = data.draw(st.sampled_from(self.world.sources), label="source")
        pairs = [
            (s, sh)
            for s in self.world.specs
            if s.name not in self.world.excluded
            and (sh := self.world.shape(source, s.name)) is not None
            and sh.writable
        ]
        if pairs:
            self.world.run(source, data.draw(self.D.transaction(pairs, self.F), label="txn"))
        self._after_step()

    @rule(data=st.data())
    def schema_change(self, data) -> None:
        source, spec, shape = self._pick(data)
        if shape is not None:
            stmt = data.draw(self.D.ddl(spec, shape, self.F), label="ddl")
            if stmt is not None:
                self.world.run(source, stmt)
        self._after_step()

    @rule()
    def snapshot_chunk(self) -> None:
        self.world.snapshot_chunk()

    @rule()
    def harvest(self) -> None:
        self.world.harvest_once()

    @rule()
    def apply(self) -> None:
        self.world.apply()

    @rule()
    def check(self) -> None:
        self.since_check = 0
        self.world.check()

    def teardown(self) -> None:
        if self.world is not None:
            self.world.close()


def fuzz_settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,  # CI runs on a clean clone; a failure prints its own reproduction
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
        print_blob=False,
    )


def run_batch(
    features: frozenset[str],
    base_seed: int,
    examples: int,
    steps: int,
    world: type[World] = World,
) -> None:
    """One Hypothesis run of `examples` cases, reproducible from `base_seed`."""
    test = get_state_machine_test(
        make_machine(features, world), settings=fuzz_settings(examples, steps)
    )
    seed(base_seed)(test)()


def run(
    seconds: float,
    features: frozenset[str] | None = None,
    base_seed: int = 0,
    examples: int = 10,
    steps: int = 25,
    keep_going: bool = False,
    world: type[World] = World,
) -> list[str]:
    """Batches of `examples` cases (seeds base_seed, base_seed + 1, ...) until `seconds`
    have passed. Returns the failures (their shrunk reproduction); with `keep_going`
    it goes on after one, else stops there."""
    features = enabled() if features is None else features
    logging.getLogger().setLevel(logging.ERROR)  # the pipeline's own warnings are expected
    logging.disable(logging.WARNING)
    deadline = time.monotonic() + seconds
    found: list[str] = []
    n = base_seed
    while time.monotonic() < deadline:
        try:
            run_batch(features, n, examples, steps, world)
        except (FuzzFailure, Flaky, Exception) as e:  # noqa: BLE001 - reported, not hidden
            text = f"seed {n}: " + describe(e)
            found.append(text)
            print(f"\n===== failure (seed {n}) =====\n{text}\n", flush=True)
            if not keep_going:
                break
        n += 1
    return found


def describe(e: BaseException) -> str:
    """Every failure in `e` (Hypothesis groups distinct bugs of one run together)."""
    if isinstance(e, BaseExceptionGroup):
        return "\n\n".join(describe(x) for x in e.exceptions)
    return "".join(traceback.format_exception_only(e)).strip()
