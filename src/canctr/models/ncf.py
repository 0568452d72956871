"""NCF: Neural Collaborative Filtering (He et al., "Neural Collaborative Filtering", WWW 2017), in the
form of the official CAN code's `Model_NCF`.

    mf    = [g_q * mean g_k for each attention (query q, key k)]      separate E-dim NCF tables
    h     = MLP hidden layers on the DNN input (see dnn.py) -> 200 -> 80, PReLU
    logit = Linear([h, mf])                                           mf joins after the 80-unit layer

In the public layout mf = [g_item * mean g_hist_item, g_cate * mean g_hist_cate] (36) and the DNN input
is [e_uid, item_eb, sum hist] (90). A spec without attention has no history to stand for the user: the
GMF vector is then (sum of the target fields' g) * (sum of every other sparse field's g, sequences mean
pooled), E wide, NeuMF's p_u * q_i with the user side made of the user and context fields.

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

from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.models.base import BackboneConfig, ModelOutput, head
from canctr.models.features import FeatureEmbeddings, FieldEmbeddings
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
        self.embed = FeatureEmbeddings(schema, config.embed_dim, config.init)
        r = self.embed.roles
        # the target side and the user side of the GMF vector, in the NCF tables, sequences mean-pooled
        self.paired = bool(r.keys)
        users = r.keys if self.paired else r.others + r.bags
        if not r.query or not users:
            raise ValueError("NCF needs target fields (the spec's attention query, or item-side categorical fields) "
                             "and user-side fields to pair them with")
        self.n_target = len(r.query)
        self.gmf = FieldEmbeddings(schema, r.query + users, config.embed_dim, config.init, pool="mean")
        gmf_dim = config.embed_dim * (len(r.query) if self.paired else 1)
        self.mlp = head(config, self.embed.input_dim, late_dim=gmf_dim)

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        g = self.gmf(batch)  # [B, F, E]
        target, user = g[:, : self.n_target], g[:, self.n_target :]
        # paired: [item * hist_item, cate * hist_cate] [B, Q*E]; else sum(target) * sum(user) [B, E]
        mf = (target * user).flatten(1) if self.paired else target.sum(1) * user.sum(1)
        return ModelOutput(logits=self.mlp(e.inputs(), late=mf).squeeze(-1))
