"""What the verifier reports, as typed structs (the JSON report and `cdc status` use them)."""

from __future__ import annotations

import msgspec


class KeyDiff(msgspec.Struct):
    """One diverged row. Values are SQL literals, so `1` vs `1.0` vs `'1'` is visible."""

    kind: str  # "missing" (in legacy only), "extra" (in target only), "different"
    key: list[str]
    columns: list[str] = []  # for "different": the columns whose values differ
    source: list[str] | None = None  # the legacy row's values (columns in table order)
    target: list[str] | None = None
    counts: list[int] = []  # [legacy, target] rows under this key, when a key is NULL


class TableResult(msgspec.Struct):
    """One verification pass over one mapped table.

    `state`: "equal" (every row compared equal), "diverged" (`diverged` names the keys,
    or `shape` how the target table's columns differ: its rows are not compared then),
    "unsettled" (some rows kept changing faster than we could catch them at one position;
    nothing was found wrong, but they are not proven either), "skipped" (`reason`) or
    "cut over" (its stage is cut over: the target is the live copy, the legacy table
    frozen; proven equal at the cutover, in its record, and not compared since).
    Digests cover the rows compared in chunks, in key order, on each side; they are equal
    exactly when those rows are, and cover every row when the tables are quiet.
    """

    source: str
    table: str
    target: str
    target_table: str
    state: str = "equal"
    reason: str | None = None
    chunks: int = 0
    source_rows: int = 0
    target_rows: int = 0
    compared_rows: int = 0
    rechecked_rows: int = 0  # changed while we looked; compared again once applied
    source_digest: str = ""
    target_digest: str = ""
    diverged_count: int = 0
    diverged: list[KeyDiff] = []
    unsettled_keys: list[list[str]] = []
    shape: list[str] = []  # how the target table's columns differ (then: diverged)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.source}.{self.table}"

    @property
    def equal(self) -> bool:
        return self.state == "equal"


class VerifyReport(msgspec.Struct):
    started_at: float
    finished_at: float
    tables: list[TableResult]
    config_path: str = ""

    @property
    def equal(self) -> bool:
        return self.verdict == "equal"

    @property
    def diverged(self) -> list[TableResult]:
        return [t for t in self.tables if t.state == "diverged"]

    @property
    def verdict(self) -> str:
        states = {t.state for t in self.tables}
        for s in ("diverged", "unsettled", "skipped"):
            if s in states:
                return s
        return "equal"
