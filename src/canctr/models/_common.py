"""Pieces shared by the models: the base config, the batch embeddings, and the two cross-feature blocks
(CAN co-action, Cartesian pair ids) that CAN-DNN / CAN-DIEN / Cartesian add to their backbones.

Notation: B batch, L history width, E embedding dim (18), P induction dim, D feed dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.coaction import CoAction, CoActionConfig
from canctr.layers.embedding import EmbeddingInit, embedding_table, masked_sum
from canctr.layers.mlp import MLP, Norm


@dataclass
class BackboneConfig:
    """Fields every model shares; defaults from the official code (`train.py`, `build_fcn_net`)."""

    embed_dim: int = 18  # EMBEDDING_DIM
    mlp: tuple[int, ...] = (200, 80)  # final MLP hidden sizes (then Linear -> 1 logit)
    activation: Literal["prelu", "dice"] = "prelu"
    norm: Norm = "affine"  # the code's always-inference BatchNorm; "batchnorm" = a real BN
    init: EmbeddingInit = "glorot"  # TF1 default; "normal" = the paper's N(0, 0.01)


def head(config: BackboneConfig, in_dim: int) -> MLP:
    """The final MLP producing one logit per sample: [..., in_dim] -> [..., 1]."""
    return MLP(in_dim, config.mlp, activation=config.activation, norm=config.norm)


@dataclass
class Embedded:
    """Ordinary (representation) embeddings of one batch."""

    user: Tensor  # [B, E]
    target: Tensor  # [B, 2E] target item || target cate ("item_eb" in the code)
    hist: Tensor  # [B, L, 2E] history item || history cate
    hist_sum: Tensor  # [B, 2E] sum over VALID positions (the code's sum also adds the padding rows)
    mask: Tensor  # [B, L] bool


class BehaviourEmbeddings(nn.Module):
    """user / item / cate tables of width E; history and negative ids share the target's tables."""

    def __init__(self, schema: Schema, dim: int, init: EmbeddingInit) -> None:
        super().__init__()
        self.user = embedding_table(schema.n_user, dim, init)
        self.item = embedding_table(schema.n_item, dim, init)
        self.cate = embedding_table(schema.n_cate, dim, init)
        self.user_dim = dim
        self.item_dim = 2 * dim  # an item is represented as item id || category id

    def items(self, item: Tensor, cate: Tensor) -> Tensor:
        """ids [...] -> [..., 2E]."""
        return torch.cat([self.item(item), self.cate(cate)], dim=-1)

    def forward(self, batch: Batch) -> Embedded:
        mask = batch.mask
        hist = self.items(batch.hist_item, batch.hist_cate)
        return Embedded(
            user=self.user(batch.user),
            target=self.items(batch.item, batch.cate),
            hist=hist,
            hist_sum=masked_sum(hist, mask),
            mask=mask,
        )


# co-action pair name -> (target id field = induction side, history id field = feed side, vocab size field)
COACTION_PAIRS: dict[str, tuple[str, str, str]] = {
    "item": ("item", "hist_item", "n_item"),
    "cate": ("cate", "hist_cate", "n_cate"),
}


@dataclass
class CoActionFeaturesConfig(CoActionConfig):
    """The co-action unit's config plus which (target -> history) pairs get one; the code uses both."""

    pairs: tuple[Literal["item", "cate"], ...] = ("item", "cate")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.pairs or len(set(self.pairs)) != len(self.pairs):
            raise ValueError(f"coaction.pairs must be non-empty and distinct, got {self.pairs}")


class CoActionFeatures(nn.Module):
    """CAN's cross features: for each pair, CoAction(induction[target id], feed[history ids]).

    Parameter independence (WSDM 4.4): every pair owns an induction table [n, P] and a feed table [n, D],
    separate from the representation embeddings. Output: the pairs' unit outputs concatenated,
    [B, len(pairs) * out_dim] (2 x 36 = 72 by default).
    """

    def __init__(self, schema: Schema, config: CoActionFeaturesConfig, init: EmbeddingInit) -> None:
        super().__init__()
        self.unit = CoAction(config)
        self.pairs = config.pairs
        sizes = {p: getattr(schema, COACTION_PAIRS[p][2]) for p in self.pairs}
        self.induction = nn.ModuleDict({p: embedding_table(n, self.unit.induction_dim, init) for p, n in sizes.items()})
        self.feed = nn.ModuleDict({p: embedding_table(n, self.unit.feed_dim, init) for p, n in sizes.items()})
        self.out_dim = len(self.pairs) * self.unit.out_dim

    def forward(self, batch: Batch) -> Tensor:
        mask = batch.mask
        features = []
        for p in self.pairs:
            target_field, hist_field, _ = COACTION_PAIRS[p]
            induction = self.induction[p](getattr(batch, target_field))  # [B, P]
            feed = self.feed[p](getattr(batch, hist_field))  # [B, L, D]
            features.append(self.unit(induction, feed, mask))
        return torch.cat(features, dim=-1)


class CartesianFeatures(nn.Module):
    """The Cartesian-product baseline's cross features: masked sums of E-dim embeddings of the
    (target item, history item) and (target cate, history cate) pair ids -> [B, 2E]. Id 0 = unseen pair."""

    def __init__(self, schema: Schema, dim: int, init: EmbeddingInit) -> None:
        super().__init__()
        self.item_pair = embedding_table(schema.n_item_pair, dim, init)
        self.cate_pair = embedding_table(schema.n_cate_pair, dim, init)
        self.out_dim = 2 * dim

    def forward(self, batch: Batch) -> Tensor:
        mask = batch.mask
        return torch.cat(
            [
                masked_sum(self.item_pair(batch.hist_item_pair), mask),
                masked_sum(self.cate_pair(batch.hist_cate_pair), mask),
            ],
            dim=-1,
        )
