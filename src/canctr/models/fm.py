"""FM: Factorization Machines (Rendle, "Factorization Machines", ICDM 2010).

    logit = w_0 + sum_f w_f + sum_{i<j} <v_i, v_j>   over every sparse field of the spec

No DNN. Fields are taken in the MLP-input order of models/features.py ([user, item, cate, hist item,
hist cate] in the public layout). Sequence fields are the pooled ids of the sequence: their FM input
values x are 1/len each ("mean", default), as the FM paper normalises the implicit "other movies rated"
block of its Fig. 1 to sum to 1, or 1 each ("sum"); the same pooled values enter the linear and the
pairwise terms. Fields sharing a table (target and history ids) share one embedding row and one weight
(the CAN code's convention; the FM paper would give the history block its own features). Dense fields
are not used (the model zoo's convention: dense features enter the models that have an MLP).

Follows the FM paper, not the official code: the code's `Model_FM` adds a [B] LR term to a [B, 1] FM
term, which broadcasts to [B, B], and sizes its category weights with the item count; it is also not in
the paper's tables. Differences from a literal FM over one-hot/multi-hot features: pairs inside the same
sequence field are left out (they are constant in the target, so they only shift a user's bias), and the
user id is a feature, which the code's FM family omits. Embeddings 18-dim, glorot init (code defaults).
Padding never enters (masked pooling).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.embedding import EmbeddingInit
from canctr.layers.interaction import fm_interaction
from canctr.models.base import ModelOutput
from canctr.models.features import FeatureEmbeddings, LinearFeatures, Pool
from canctr.models.registry import register_model


@dataclass
class FMConfig:
    embed_dim: int = 18  # the code's EMBEDDING_DIM
    init: EmbeddingInit = "glorot"
    hist_pool: Pool = "mean"  # FM paper: normalised implicit feedback; "sum" = the code's pooling


@register_model(
    "fm",
    config=FMConfig,
    paper="Factorization Machines (Rendle, ICDM 2010)",
    description="LR + FM over every sparse field (sequences pooled); no DNN",
)
class FM(nn.Module):
    def __init__(self, schema: Schema, config: FMConfig) -> None:
        super().__init__()
        self.pool = config.hist_pool
        self.embed = FeatureEmbeddings(schema, config.embed_dim, config.init)
        self.fields = self.embed.roles.inputs
        self.linear = LinearFeatures(schema, self.fields, config.init, config.hist_pool)

    def forward(self, batch: Batch) -> ModelOutput:
        fields = self.embed(batch).view(self.fields, self.pool)  # [B, F, E]
        return ModelOutput(logits=self.linear(batch) + fm_interaction(fields))
