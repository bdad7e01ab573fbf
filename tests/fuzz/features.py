"""Feature families: one switch per kind of input, so a run can leave out what is known
to be broken (CI) or turn everything on (`make fuzz`).

`CDC_FUZZ_FEATURES` names the families to enable (`all`, the default, or a comma list);
`CDC_FUZZ_SKIP` names families to leave out of that. A family is a kind of input, not a
test: turning one off only narrows what the generator writes.
"""

from __future__ import annotations

import os

# family -> what it generates (docs/fuzzing.md lists the same)
FAMILIES: dict[str, str] = {
    # known defect families (the list; a family per numbered item)
    "cdc_names": "user tables named _cdc_* (defect 1)",
    "utf8": "invalid UTF-8 TEXT via CAST(x'..' AS TEXT) (defect 2)",
    "collation": "NOCASE/RTRIM keys and unique indexes, values equal under them (defects 3, 4)",
    "numeric_keys": "untyped keys where 1 and 1.0 (and friends) collide (defect 3)",
    "late_index": "CREATE/DROP [UNIQUE] INDEX after capture is installed (defect 5)",
    "null_keys": "NULL in a non-INTEGER PRIMARY KEY, INTEGER PRIMARY KEY DESC without key (6)",
    "rowid_names": "keyless tables shadowing rowid, oid and _rowid_ (defect 7)",
    "col_drift": "ALTER TABLE RENAME COLUMN / DROP COLUMN (defect 8)",
    "vacuum": "VACUUM (renumbers keyless rowids, defect 9)",
    "recreate": "DROP + CREATE of a captured table (reset, defect 10)",
    # families of defects this fuzzer found beyond that list (docs/fuzzing.md, Findings)
    "merge_defaults": "ADD COLUMN ... DEFAULT on merged tables (F1, F2)",
    "merge_collation": "NOCASE/RTRIM keys of merged tables (F3; needs `collation`)",
    "reset_null_keys": "DROP + CREATE of composite-key tables with NULL keys (F4; needs "
    "`recreate`, `null_keys`)",
    "numeric_replace": "REPLACE on untyped-key tables with `numeric_keys` (F6)",
    "merge_drift_index": "CREATE INDEX on merged tables with `col_drift` (F7)",
    # documented limits (docs/architecture.md, Limits): off unless asked for by name
    "merge_null_keys": "NULL keys in merged tables (the apply stops, exit 6, by design)",
    # families expected to work
    "default_affinity": "ADD COLUMN DEFAULT of a class the column's type converts or refuses",
    "add_column": "ALTER TABLE ADD COLUMN with and without DEFAULT",
    "merge": "merged mappings (several sources into one tagged table)",
    "two_sources": "a second legacy file with the same tables",
    "without_rowid": "WITHOUT ROWID tables",
    "strict": "STRICT tables",
    "generated": "generated columns (VIRTUAL and STORED)",
    "unique": "UNIQUE constraints and unique indexes declared with the table",
    "partial_index": "partial unique indexes (WHERE ...)",
    "expr_index": "unique indexes on expressions",
    "odd_names": "quotes, spaces, unicode, keywords, rowid-like column names",
    "big_values": "big/empty blobs and strings, big ints, REAL edges, infinities",
    "txn": "explicit transactions, ROLLBACK, SAVEPOINT / ROLLBACK TO",
    "executemany": "executemany batches",
    "key_updates": "UPDATE of key columns, UPDATE OR REPLACE",
}

# The families of the known defects: all fixed on main, so CI runs them (a family
# whose defect reopens goes into tests/test_fuzz.py's KNOWN_OPEN).
KNOWN_DEFECTS: dict[str, str] = {
    "cdc_names": "1",
    "utf8": "2",
    "collation": "3, 4",
    "numeric_keys": "3",
    "late_index": "5",
    "null_keys": "6",
    "rowid_names": "7",
    "col_drift": "8",
    "vacuum": "9",
    "recreate": "10",
}

# Families of defects the fuzzer found (docs/fuzzing.md, Findings; F5 is the verifier's and
# shows through F4); the open ones are in tests/test_fuzz.py's KNOWN_OPEN.
FOUND: dict[str, str] = {
    "merge_defaults": "F1: a merged target keeps a DEFAULT unconverted; F2: one DEFAULT for "
    "every member (others' rows and rows after a drop get it, or a member's is lost)",
    "merge_collation": "F3 (fixed): REPLACE by a key equal under the key's collation "
    "left both spellings in a merged target",
    "reset_null_keys": "F4: a reset between two rows holding NULL in different key columns "
    "loses the new row",
    "numeric_replace": "F6 (fixed): REPLACE 2 by 2.0, then UPDATE of the key: the target kept 2",
    "merge_drift_index": "F7: a unique index created beside a column rename/drop in a "
    "merged table is never probed",
}


# Families that only show documented limits: `all` leaves them out.
LIMITS = {"merge_null_keys"}


def _names(text: str) -> set[str]:
    got = {n.strip() for n in text.split(",") if n.strip()}
    unknown = got - set(FAMILIES) - {"all", "none"}
    if unknown:
        raise ValueError(f"unknown fuzz families: {sorted(unknown)} (known: {sorted(FAMILIES)})")
    return got


def enabled(features: str | None = None, skip: str | None = None) -> frozenset[str]:
    """The families to generate: `features` (default: $CDC_FUZZ_FEATURES or all) minus
    `skip` (default: $CDC_FUZZ_SKIP)."""
    features = os.environ.get("CDC_FUZZ_FEATURES", "all") if features is None else features
    skip = os.environ.get("CDC_FUZZ_SKIP", "") if skip is None else skip
    on = _names(features)
    if "all" in on:
        on = set(FAMILIES) - LIMITS
    on.discard("none")
    return frozenset(on - _names(skip))
