"""The connection a pool hands out: an apsw connection, plus in-process capture when its
database is captured by hooks (`capture = "hooks"`, `cdc.hooks`).

Without capture every call goes straight to apsw. With it, each statement is run to its
end and the keys it changed are written to the capture table in the same transaction, so
they commit, roll back (savepoints included) and survive a crash exactly with the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apsw


class PooledConnection:
    """Use it like an `apsw.Connection` (`execute`, `executemany`, `cursor`, `with conn:`
    for a savepoint); anything else reaches the apsw connection (`raw`)."""

    def __init__(self, raw: apsw.Connection, capture: Any = None) -> None:
        self.raw = raw
        self.capture = capture
        if capture is None:  # nothing to add: apsw's own methods, no extra call
            self.execute = raw.execute  # type: ignore[method-assign]
            self.executemany = raw.executemany  # type: ignore[method-assign]
            self.cursor = raw.cursor  # type: ignore[method-assign]

    def execute(self, statements: str, bindings: Any = None) -> Iterator[Any]:
        return self.capture.execute(self.raw, statements, bindings)

    def executemany(self, statements: str, sequenceofbindings: Iterable[Any]) -> Iterator[Any]:
        return self.capture.executemany(self.raw, statements, sequenceofbindings)

    def cursor(self) -> _CapturingCursor:
        return _CapturingCursor(self)

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def __enter__(self) -> PooledConnection:
        self.raw.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        if self.capture is not None and exc[0] is None:
            self.capture.flush(self.raw)  # before the savepoint is released (maybe committed)
        return self.raw.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def reset_for_reuse(self) -> str | None:
        """Called by the pool on check-in: a transaction left open is rolled back (it
        would hold the database's write lock for the next borrower). Returns what was
        wrong, for the pool's error count, or None."""
        if self.capture is not None:
            self.capture.discard()
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")
            return "a transaction was left open and has been rolled back"
        return None


class _CapturingCursor:
    """`conn.cursor()` of a captured connection: the same rules as `conn.execute`."""

    def __init__(self, conn: PooledConnection) -> None:
        self._conn = conn

    def execute(self, statements: str, bindings: Any = None) -> Iterator[Any]:
        return self._conn.execute(statements, bindings)

    def executemany(self, statements: str, sequenceofbindings: Iterable[Any]) -> Iterator[Any]:
        return self._conn.executemany(statements, sequenceofbindings)
