"""The Cartesian-product baseline's features as a block any backbone can take: one free embedding per
(induction id, feed id) combination seen in training, the pure-memorisation baseline of CAN's Table 2
(Bian et al., WSDM 2022, arXiv 2011.05625, sections 2 and 5.3; the code's model type "Cartesion").

For each of the spec's `cartesian` pairs the block derives the pair ids itself: key = induction index *
rows of the feed table + feed index, looked up with `torch.searchsorted` in the sorted keys seen in
training (a persistent int64 buffer); the id of a key is its rank + 1, and 0 is a pair unseen in training.
The keys are read from the prepared data (`store.load_pair_keys`) when the schema was loaded from it;
otherwise (a checkpoint rebuilt without its data) the buffer starts as zeros of the right size and
`load_state_dict` fills it. Under export (ONNX, TorchScript) the lookup is an unrolled binary search with
the same result (`_lower_bound`): ONNX has no searchsorted. The pair embeddings are masked-summed over the
sequence side (the official code masks these sums too); a pair of two categorical fields has one position.

Notation: B batch, L positions of the pair's sequence side, E embedding width.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.data.spec import Pair
from canctr.data.store import load_pair_keys, pair_keys_path
from canctr.layers.embedding import EmbeddingInit, embedding_table, gather_rows, masked_sum
from canctr.models.registry import FeatureBlock


def pair_ids(keys: Tensor, key: Tensor) -> Tensor:
    """Ids of pair keys `key` [...] in the sorted keys [K]: rank + 1 where found, else 0."""
    if keys.numel() == 0:
        return torch.zeros_like(key)
    exporting = torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    pos = _lower_bound(keys, key) if exporting else torch.searchsorted(keys, key)
    found = keys[pos.clamp(max=keys.numel() - 1)] == key
    return torch.where(found, pos + 1, torch.zeros_like(pos))


def _lower_bound(keys: Tensor, key: Tensor) -> Tensor:
    """torch.searchsorted(keys, key) (left) as m = bit_length(K) unrolled steps of a gather, a compare and a
    select (ONNX has no searchsorted; K is fixed per model, so m is a constant): pos counts the keys < key,
    grown by 2^(m-1), ..., 2, 1 where the key at pos + step - 1 is still smaller. The keys are padded to
    2^m with int64's maximum, which is never smaller than a key."""
    n = int(keys.shape[0])  # a constant of the model (a traced size is a tensor)
    m = n.bit_length()
    padded = torch.cat([keys, keys.new_full(((1 << m) - n,), torch.iinfo(keys.dtype).max)])  # [2^m]
    pos = torch.zeros_like(key)
    for j in range(m - 1, -1, -1):
        cand = pos + (1 << j)
        pos = torch.where(padded[cand - 1] < key, cand, pos)
    return pos


class CartesianPair(nn.Module):
    """One pair: its keys buffer and its [schema.pairs[name], E] table. batch -> [B, E]."""

    def __init__(self, schema: Schema, pair: Pair, dim: int, init: EmbeddingInit) -> None:
        super().__init__()
        spec = schema.spec
        self.name, self.induction, self.feed = pair.name, pair.induction, pair.feed
        self.feed_rows = schema.vocab[spec.field(pair.feed).table]
        count = schema.pairs[pair.name]
        keys = _stored_keys(schema, pair.name)
        if keys is None:
            keys = np.zeros(count - 1, dtype=np.int64)  # filled by load_state_dict
        elif keys.shape[0] != count - 1:
            raise ValueError(f"Cartesian pair {pair.name!r}: {keys.shape[0]} stored keys, schema.pairs says "
                             f"{count} ids (incl. 0)")
        self.register_buffer("keys", torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()))
        self.table = embedding_table(count, dim, init)
        sides = [spec.field(n) for n in (pair.induction, pair.feed)]
        self.group = next((f.group for f in sides if f.kind == "sequence"), None)

    def ids(self, batch: Batch) -> Tensor:
        """Pair ids [B, L] (or [B, 1] for two categorical fields); padded positions hold junk ids."""
        a, b = batch[self.induction], batch[self.feed]
        if a.dim() < b.dim():
            a = a.unsqueeze(1)
        elif b.dim() < a.dim():
            b = b.unsqueeze(1)
        key = a * self.feed_rows + b
        return pair_ids(self.keys, key if key.dim() == 2 else key.unsqueeze(1))

    def forward(self, batch: Batch) -> Tensor:
        x = gather_rows(self.table, self.ids(batch))  # [B, L, E]
        return x[:, 0] if self.group is None else masked_sum(x, batch.mask(self.group))


class CartesianBlock(nn.Module):
    """Pair-id embedding sums of the spec's `cartesian` pairs, concatenated: batch -> [B, len(pairs) * E]."""

    def __init__(self, schema: Schema, dim: int, init: EmbeddingInit) -> None:
        super().__init__()
        pairs = schema.spec.cartesian
        if not pairs:
            raise ValueError("Cartesian features need the feature spec's `cartesian` pairs; this spec has none")
        self.pairs = nn.ModuleList(CartesianPair(schema, p, dim, init) for p in pairs)
        self.out_dim = len(pairs) * dim

    def forward(self, batch: Batch) -> Tensor:
        batch = batch.expanded()  # a pair id joins a candidate's id with its user's: one row per candidate
        return torch.cat([p(batch) for p in self.pairs], dim=-1)


def _stored_keys(schema: Schema, name: str) -> np.ndarray | None:
    """The pair's keys from the prepared directory, or None when the schema has no data beside it (built in
    memory, or read from a checkpoint)."""
    if schema.root is None or not pair_keys_path(schema.root, name).exists():
        return None
    return load_pair_keys(schema.root, name)


def _build(schema: Schema, config, representation: nn.Module) -> CartesianBlock:  # noqa: ANN001
    return CartesianBlock(schema, config.embed_dim, config.init)


# the block as a backbone takes it: no config section, the pair embeddings use the model's embed_dim and init
CARTESIAN = FeatureBlock("cartesian", _build)

__all__ = ["CARTESIAN", "CartesianBlock", "CartesianPair", "pair_ids"]
