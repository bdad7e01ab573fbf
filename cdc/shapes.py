"""Which changes of a captured table's shape need its copy made again.

Adding a column at the end is followed in place (section 5b). Anything else a bot can do
to a live table without dropping it leaves the target's copy wrong in ways no trigger
reports: a renamed or dropped column (the target would keep the old one with stale
values), a changed key, a new or changed unique index (a REPLACE may already have deleted
a row through it before its probe existed). Those tables are reset and copied again.
"""

from __future__ import annotations

import hashlib

import msgspec

from cdc.inventory import TableInfo


def _h(value: object) -> str:
    return hashlib.blake2b(msgspec.msgpack.encode(value), digest_size=6).hexdigest()


def mark(info: TableInfo) -> str:
    """A short fingerprint of what `recopy_reason` compares, kept in the log."""
    names = info.column_names
    return ":".join(
        [
            str(len(names)),
            _h(names),
            _h([info.key, info.without_rowid]),
            _h([info.unique_sets, info.unique_collations, info.unique_exprs]),
        ]
    )


def recopy_reason(old: TableInfo | str, new: TableInfo) -> str | None:
    """Why the table must be copied again after changing from `old` (its info, or its
    `mark`; "" means unknown: an older log) to `new`; None if the change is additive."""
    if isinstance(old, TableInfo):
        old = mark(old)
    if not old:
        return None
    n, cols, key, uniq = old.split(":")
    names = new.column_names
    if int(n) > len(names) or _h(names[: int(n)]) != cols:
        return "a column was renamed or dropped"
    if _h([new.key, new.without_rowid]) != key:
        return "its key changed"
    if _h([new.unique_sets, new.unique_collations, new.unique_exprs]) != uniq:
        return "its unique indexes changed"
    return None


def probes_changed(reason: str | None) -> bool:
    """A reset whose copy must wait until the REPLACE probes match the indexes again."""
    return reason == "its unique indexes changed"
