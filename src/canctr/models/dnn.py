"""DNN ("Embedding & MLP"), the base of the CAN paper's Table 2/3 (Bian et al., WSDM 2022, arXiv 2011.05625).

Input (official `Model_DNN`, can-paper.md 2.6):
    x = [e_uid, e_mid, e_cat, sum_t e_hist_mid, sum_t e_hist_cat] (+ cross features) -> MLP -> logit
with 18-dim embeddings (x is 90-dim) and the head BN(inference) -> 200 PReLU -> 80 PReLU -> 1.

Follows the official code in: embedding size, glorot init, the head (its BatchNorm is the learnable
affine map it effectively is). Deviation: the code's history sum is unmasked (it adds the learned
padding row once per padded slot, so a sample's output depends on how wide its batch was padded); we
sum valid positions only, so padding and batch composition never change outputs.

`cross_features` is the extension point that CAN-DNN and Cartesian use to append their features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.models._common import BackboneConfig, BehaviourEmbeddings, Embedded, head
from canctr.models.base import ModelOutput
from canctr.models.registry import register_model


@dataclass
class DNNConfig(BackboneConfig):
    """All fields from BackboneConfig (embed_dim 18, mlp (200, 80), prelu, affine norm, glorot)."""


@register_model(
    "dnn",
    config=DNNConfig,
    paper="Embedding&MLP baseline as in CAN (Bian et al., WSDM 2022) Table 2/3",
    description="[uid, item, cate, masked sum of history item/cate] -> MLP",
)
class DNN(nn.Module):
    def __init__(self, schema: Schema, config: DNNConfig) -> None:
        super().__init__()
        self.embed = BehaviourEmbeddings(schema, config.embed_dim, config.init)
        self.cross = nn.ModuleList(self.cross_features(schema, config))
        base_dim = self.embed.user_dim + 2 * self.embed.item_dim  # 18 + 36 + 36 = 90
        self.mlp = head(config, base_dim + sum(f.out_dim for f in self.cross))

    def cross_features(self, schema: Schema, config: DNNConfig) -> list[nn.Module]:
        """Modules batch -> [B, out_dim] appended to the MLP input; none for the plain DNN."""
        return []

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.dnn_logit(batch, self.embed(batch)))

    def dnn_logit(self, batch: Batch, e: Embedded) -> Tensor:
        """The MLP's logit [B]; models that add terms to it (DeepFM, xDeepFM, Wide&Deep) reuse `e`."""
        x = torch.cat([e.user, e.target, e.hist_sum, *(f(batch) for f in self.cross)], dim=-1)
        return self.mlp(x).squeeze(-1)
