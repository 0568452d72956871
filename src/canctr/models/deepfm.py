"""DeepFM (Guo, Tang, Ye, Li, He, "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction", IJCAI 2017), as the official CAN code's `Model_DeepFM`.

    logit = Linear(3 -> 1)([DNN logit, FM term, LR term])
    FM over the field view (Roles.view: [item, cate, sum hist item, sum hist cate] in the public layout),
    on the DNN's own embeddings (shared, as DeepFM's "shared input"); LR = w_0 + per-id scalar weights over
    the same fields.

Composition: `dnn.DNN` (embeddings, BN(inference) -> 200 -> 80 -> 1) + `fm_interaction` on the field
view of the DNN's embeddings + `LinearFeatures` + the code's final dense layer `fm_fc` (glorot, zero bias).

Follows the code by default in the combination (`combine="dense"`): the paper sums the parts,
sigmoid(y_FM + y_DNN) with y_FM = LR + FM, where the code learns a weight per part; `combine="sum"` is
the paper's form. Deviation in the dense layer's init: the code's glorot weights have random signs, so a
part can enter with the wrong sign and take many Adam steps to flip (docs/model_zoo.md). We start it at
weights 1, bias 0, i.e. at the paper's sum, and let it learn the weighting from there
(`combine_init="glorot"` restores the code's). Like the code, the user id feeds only the DNN and the FM
uses no separate "FM embeddings". Deviation: sequence sums are masked (dnn.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.interaction import fm_interaction
from canctr.layers.mlp import glorot_linear
from canctr.models.base import ModelOutput
from canctr.models.dnn import DNN, DNNConfig
from canctr.models.features import LinearFeatures
from canctr.models.registry import FeatureBlock, register_model


@dataclass
class DeepFMConfig(DNNConfig):
    """DNNConfig's fields (the FM shares the DNN's embeddings, the LR weights use `init`), and how the
    three parts are combined: "dense" = the code's learned Linear(3 -> 1), "sum" = the paper's plain sum."""

    combine: Literal["dense", "sum"] = "dense"
    combine_init: Literal["sum", "glorot"] = "sum"  # "sum": weights 1, bias 0 (start at the paper's sum)


@register_model(
    "deepfm",
    config=DeepFMConfig,
    paper="DeepFM: A Factorization-Machine based Neural Network for CTR Prediction (Guo et al., IJCAI 2017)",
    description="Linear(3->1) over [DNN logit, FM and LR over the field view (target fields, summed keys)] (CAN code)",
)
class DeepFM(DNN):
    shares_user_side = False  # its own terms read one row per candidate

    def __init__(self, schema: Schema, config: DeepFMConfig, blocks: Sequence[FeatureBlock] = ()) -> None:
        super().__init__(schema, config, blocks)
        self.fields = self.embed.roles.view
        self.linear = LinearFeatures(schema, self.fields, config.init)
        self.combine = glorot_linear(3, 1) if config.combine == "dense" else None  # the code's `fm_fc`
        if self.combine is not None and config.combine_init == "sum":
            with torch.no_grad():
                self.combine.weight.fill_(1.0)

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        fm = fm_interaction(e.view(self.fields))
        parts = torch.stack([self.dnn_logit(batch, e), fm, self.linear(batch)], -1)
        if self.combine is None:
            return ModelOutput(logits=parts.sum(dim=-1))
        return ModelOutput(logits=self.combine(parts).squeeze(-1))  # [B, 3] -> [B]
