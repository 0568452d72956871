"""Shared pytest fixtures."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder (../shared/data beside the checkout); tests read it in place and never
    copy it here."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir() and os.environ.get("CANCTR_SHARED_DATA"):
        path = Path(os.environ["CANCTR_SHARED_DATA"])
    if not path.is_dir():
        msg = f"real data folder not found at {path} (set CANCTR_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI always has ../shared/data: a missing folder is a failure, not a skip
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def beauty_3000(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Beauty's first 3,000 users prepared (histories up to 20): 5,456 train / 544 test samples, the slice the
    multi-process tests train on."""
    from canctr.data.formats.sequences import prepare_sequences
    from canctr.data.samples import PrepareOptions

    src = shared_data / "amazon_beauty"
    d = tmp_path_factory.mktemp("beauty_3000")
    with gzip.open(src / "Beauty.txt.gz", "rt") as f:
        (d / "Beauty.txt").write_text("".join(next(f) for _ in range(3000)))
    prepare_sequences(d / "Beauty.txt", src / "Beauty_item2attributes.json.gz", d / "prepared",
                      PrepareOptions(max_len=20))
    return d / "prepared"
