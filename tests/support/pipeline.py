"""The daemon's two halves driven synchronously, so a test decides when each step runs."""

from __future__ import annotations

from cdc.capture import install as ops
from cdc.capture.harvester import Harvester
from cdc.changelog.segments import LogWriter
from cdc.config import Config
from cdc.planning.plan import Plan
from replicator import Replicator
from verifier import compare_plan


class Pipeline:
    def __init__(self, cfg: Config, plan: Plan, install: bool = True) -> None:
        self.cfg, self.plan = cfg, plan
        if install:
            ops.install(cfg, plan)
        self.writer = LogWriter(cfg.log_dir, cfg.daemon.segment_bytes)
        self.harvesters = []
        for sp in plan.sources:
            if sp.tables:
                h = Harvester(sp, self.writer, cfg.daemon)
                h.open()
                self.harvesters.append(h)
        self.replicator = Replicator(plan, cfg.log_dir, cfg.daemon)

    def harvest(self) -> int:
        n = 0
        for h in self.harvesters:
            while True:
                got = h.harvest().events
                n += got
                if got < self.cfg.daemon.harvest_batch:
                    break
        return n

    def snapshot(self) -> int:
        n = 0
        for h in self.harvesters:
            while h.snapshot_pending:
                n += h.snapshot_chunk()
        return n

    def apply(self) -> int:
        """Apply up to the log's end, or as far as the targets can go now: a target that
        fails without moving (busy, or a copied range waiting for the harvester's reset
        of its table, which only a harvest can bring) is left for the next call."""
        n = 0
        while True:
            before = {t: c.offset for t, c in self.replicator.checkpoints.items()}
            got = self.replicator.step(self.writer.end_offset)
            n += got
            now = self.replicator.checkpoints
            if all(c.offset >= self.writer.end_offset for c in now.values()):
                return n
            if self.replicator.errors and all(now[t].offset == o for t, o in before.items()):
                return n

    def sync(self) -> None:
        for _ in range(3):  # again while a target waits for what a harvest brings
            self.snapshot()
            self.harvest()
            if any(h.snapshot_pending for h in self.harvesters):  # a harvest reset a table
                self.snapshot()
                self.harvest()
            self.apply()
            if not self.replicator.errors:
                return

    def diffs(self):
        return [d for d in compare_plan(self.plan) if not d.equal]

    def close(self) -> None:
        for h in self.harvesters:
            h.close()
        self.replicator.close()
        self.writer.close()
