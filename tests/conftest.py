"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder (/work/shared/data); tests read it in place and never copy it here."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir() and os.environ.get("CANCTR_SHARED_DATA"):
        path = Path(os.environ["CANCTR_SHARED_DATA"])
    if not path.is_dir():
        pytest.skip("shared data folder not found (set CANCTR_SHARED_DATA)")
    return path
