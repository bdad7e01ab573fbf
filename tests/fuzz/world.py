"""One fuzz case: real legacy files, a cdc.toml, the real pipeline, a bot connection per
file, and the SQL script of everything that happened (what a failure prints).

Failures are raised as one exception class per kind, so Hypothesis shrinks each kind
separately and reports them apart.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import apsw
from hypothesis import reject

from cdc.config import load_config
from cdc.errors import CdcError, PlanError, TargetError
from cdc.planning.resolve import resolve_plan
from tests.fuzz import oracle
from tests.fuzz.schema import TAG_COLUMN, TableSpec, config_text, target_table
from tests.fuzz.statements import Shape, Stmt, read_shape
from tests.support.pipeline import Pipeline
from verifier import compare_plan, verify_tables


class FuzzFailure(AssertionError):
    """Something the fuzzer found; the message ends with the reproduction script."""


class VerifierSaidEqual(FuzzFailure):
    """The worst kind: a target differs from its legacy table and a verifier said equal."""


class ReplicationDiffers(FuzzFailure):
    """A target differs from its legacy table; the verifiers saw it too."""


class VerifierFalseAlarm(FuzzFailure):
    """The oracle finds the tables equal, a verifier reports a difference."""


class PipelineCrashed(FuzzFailure):
    """Harvest, snapshot, apply or a verifier raised."""


class PlanMistake(FuzzFailure):
    """The plan took a table it must refuse, refused one it must take, or skipped one."""


class World:
    def __init__(
        self,
        features: frozenset[str],
        specs: list[TableSpec],
        sources: list[str],
        wal: set[str],
        daemon: dict[str, object],
    ) -> None:
        self.features, self.specs, self.sources, self.daemon = features, specs, sources, daemon
        self.root = Path(tempfile.mkdtemp(prefix="cdc-fuzz-"))
        self.script: list[str] = []
        self._open: str | None = None
        self.bots: dict[str, apsw.Connection] = {}
        self.pipeline: Pipeline | None = None
        self.excluded: set[str] = set()
        self.config = ""
        for s in sources:
            (self.root / "legacy").mkdir(exist_ok=True)
            c = apsw.Connection(str(self.root / "legacy" / f"{s}.db"))
            self.bots[s] = c
            if s in wal:
                self.run(s, Stmt(["PRAGMA journal_mode=WAL"]))
            for spec in specs:
                self.run(s, Stmt(spec.create_sql()))

    # -- the bots ----------------------------------------------------------------------------
    def run(self, source: str, stmt: Stmt) -> None:
        """Run a bot action on one legacy file and add it to the script, errors included."""
        if self._open != source:
            self.script.append(f".open legacy/{source}.db")
            self._open = source
        conn = self.bots[source]
        if stmt.rows:
            self.script += stmt.script()
            try:
                conn.executemany(stmt.sqls[0], stmt.rows)
            except apsw.Error as e:
                self.script.append(f"-- error in executemany: {e}")
            self._end_open_transaction(conn)
            return
        for sql in stmt.sqls:
            self.script.append(sql + ";")
            try:
                conn.execute(sql)
            except apsw.Error as e:
                self.script.append(f"-- error: {e}")
        self._end_open_transaction(conn)

    def _end_open_transaction(self, conn: apsw.Connection) -> None:
        if not conn.get_autocommit():  # a COMMIT that failed leaves the bot inside one
            self.script.append("ROLLBACK;")
            conn.execute("ROLLBACK")

    def shape(self, source: str, table: str) -> Shape | None:
        return read_shape(self.bots[source], table)

    def note(self, text: str) -> None:
        self.script.append(f"-- {text}")

    # -- capture and the pipeline ------------------------------------------------------------
    def _write_config(self) -> str:
        self.config = config_text(self.sources, self.specs, self.excluded, self.daemon)
        path = self.root / "cdc.toml"
        path.write_text(self.config)
        return str(path)

    def plan(self) -> None:
        """Write the cdc.toml, checking that the plan refuses the tables it must (then
        excluding them, as an operator would). A table named `_cdc_*` may be refused by
        name, or replicated: never silently left out (see `start`)."""
        must_refuse = {s.name for s in self.specs if s.expect_refused}
        try:
            resolve_plan(load_config(self._write_config()))
            refused = ""
        except PlanError as e:
            refused = str(e)
        named = {s.name for s in self.specs if repr(s.name) in refused}
        taken = sorted(must_refuse - named)
        if taken:
            self.fail(PlanMistake, f"the plan took tables it cannot identify rows of: {taken}")
        wrong = sorted(n for n in named - must_refuse if not n.lower().startswith("_cdc_"))
        if refused and (wrong or not named):
            self.fail(PlanMistake, f"the plan refused generated tables: {refused}")
        self.excluded = must_refuse | named
        self.cfg = load_config(self._write_config())

    def start(self) -> None:
        """Plan, install capture, open the in-process pipeline."""
        self.plan()
        cfg = self.cfg
        self.note("cdc install; the daemon starts (initial copy interleaved with the stream)")
        try:
            self.pipeline = Pipeline(cfg, resolve_plan(cfg))
        except CdcError as e:
            self.fail(PlanMistake, f"install/plan failed: {type(e).__name__}: {e}")
        mapped = {(m.source, m.table) for sp in self.pipeline.plan.sources for m in sp.tables}
        skipped = [
            (s, t.name)
            for s in self.sources
            for t in self.specs
            if t.name not in self.excluded and (s, t.name) not in mapped
        ]
        if skipped:
            self.fail(PlanMistake, f"tables silently left out of the plan: {skipped}")

    def _guard(self, what: str, fn):
        try:
            return fn()
        except FuzzFailure:
            raise
        except TargetError as e:
            if "key holds NULL" in str(e) and "merged" in str(e):
                reject()  # documented: a NULL key in a merged table stops the apply (exit 6)
            self.fail(PipelineCrashed, f"{what} raised {type(e).__name__}: {e}", cause=e)
        except Exception as e:
            self.fail(PipelineCrashed, f"{what} raised {type(e).__name__}: {e}", cause=e)

    def snapshot_chunk(self) -> None:
        for h in self.pipeline.harvesters:
            if h.snapshot_pending:
                self.note(f"[snapshot chunk of {h.plan.name}]")
                self._guard("snapshot chunk", h.snapshot_chunk)
                return

    def harvest_once(self) -> None:
        self.note("[harvest once]")
        for h in self.pipeline.harvesters:
            self._guard("harvest", h.harvest)

    def apply(self) -> None:
        self.note("[apply]")
        self._guard("apply", self.pipeline.apply)

    def drain(self) -> None:
        """Until the initial copy is done, every capture row is harvested and applied."""
        for _ in range(100):
            for h in self.pipeline.harvesters:
                while h.snapshot_pending:
                    self._guard("snapshot chunk", h.snapshot_chunk)
                while self._guard("harvest", h.harvest).full:
                    pass
            self._guard("apply", self.pipeline.apply)
            if not any(
                h.snapshot_pending or h.pending()[1] or h._recapture
                for h in self.pipeline.harvesters
            ):
                return
        self.fail(PipelineCrashed, "the pipeline never drained")

    # -- the judgment -------------------------------------------------------------------------
    def check(self) -> None:
        """Drain, then compare every mapped table with the oracle and both verifiers."""
        self.note("[sync: initial copy, harvest, apply; then compare]")
        self.drain()
        self.judge(self.pipeline.plan)

    def judge(self, plan) -> None:  # noqa: ANN001 - cdc.plan.Plan
        """Compare every mapped table (sources quiet, backlog zero) with the oracle and both
        verifiers; raise the worst disagreement."""
        oracle_says = self._oracle()
        flat = self._guard("compare_plan", lambda: compare_plan(plan))
        plain = {(d.source, d.table): d for d in flat}
        tables = [m for sp in plan.sources for m in sp.tables]
        report = self._guard("verify", lambda: verify_tables(self.cfg, plan, tables)).report
        real = {(r.source, r.table): r for r in report.tables}
        worst, lines = None, []
        for key, problems in oracle_says.items():
            d, r = plain.get(key), real.get(key)
            said = (
                f"compare_plan: {'equal' if d and d.equal else 'differs' if d else 'absent'}; "
                f"cdc verify: {r.state if r else 'absent'}"
                + (f" ({r.reason})" if r and r.reason else "")
            )
            if problems:
                kind = (
                    VerifierSaidEqual
                    if (d and d.equal) or (r and r.state == "equal")
                    else (ReplicationDiffers)
                )
                lines.append(f"{key[0]}.{key[1]}: {said}\n  " + "\n  ".join(problems))
                worst = VerifierSaidEqual if kind is VerifierSaidEqual else worst or kind
            elif (d and not d.equal) or (r and r.state == "diverged"):
                lines.append(f"{key[0]}.{key[1]}: oracle equal; {said}")
                worst = worst or VerifierFalseAlarm
        if worst:
            self.fail(worst, "\n".join(lines))

    def _oracle(self) -> dict[tuple[str, str], list[str]]:
        out = {}
        tgt = apsw.Connection(str(self.root / "out" / "core.db"), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            for s in self.sources:
                src = apsw.Connection(
                    str(self.root / "legacy" / f"{s}.db"), flags=apsw.SQLITE_OPEN_READONLY
                )
                try:
                    for spec in self.specs:
                        if spec.name in self.excluded:
                            continue
                        tag = (TAG_COLUMN, s) if spec.merged else None
                        out[(s, spec.name)] = oracle.compare(
                            src, spec.name, tgt, target_table(spec, s), tag
                        )
                finally:
                    src.close()
        finally:
            tgt.close()
        return out

    # -- reporting ----------------------------------------------------------------------------
    def reproduction(self) -> str:
        cfg = "\n".join("--   " + line for line in self.config.splitlines())
        fams = ",".join(sorted(self.features))
        return (
            f"-- families: {fams}\n-- cdc.toml:\n{cfg}\n"
            "-- SQL script (sqlite3 shell; `.open` switches the legacy file, [..] comments are\n"
            "-- the pipeline's steps: harvest, apply, the initial copy's chunks)\n"
            + "\n".join(self.script)
        )

    def fail(self, kind: type[FuzzFailure], message: str, cause: Exception | None = None):
        text = f"{kind.__name__}: {message}\n\n--- reproduction ---\n{self.reproduction()}"
        raise kind(text) from cause

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        for c in self.bots.values():
            c.close()
        shutil.rmtree(self.root, ignore_errors=True)
