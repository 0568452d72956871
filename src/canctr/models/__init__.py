"""Models: one file per model, the composed CAN models in composed.py; importing this package registers them all.

Build one with `create_model(name, schema, config)`; `list_models()` lists the registered entries. Every
model takes its fields, roles and widths from `schema.spec` (models/features.py); feature blocks
(models/coaction_block.py, models/cartesian_block.py) compose with the backbones (registry.py).
"""

from canctr.models import (  # noqa: F401  (registration; composed imports the backbones it composes)
    composed,
    dcn_v2,
    deepffm,
    deepfm,
    dien,
    din,
    dnn,
    ffm,
    fm,
    ncf,
    onn,
    pnn,
    wide_deep,
    xdeepfm,
)
from canctr.models.base import ModelOutput, negative_groups
from canctr.models.registry import create_model, get_entry, list_models, make_config

__all__ = ["ModelOutput", "create_model", "get_entry", "list_models", "make_config", "negative_groups"]
