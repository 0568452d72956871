"""DIEN: Deep Interest Evolution Network (Zhou et al., "Deep Interest Evolution Network for Click-Through
Rate Prediction", AAAI 2019), in the form of the CAN code's `Model_DIEN`.

    states = GRU(H)(keys)                                            interest extractor, [B, L, H]
    aux    = auxiliary loss: states[t] vs (keys[t+1], negative[t+1])  training only, weight aux_weight
    a      = softmax attention of PReLU(Linear(target)) over states   [B, L]
    h_T    = AUGRU(H)(states, a), state at the last valid position    interest evolution
    x      = [DNN input, target * pooled keys, h_T] (+ feature blocks) -> MLP with Dice

The target and keys are the spec's attention query and key fields (e_item || e_cate and the history's
item || cate, 36 wide, in the public layout, where x is 18 + 3 x 36 + 36 = 162 wide).

Follows the official code in: sizes (embedding 18, hidden 36), the query projection + softmax
attention, the TF-convention AUGRU (`augru_form="code"`; "paper" gives DIEN's eq. (6)), the auxiliary
network and weight 1, Dice in the head. Deviations: the history enters the MLP as its mean, not its sum
(`hist_pool`, see din.py; "sum" = the code); sequence sums are masked (see dnn.py); the auxiliary
loss averages over valid (t, t+1) pairs rather than all padded slots; Dice uses running statistics in eval
mode; the extractor is torch's nn.GRU (reset gate after the recurrent matmul; TF's GRUCell applies it
before). The code draws 5 negatives per position and uses the first; the loader draws one
(`needs_negatives`, see models/base.py).

Needs the spec's `attention`. `blocks` append features to the MLP input (CAN-DIEN, models/composed.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.attention import TargetAttention
from canctr.layers.sequence import AUGRU, AuxiliaryLoss, InterestExtractor
from canctr.models.base import BackboneConfig, ModelOutput, head
from canctr.models.features import FeatureEmbeddings, Pool, Roles
from canctr.models.registry import FeatureBlock, register_model


@dataclass
class DIENConfig(BackboneConfig):
    activation: Literal["prelu", "dice"] = "dice"
    hidden_dim: int = 36  # HIDDEN_SIZE of both GRUs (= 2 x embed_dim in the code)
    aux_weight: float = 1.0  # weight of the auxiliary loss in ModelOutput.aux_losses["aux"]; 0 = none
    augru_form: Literal["code", "paper"] = "code"
    hist_pool: Pool = "mean"  # the history in the MLP input ("mean", or "sum" = code); see models/din.py


@register_model(
    "dien",
    config=DIENConfig,
    paper="Deep Interest Evolution Network for Click-Through Rate Prediction (Zhou et al., AAAI 2019)",
    description="GRU interest extractor + auxiliary loss, attention, AUGRU interest evolution -> MLP with Dice",
)
class DIEN(nn.Module):
    # a user-shared batch (serving): the history's lookups, the interest extractor GRU and the AUGRU's input
    # projection run once per user; attention and the AUGRU's recurrence per candidate
    shares_user_side = True

    def __init__(self, schema: Schema, config: DIENConfig, blocks: Sequence[FeatureBlock] = ()) -> None:
        super().__init__()
        Roles.of(schema.spec).require_attention("DIEN")
        self.aux_weight = config.aux_weight
        self.embed = FeatureEmbeddings(schema, config.embed_dim, config.init)
        d, H = self.embed.key_dim, config.hidden_dim
        self.extractor = InterestExtractor(d, H)
        self.aux_loss = AuxiliaryLoss(H, d, norm=config.norm)
        self.attention = TargetAttention(H, query_dim=self.embed.target_dim, softmax=True)
        self.evolution = AUGRU(H, H, form=config.augru_form)
        self.hist_pool = config.hist_pool
        self.blocks = nn.ModuleList(b.build(schema, config, self.embed) for b in blocks)
        self.mlp = head(config, self.embed.input_dim + d + H + sum(b.out_dim for b in self.blocks))

    def needs_negatives(self) -> tuple[str, ...]:
        """The auxiliary loss compares each state with the next key and a sampled negative of its group."""
        return (self.embed.roles.group,) if self.aux_weight else ()

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch, shared=True)
        states = self.extractor(e.keys, e.mask)  # [B, L, H] (U rows on a user-shared batch)
        aux_losses = {}
        if self.training and self.aux_weight:
            keys = self.embed.roles.keys
            missing = [k for k in keys if k not in batch.negatives]
            if missing:
                raise ValueError(f"DIEN's auxiliary loss needs negatives of {missing}: build the loader with "
                                 "negatives=negative_groups(model) (or set aux_weight=0)")
            negative = torch.cat([self.embed.lookup(k, batch.negatives[k]) for k in keys], dim=-1)  # [B, L, K*E]
            aux_losses["aux"] = self.aux_weight * self.aux_loss(states, e.keys, negative, e.mask)
        rows, mask = e.rows_of(), e.by_group(e.mask)  # rows: the user of each candidate when states are per user
        weights, _ = self.attention(e.target, states, mask, rows=rows)  # [B, L]
        final = self.evolution(states, weights, mask, rows=rows)  # [B, H]
        pooled = e.by_group(e.key_pool(self.hist_pool))
        x = e.inputs(self.hist_pool, extra=[e.target * pooled, final, *(b(batch) for b in self.blocks)])
        return ModelOutput(logits=self.mlp(x).squeeze(-1), aux_losses=aux_losses)
