"""Models: one file per model; importing this package registers them all.

Build one with `create_model(name, schema, config)`; `list_models()` lists the registered entries.
"""

from canctr.models import (  # noqa: F401  (registration)
    can_cartesian,
    can_dien,
    can_din,
    can_dnn,
    cartesian,
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
from canctr.models.base import ModelOutput
from canctr.models.registry import create_model, get_entry, list_models, make_config

__all__ = ["ModelOutput", "create_model", "get_entry", "list_models", "make_config"]
