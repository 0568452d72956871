"""Embedding tables and masked pooling.

Notation: B batch, L history length, D embedding dim, N table rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

EmbeddingInit = Literal["glorot", "normal"]

_deferred = False  # inside `deferred_tables()`: tables are made on the meta device, uninitialised


@contextmanager
def deferred_tables() -> Iterator[None]:
    """Tables built inside are [N, D] shapes on the meta device, no memory and no values: for tables that are
    allocated and initialised elsewhere, shard by shard (canctr/train/sharded.py). Each keeps its `init`."""
    global _deferred
    before, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = before


def embedding_table(num: int, dim: int, init: EmbeddingInit = "glorot") -> nn.Embedding:
    """An [N, D] table initialised as `init`.

    "glorot": TF1's default glorot_uniform over the [N, D] shape, U(±sqrt(6 / (N + D))). The official code
    gets this from `tf.get_variable` without an initializer, so big vocabularies start with tiny rows.
    "normal": the paper's N(0, 0.01), read as standard deviation 0.01.
    Row 0 (padding/unknown) is an ordinary learned row as in the official code; masks keep padding out.
    """
    if init not in ("glorot", "normal"):
        raise ValueError(f"unknown embedding init {init!r}; expected 'glorot' or 'normal'")
    if _deferred:
        table = nn.Embedding(num, dim, device="meta")
        table.init = init
        return table
    table = nn.Embedding(num, dim)
    table.init = init
    with torch.no_grad():
        if init == "glorot":
            bound = math.sqrt(6.0 / (num + dim))
            table.weight.uniform_(-bound, bound)
        else:
            table.weight.normal_(0.0, 0.01)
    return table


def init_rows(rows: Tensor, num: int, dim: int, init: EmbeddingInit, generator: torch.Generator) -> Tensor:
    """Fill `rows` (some rows of an [num, dim] table) in place with `embedding_table`'s distribution."""
    if init == "glorot":
        bound = math.sqrt(6.0 / (num + dim))
        return rows.uniform_(-bound, bound, generator=generator)
    return rows.normal_(0.0, 0.01, generator=generator)


def gather_rows(table: nn.Module, ids: Tensor) -> Tensor:
    """table(ids): ids [...] -> [..., D]. A table with dense gradients is read by index_select, whose backward
    (index_add_) accumulates the same rows in the same order as nn.Embedding's (bit for bit) but 3-4x faster
    on CPU for a history's 6,400-50,000 lookups (embedding_dense_backward adds one row per index as a tensor
    op). A sparse table (lazy Adam sets `sparse`), one with padding_idx / max_norm, or a stand-in that is no
    nn.Embedding (a sharded table's, canctr/train/sharded.py) goes through the module."""
    if not isinstance(table, nn.Embedding) or table.sparse or table.padding_idx is not None \
            or table.max_norm is not None:
        return table(ids)
    return table.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, table.embedding_dim)


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of x [B, L, D] over valid positions (mask [B, L] bool) -> [B, D].

    masked_fill rather than multiply, so whatever sits at padded positions (even inf) cannot leak in.
    """
    return x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)
