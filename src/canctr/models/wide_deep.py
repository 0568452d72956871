"""Wide & Deep (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016).

    logit = wide + deep
    wide = w_0 + sum of per-id weights over [user, item, cate, hist items, hist cates]
           (+ the cross-product ids (target item, hist item) and (target cate, hist cate) if wide_cross)
    deep = the DNN backbone's logit (`dnn.DNN`: [uid, item, cate, sum hist] -> 200 -> 80 -> 1)

Follows the paper, not the official code: `Model_WideDeep` (can-paper.md 2.10) does not construct
(it lacks `n_carte`) and its "wide" part is a dense layer over embeddings ([item_eb, hist sum,
item_eb * hist sum]), not a linear model over raw ids. The paper's wide part is a linear model over the
sparse ids plus cross-product transformations; its example AND(user_installed_app, impression_app) is
exactly our (target, history element) pair id, so the wide crosses are the Cartesian baseline's pair ids
(schema.n_item_pair / n_cate_pair, 0 = pair unseen in training) with a scalar weight each, summed over
the valid history positions; multi-hot history ids are summed likewise. Both parts are trained jointly
by one optimiser (Adam here; the paper uses FTRL with L1 for the wide part and AdaGrad for the deep).
"""

from __future__ import annotations

from dataclasses import dataclass

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.models._common import Field, LinearFeatures
from canctr.models.base import ModelOutput
from canctr.models.dnn import DNN, DNNConfig
from canctr.models.registry import register_model

WIDE_FIELDS: tuple[Field, ...] = ("user", "item", "cate", "hist_item", "hist_cate")
WIDE_CROSSES: tuple[Field, ...] = ("hist_item_pair", "hist_cate_pair")


@dataclass
class WideDeepConfig(DNNConfig):
    wide_cross: bool = True  # add the (target, history) cross-product ids to the wide part


@register_model(
    "wide-deep",
    config=WideDeepConfig,
    paper="Wide & Deep Learning for Recommender Systems (Cheng et al., DLRS 2016)",
    description="linear model over ids + (target, history) cross ids, plus the DNN logit",
)
class WideDeep(DNN):
    def __init__(self, schema: Schema, config: WideDeepConfig) -> None:
        super().__init__(schema, config)
        fields = WIDE_FIELDS + WIDE_CROSSES if config.wide_cross else WIDE_FIELDS
        self.wide = LinearFeatures(schema, fields, config.init)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.wide(batch) + self.dnn_logit(batch, self.embed(batch)))
