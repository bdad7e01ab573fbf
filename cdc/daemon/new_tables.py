"""What the daemon does about tables the bots create while it runs.

A new table may be mapped by the rules (start over with a plan that captures it), mapped
into a cut-over target it must not reach, or matched by no rule (named and left alone).
Deciding that means resolving the plan again, patiently, from the main thread that also
polls the controls: a piece of judgement with its own state (what appeared, when to look
again, what was already named), kept out of the daemon's thread plumbing.
"""

from __future__ import annotations

import logging
import time

import apsw
import msgspec

from cdc.capture.harvester import Harvester
from cdc.config import Config
from cdc.errors import CdcError
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan
from cdc.stages import kept_out as moved

log = logging.getLogger("cdc.daemon.daemon")  # its lines, named as before


class NewTables:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._appeared: set[tuple[str, str]] = set()  # (source, table) created since
        self._look_again_at = 0.0
        self._kept_new: set[tuple[str, str]] = set()  # named in the log (`keep_new_out`)

    def replan_needed(self, harvesters: list[Harvester], current: Plan) -> bool:
        """Tables a bot created since we last looked: True (start over with a plan that
        captures them) when a rule maps them and the plan stays sound; otherwise name them."""
        self._appeared |= {(h.plan.name, t) for h in harvesters for t in h.take_appeared()}
        if not self._appeared or time.monotonic() < self._look_again_at:
            return False
        found = self._appeared
        # This thread also polls the controls: a locked file must not hold it for the full
        # busy timeout. A source a bot keeps locked is looked at again a little later.
        quick = msgspec.structs.replace(
            self.cfg, daemon=msgspec.structs.replace(self.cfg.daemon, busy_timeout_ms=200)
        )
        try:
            plan = resolve_plan(quick, strict=False)
        except (CdcError, apsw.Error, OSError) as e:
            log.error("new tables %s: cannot resolve the plan again: %s", sorted(found), e)
            self._look_again_at = time.monotonic() + 5.0
            return False
        if plan.busy:
            self._look_again_at = time.monotonic() + 2.0
            return False
        self._appeared = set()
        plan = self.keep_new_out(plan)
        for source, table in sorted(found & set(plan.unmapped)):
            log.warning(
                "table %s appeared in source %s and no rule matches it: it is not captured "
                "(map it to a target or exclude it; `cdc status` lists it)",
                table,
                source,
                extra={"source": source, "table": table},
            )
        new = sorted(_mapped(plan) - _mapped(current))
        if not new:
            return False
        names = ", ".join(f"{s}.{t}" for s, t in new)
        if not plan.unmapped_only():
            log.error(
                "new table(s) %s are mapped by the rules, but the plan now has problems; "
                "they are not captured until these are fixed: %s",
                names,
                "; ".join(p for p in plan.problems),
            )
            return False
        log.warning("new table(s) %s mapped by the rules: starting over to capture them", names)
        return True

    def keep_new_out(self, plan: Plan) -> Plan:
        """`plan` less the tables a rule maps into a cut-over target that its cutover did
        not move (`cdc.moved.not_moved`): a stale process's new table must not land in the
        live file. Each is named at ERROR once."""
        kept = moved.not_moved(plan, self.cfg.state_dir)
        for k in kept:
            if (k.source, k.table) not in self._kept_new:
                self._kept_new.add((k.source, k.table))
                log.error(
                    "source %s: %s",
                    k.source,
                    moved.describe(k),
                    extra={"source": k.source, "table": k.table},
                )
        return moved.without(plan, kept)


def _mapped(plan: Plan) -> set[tuple[str, str]]:
    return {(m.source, m.table) for sp in plan.sources for m in [*sp.tables, *sp.fts]}
