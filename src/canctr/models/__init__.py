"""Models: one file per model; importing this package registers them all.

Build one with `create_model(name, schema, config)`; `list_models()` lists the registered entries.
"""

from canctr.models import can_cartesian, can_dien, can_dnn, cartesian, dien, din, dnn  # noqa: F401  (registration)
from canctr.models import deepffm  # noqa: F401
from canctr.models import deepfm  # noqa: F401
from canctr.models import ffm  # noqa: F401
from canctr.models import fm  # noqa: F401
from canctr.models import wide_deep  # noqa: F401
from canctr.models import xdeepfm  # noqa: F401
from canctr.models import can_din  # noqa: F401
from canctr.models import dcn_v2  # noqa: F401
from canctr.models import ncf  # noqa: F401
from canctr.models import onn  # noqa: F401
from canctr.models import pnn  # noqa: F401
from canctr.models.base import ModelOutput
from canctr.models.registry import create_model, get_entry, list_models, make_config

__all__ = ["ModelOutput", "create_model", "get_entry", "list_models", "make_config"]
