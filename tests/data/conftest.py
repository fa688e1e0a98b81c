"""Fixtures for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets absent ({SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")
