"""Data: raw public formats -> the ragged store + schema.json (prepare), and keyed batches (load).

    spec.py, schema.py   what a prepared dataset is (feature spec; schema.json)
    store.py             the on-disk layout (ragged columns), written by SplitWriter, read by read_split
    batch.py             Batch and BatchLoader (torch)
    formats/             one module per raw input format: reader(s) + defaults + prepare_<format>
    lines.py             raw line reading, DataFormatError and the bad-row policy shared by the readers
    chunks.py            block-parallel reading of big line files
    samples.py           timelines, targets, histories, the user split, sampled negative targets
    vocab.py             Interner (id strings -> codes) and Vocab (train-fitted codes -> indices)
    encode.py            encode + write: vocabularies, store, pair keys, schema.json
    summary.py           the lines `canctr prepare` prints
    random_data.py       random data of any spec (benchmarks)
    gen_amazon.py        a raw McAuley-format Amazon file of any size (`canctr bench`'s pipeline section)
    table.py             `canctr prepare table`: any Parquet / CSV / JSON-lines table under a spec

The names below load on first use, so that `canctr prepare` (numpy only; its argparse wiring is canctr.cli.data)
never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Batch": "batch", "BatchLoader": "batch", "load_split": "batch", "FeatureSpec": "spec", "Schema": "schema",
    "read_split": "store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # noqa: ANN401 (PEP 562 lazy attribute)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"canctr.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'canctr.data' has no attribute {name!r}")
