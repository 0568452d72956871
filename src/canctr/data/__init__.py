"""Data: raw public formats -> pre-encoded arrays + schema.json (prepare), and typed batches (load)."""

from canctr.data.batch import Batch, BatchLoader, load_split
from canctr.data.schema import ARRAY_SPECS, Schema

__all__ = ["ARRAY_SPECS", "Batch", "BatchLoader", "Schema", "load_split"]
