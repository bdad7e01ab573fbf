"""The connection a pool hands out: an apsw connection, plus in-process capture when its
database is captured by hooks (`capture = "hooks"`, `cdc.hooks`).

Without capture every call goes to apsw, and only a fence's refusal is told apart: it
becomes `FencedWrite`, still an `apsw.ConstraintError` for a bot that catches those, but
one a careful bot can tell from a UNIQUE conflict it means to skip. With capture, each
statement is run to its end and the keys it changed are written to the capture table in
the same transaction, so they commit, roll back (savepoints included) and survive a crash
exactly with the rows; the capture refuses a fenced write itself (`cdc.hooks`).

Nothing of the capture is imported here: a bot that only borrows connections does not load
it (`cdc.capture.hooks` comes with the first `capture = "hooks"` source, docs/pool.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apsw

from cdc.errors import FENCE_PREFIX, FENCED_HINT, FencedWrite

PREFIX = FENCE_PREFIX  # what every fence message starts with (cdc.errors, shared)


class PooledConnection:
    """Use it like an `apsw.Connection` (`execute`, `executemany`, `cursor`, `with conn:`
    for a savepoint); anything else reaches the apsw connection (`raw`)."""

    def __init__(self, raw: apsw.Connection, capture: Any = None) -> None:
        self.raw = raw
        self.capture = capture
        self.fenced = 0  # writes a fence refused since the pool last counted (`PoolMetrics`)
        if capture is None:  # apsw's own methods, only a fence's refusal told apart
            self.execute = _telling_fences(raw.execute, self)  # type: ignore[method-assign]
            self.executemany = _telling_fences(raw.executemany, self)  # type: ignore[method-assign]
            self.cursor = raw.cursor  # type: ignore[method-assign]

    def execute(self, statements: str, bindings: Any = None) -> Iterator[Any]:
        try:
            return self.capture.execute(self.raw, statements, bindings)
        except FencedWrite:
            self.fenced += 1
            raise

    def executemany(self, statements: str, sequenceofbindings: Iterable[Any]) -> Iterator[Any]:
        try:
            return self.capture.executemany(self.raw, statements, sequenceofbindings)
        except FencedWrite:
            self.fenced += 1
            raise

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
            try:  # before the savepoint is released (maybe committed)
                self.capture.flush(self.raw)
            except BaseException as e:
                self._exit_raw(type(e), e, e.__traceback__)
                raise
        return self._exit_raw(*exc)

    def _exit_raw(self, *exc: Any) -> Any:
        """apsw's end of the savepoint. After a fence's refusal the transaction is gone
        (RAISE(ROLLBACK)), and apsw's ROLLBACK TO then fails with "no transaction is
        active": the borrower must see the refusal, not that."""
        try:
            return self.raw.__exit__(*exc)
        except apsw.SQLError:
            if exc[1] is None or self.raw.in_transaction:
                raise
            return False

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


def _telling_fences(method: Callable[..., Any], owner: PooledConnection) -> Callable[..., Any]:
    def call(statements: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(statements, *args, **kwargs)
        except apsw.ConstraintError as e:
            if not str(e).startswith(PREFIX):
                raise
            owner.fenced += 1
            if isinstance(e, FencedWrite):
                raise
            raise FencedWrite(str(e), hint=FENCED_HINT) from e

    return call
