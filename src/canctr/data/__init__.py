"""Data: raw public formats -> pre-encoded arrays + schema.json (prepare), and typed batches (load).

The names below load on first use, so that `canctr prepare` (numpy only) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Batch": "batch", "BatchLoader": "batch", "load_split": "batch", "ARRAY_SPECS": "schema", "Schema": "schema"
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # noqa: ANN401 (PEP 562 lazy attribute)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"canctr.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'canctr.data' has no attribute {name!r}")
