"""NCF: Neural Collaborative Filtering (He et al., "Neural Collaborative Filtering", WWW 2017), in the
form of the official CAN code's `Model_NCF` (can-paper.md section 7).

    mf    = [g_item * mean g_hist_item, g_cate * mean g_hist_cate]   separate 18-dim NCF tables, 36
    h     = MLP hidden layers on the DNN input [e_uid, item_eb, sum hist] (90) -> 200 -> 80, PReLU
    logit = Linear([h, mf])                                           mf joins after the 80-unit layer

This is the paper's NeuMF fusion (a GMF vector, element-wise products of separately embedded user and
item, concatenated with the last MLP layer before the output layer), with the user side represented by
the mean of its history, as the code does. Follows the code: separate GMF tables (glorot), the DNN
input and head (BN(inference), PReLU) and the late fusion. Differs from the paper: no user-id GMF, no
ReLU tower halving its widths, and no GMF / MLP pre-training (both parts train jointly from scratch).
Deviation from the code: the history means are over VALID positions (the code's `reduce_mean` averages
over the padded width, padding rows included, a padding bug; see dnn.py for the masked history sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.models._common import CODE_FIELDS, BackboneConfig, BehaviourEmbeddings, FieldEmbeddings, head
from canctr.models.base import ModelOutput
from canctr.models.registry import register_model


@dataclass
class NCFConfig(BackboneConfig):
    """All fields from BackboneConfig; the GMF tables have the representation's width (embed_dim)."""


@register_model(
    "ncf",
    config=NCFConfig,
    paper="Neural Collaborative Filtering (He et al., WWW 2017)",
    description="DNN with a GMF vector (target x mean history, own tables) joining before the output layer",
)
class NCF(nn.Module):
    def __init__(self, schema: Schema, config: NCFConfig) -> None:
        super().__init__()
        self.embed = BehaviourEmbeddings(schema, config.embed_dim, config.init)
        # [item, cate, hist_item, hist_cate] in the NCF tables, histories mean-pooled: [B, 4, E]
        self.gmf = FieldEmbeddings(schema, CODE_FIELDS, config.embed_dim, config.init, pool="mean")
        base_dim = self.embed.user_dim + 2 * self.embed.item_dim  # 90
        self.mlp = head(config, base_dim, late_dim=2 * config.embed_dim)

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        g = self.gmf(batch)
        mf = (g[:, :2] * g[:, 2:]).flatten(1)  # [item * hist_item, cate * hist_cate]: [B, 2E]
        x = torch.cat([e.user, e.target, e.hist_sum], dim=-1)
        return ModelOutput(logits=self.mlp(x, late=mf).squeeze(-1))
