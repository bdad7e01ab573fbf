"""What the planning tests share: a legacy tree whose tables refer to each other."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_db


@pytest.fixture
def fk_legacy(tmp_path: Path) -> Path:
    """tmp_path/legacy holding shop.db: five tables with foreign keys between them (one to a
    table that does not exist)."""
    legacy = tmp_path / "legacy"
    make_db(
        legacy / "shop.db",
        """
        CREATE TABLE customers(id INTEGER PRIMARY KEY);
        CREATE TABLE regions(id INTEGER PRIMARY KEY);
        CREATE TABLE orders(id INTEGER PRIMARY KEY,
            customer_id INTEGER REFERENCES customers(id), region_id INTEGER REFERENCES regions);
        CREATE TABLE lines(order_id INTEGER REFERENCES orders(id), n INTEGER);
        CREATE TABLE notes(order_id INTEGER REFERENCES ghosts(id));
    """,
    )
    return legacy
