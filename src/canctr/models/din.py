"""DIN: Deep Interest Network (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction",
KDD 2018), in the form of the DIEN/CAN code's `Model_DIN`.

x = [e_uid, item_eb, sum hist, item_eb * sum hist, attention-pooled hist] -> MLP with Dice, where
item_eb = e_item || e_cate (36) is the attention query and the history's (item || cate) embeddings are
the keys; the activation unit is MLP([q, k, q - k, q * k]) -> 80 -> 40 -> 1 with sigmoid units.

Follows the official code in: the inputs, the sigmoid activation unit, Dice in the head, and
softmax-normalised scores (`attention_softmax=True`; the DIN paper uses raw scores: set it False).
Deviations: history sums are masked (see dnn.py), and Dice uses running statistics in eval mode (see
layers/mlp.py), so outputs never depend on padding or batch-mates at evaluation.

`cross_features` is the extension point CAN-DIN uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.attention import TargetAttention
from canctr.models._common import BackboneConfig, BehaviourEmbeddings, head
from canctr.models.base import ModelOutput
from canctr.models.registry import register_model


@dataclass
class DINConfig(BackboneConfig):
    activation: Literal["prelu", "dice"] = "dice"
    attention_softmax: bool = True  # code: softmax over valid positions; DIN paper: raw scores


@register_model(
    "din",
    config=DINConfig,
    paper="Deep Interest Network for Click-Through Rate Prediction (Zhou et al., KDD 2018)",
    description="target attention over the history (DIEN/CAN code's Model_DIN) -> MLP with Dice",
)
class DIN(nn.Module):
    def __init__(self, schema: Schema, config: DINConfig) -> None:
        super().__init__()
        self.embed = BehaviourEmbeddings(schema, config.embed_dim, config.init)
        d = self.embed.item_dim
        self.attention = TargetAttention(d, softmax=config.attention_softmax)
        self.cross = nn.ModuleList(self.cross_features(schema, config))
        base_dim = self.embed.user_dim + 4 * d  # 18 + 4 * 36 = 162
        self.mlp = head(config, base_dim + sum(f.out_dim for f in self.cross))

    def cross_features(self, schema: Schema, config: DINConfig) -> list[nn.Module]:
        """Modules batch -> [B, out_dim] appended to the MLP input; none for the plain DIN."""
        return []

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        _, interest = self.attention(e.target, e.hist, e.mask)  # [B, 2E]
        x = torch.cat(
            [e.user, e.target, e.hist_sum, e.target * e.hist_sum, interest, *(f(batch) for f in self.cross)], dim=-1
        )
        return ModelOutput(logits=self.mlp(x).squeeze(-1))
