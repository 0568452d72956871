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
        msg = f"real data folder not found at {path} (set CANCTR_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI always has ../shared/data: a missing folder is a failure, not a skip
        pytest.skip(msg)
    return path
