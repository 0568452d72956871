"""DIEN: Deep Interest Evolution Network (Zhou et al., "Deep Interest Evolution Network for Click-Through
Rate Prediction", AAAI 2019), in the form of the CAN code's `Model_DIEN` (can-paper.md 7, DIEN row).

    states = GRU(36)([hist_item || hist_cate])                       interest extractor, [B, L, 36]
    aux    = auxiliary loss: states[t] vs (hist[t+1], negative[t+1])  training only, weight aux_weight
    a      = softmax attention of PReLU(Linear(item_eb)) over states  [B, L]
    h_T    = AUGRU(36)(states, a), state at the last valid position   interest evolution
    x      = [e_uid, item_eb, sum hist, item_eb * sum hist, h_T] (+ cross features) -> MLP with Dice

Follows the official code in: sizes (embedding 18, hidden 36), the query projection + softmax
attention, the TF-convention AUGRU (`augru_form="code"`; "paper" gives DIEN's eq. (6)), the auxiliary
network and weight 1, Dice in the head. Deviations: history sums are masked (see dnn.py); the auxiliary
loss averages over valid (t, t+1) pairs rather than all padded slots; Dice uses running statistics in eval
mode; the extractor is torch's nn.GRU (reset gate after the recurrent matmul; TF's GRUCell applies it
before). The code draws 5 negatives per position and uses the first; batches carry one.

`cross_features` is the extension point CAN-DIEN uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.attention import TargetAttention
from canctr.layers.sequence import AUGRU, AuxiliaryLoss, InterestExtractor
from canctr.models._common import BackboneConfig, BehaviourEmbeddings, head
from canctr.models.base import ModelOutput
from canctr.models.registry import register_model


@dataclass
class DIENConfig(BackboneConfig):
    activation: Literal["prelu", "dice"] = "dice"
    hidden_dim: int = 36  # HIDDEN_SIZE of both GRUs (= 2 x embed_dim in the code)
    aux_weight: float = 1.0  # weight of the auxiliary loss in ModelOutput.aux_losses["aux"]
    augru_form: Literal["code", "paper"] = "code"


@register_model(
    "dien",
    config=DIENConfig,
    paper="Deep Interest Evolution Network for Click-Through Rate Prediction (Zhou et al., AAAI 2019)",
    description="GRU interest extractor + auxiliary loss, attention, AUGRU interest evolution -> MLP with Dice",
)
class DIEN(nn.Module):
    def __init__(self, schema: Schema, config: DIENConfig) -> None:
        super().__init__()
        self.aux_weight = config.aux_weight
        self.embed = BehaviourEmbeddings(schema, config.embed_dim, config.init)
        d, H = self.embed.item_dim, config.hidden_dim
        self.extractor = InterestExtractor(d, H)
        self.aux_loss = AuxiliaryLoss(H, d, norm=config.norm)
        self.attention = TargetAttention(H, query_dim=d, softmax=True)
        self.evolution = AUGRU(H, H, form=config.augru_form)
        self.cross = nn.ModuleList(self.cross_features(schema, config))
        base_dim = self.embed.user_dim + 3 * d + H  # 18 + 3 * 36 + 36 = 162
        self.mlp = head(config, base_dim + sum(f.out_dim for f in self.cross))

    def cross_features(self, schema: Schema, config: DIENConfig) -> list[nn.Module]:
        """Modules batch -> [B, out_dim] appended to the MLP input; none for the plain DIEN."""
        return []

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        states = self.extractor(e.hist, e.mask)  # [B, L, H]
        aux_losses = {}
        if self.training:
            negative = self.embed.items(batch.neg_hist_item, batch.neg_hist_cate)  # [B, L, 2E]
            aux_losses["aux"] = self.aux_weight * self.aux_loss(states, e.hist, negative, e.mask)
        weights, _ = self.attention(e.target, states, e.mask)  # [B, L]
        final = self.evolution(states, weights, e.mask)  # [B, H]
        x = torch.cat(
            [e.user, e.target, e.hist_sum, e.target * e.hist_sum, final, *(f(batch) for f in self.cross)], dim=-1
        )
        return ModelOutput(logits=self.mlp(x).squeeze(-1), aux_losses=aux_losses)
