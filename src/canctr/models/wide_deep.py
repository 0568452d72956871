"""Wide & Deep (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016).

    logit = wide + deep
    wide = w_0 + sum of per-id weights over every sparse field (sequences: summed over valid positions)
           (+ the spec's Cartesian cross-product ids, one weight each, if wide_cross)
    deep = the DNN backbone's logit (`dnn.DNN`)

Follows the paper, not the official code: the code's `Model_WideDeep` does not construct (it lacks
`n_carte`) and its "wide" part is a dense layer over embeddings ([item_eb, hist sum, item_eb * hist sum]),
not a linear model over raw ids. The paper's wide part is a linear model over the sparse ids plus
cross-product transformations; its example AND(user_installed_app, impression_app) is exactly a
(target, history element) pair id, so the wide crosses are the Cartesian baseline's pair ids (the spec's
`cartesian` pairs, derived as in models/cartesian_block.py; 0 = a pair unseen in training) with a scalar
weight each, summed over the valid positions; multi-hot ids are summed likewise. A spec without
`cartesian` pairs has no crosses. Both parts are trained jointly by one optimiser (Adam here; the paper
uses FTRL with L1 for the wide part and AdaGrad for the deep).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.models.base import ModelOutput
from canctr.models.cartesian_block import CartesianBlock
from canctr.models.dnn import DNN, DNNConfig
from canctr.models.features import LinearFeatures
from canctr.models.registry import FeatureBlock, register_model


@dataclass
class WideDeepConfig(DNNConfig):
    wide_cross: bool = True  # add the spec's Cartesian cross-product ids to the wide part


@register_model(
    "wide-deep",
    config=WideDeepConfig,
    paper="Wide & Deep Learning for Recommender Systems (Cheng et al., DLRS 2016)",
    description="linear model over ids + the spec's Cartesian cross ids, plus the DNN logit",
)
class WideDeep(DNN):
    shares_user_side = False  # its own terms read one row per candidate

    def __init__(self, schema: Schema, config: WideDeepConfig, blocks: Sequence[FeatureBlock] = ()) -> None:
        super().__init__(schema, config, blocks)
        self.wide = LinearFeatures(schema, [f.name for f in schema.spec.sparse], config.init)
        use_cross = config.wide_cross and bool(schema.spec.cartesian)
        self.crosses = CartesianBlock(schema, 1, config.init) if use_cross else None  # [B, pairs] weights

    def forward(self, batch: Batch) -> ModelOutput:
        weights = self.wide.weights(batch).squeeze(-1)  # [B, F] per-field weights (sequences summed)
        if self.crosses is not None:
            weights = torch.cat([weights, self.crosses(batch)], dim=-1)  # + [B, pairs] summed cross weights
        return ModelOutput(logits=self.wide.term(weights) + self.dnn_logit(batch, self.embed(batch)))
