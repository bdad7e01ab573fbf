"""Proves legacy == consolidated. For now a full, exact comparison for quiescent copies;
the chunked, position-aware verifier of the verifier issue builds on `canonical`."""

from verifier.compare import TableDiff, canonical, compare_plan, compare_table

__all__ = ["TableDiff", "canonical", "compare_plan", "compare_table"]
