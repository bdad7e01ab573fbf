"""What the pool tests share: each test starts and ends with no configured pools."""

from __future__ import annotations

import pytest

from cdc import pool


@pytest.fixture(autouse=True)
def _fresh_pools():
    """Each test starts and ends with no configured pools in this process."""
    pool.close_all()
    pool._state = None
    yield
    pool.close_all()
    pool._state = None
