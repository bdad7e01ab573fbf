"""Proves legacy == consolidated, chunk by chunk, while the bots keep writing.

`verify_tables` runs one pass (the API of `cdc verify`); `TableVerifier` holds the
position-aware algorithm; `compare_plan` is the plain full comparison for quiet copies,
kept as an independent oracle for tests.
"""

from verifier.compare import TableDiff, canonical, compare_plan, compare_table
from verifier.model import KeyDiff, TableResult, VerifyReport
from verifier.run import PassResult, estimate_rows, select_tables, verify_tables
from verifier.table import TableVerifier

__all__ = [
    "KeyDiff",
    "PassResult",
    "TableDiff",
    "TableResult",
    "TableVerifier",
    "VerifyReport",
    "canonical",
    "compare_plan",
    "compare_table",
    "estimate_rows",
    "select_tables",
    "verify_tables",
]
