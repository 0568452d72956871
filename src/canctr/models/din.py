"""DIN: Deep Interest Network (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction",
KDD 2018), in the form of the DIEN/CAN code's `Model_DIN`.

x = [DNN input, target * pooled keys, attention-pooled keys] -> MLP with Dice, where the target (the spec's
attention query fields, concatenated) queries the behaviour keys (the spec's attention keys, concatenated
per position); the activation unit is MLP([q, k, q - k, q * k]) -> 80 -> 40 -> 1 with sigmoid units. In
the public layout the target is e_item || e_cate (36) and x is 18 + 4 x 36 = 162 wide.

Follows the official code in: the input fields, the sigmoid activation unit, Dice in the head, and
softmax-normalised scores (`attention_softmax=True`; the DIN paper uses raw scores: set it False).
Deviations: the history enters the MLP as its mean (`hist_pool`, below), sequence sums are masked (see
dnn.py), and Dice uses running statistics in eval mode (see layers/mlp.py), so outputs never depend on
padding or batch-mates at evaluation.

`hist_pool` pools the sequences entering the MLP (the keys' pooled vector, also multiplied by the target,
and any other sequence): "mean" (the default) divides the masked sum by the valid length, "sum" is the
official code's. A sum grows with the history length, so on long histories (MovieLens-1M: 42 of at most 50
positions on average) those inputs start ~35x the size of the attention-pooled interest and dominate the
first few hundred steps. After 40k MovieLens-1M samples DIN reaches test AUC 0.629 with "sum" and 0.698
with "mean" (deepctr-torch 0.700); after a full epoch the two are level within noise (0.7298 ± 0.0027 vs
0.7288 ± 0.0023, 3 seeds), and on Beauty (short histories, ~8 positions) too (0.7155 ± 0.0011 sum,
0.7185 ± 0.0019 mean). Deviation from the code, then: "mean" is never worse and much better early on long
histories; `hist_pool=sum` reproduces the code's input exactly. benchmarks/results/auc_gap_ml1m_40k.md.

Needs the spec's `attention`. `blocks` append features to the MLP input (CAN-DIN, models/composed.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.attention import TargetAttention
from canctr.models.base import BackboneConfig, ModelOutput, head
from canctr.models.features import FeatureEmbeddings, Pool, Roles
from canctr.models.registry import FeatureBlock, register_model


@dataclass
class DINConfig(BackboneConfig):
    activation: Literal["prelu", "dice"] = "dice"
    attention_softmax: bool = True  # code: softmax over valid positions; DIN paper: raw scores
    hist_pool: Pool = "mean"  # the history in the MLP input (pooled keys, target x pooled keys); "sum" = code


@register_model(
    "din",
    config=DINConfig,
    paper="Deep Interest Network for Click-Through Rate Prediction (Zhou et al., KDD 2018)",
    description="target attention over the behaviour sequence (DIEN/CAN code's Model_DIN) -> MLP with Dice",
)
class DIN(nn.Module):
    shares_user_side = True  # a user-shared batch: the history is looked up and summed once per user

    def __init__(self, schema: Schema, config: DINConfig, blocks: Sequence[FeatureBlock] = ()) -> None:
        super().__init__()
        Roles.of(schema.spec).require_attention("DIN")
        self.embed = FeatureEmbeddings(schema, config.embed_dim, config.init)
        d = self.embed.key_dim  # = target_dim: query and key fields pair up, all E wide
        self.attention = TargetAttention(d, softmax=config.attention_softmax)
        self.hist_pool = config.hist_pool
        self.blocks = nn.ModuleList(b.build(schema, config, self.embed) for b in blocks)
        self.mlp = head(config, self.embed.input_dim + 2 * d + sum(b.out_dim for b in self.blocks))

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch, shared=True)
        _, interest = self.attention(e.target, e.keys, e.by_group(e.mask), rows=e.rows_of())  # [B, K*E]
        pooled = e.by_group(e.key_pool(self.hist_pool))
        x = e.inputs(self.hist_pool, extra=[e.target * pooled, interest, *(b(batch) for b in self.blocks)])
        return ModelOutput(logits=self.mlp(x).squeeze(-1))
