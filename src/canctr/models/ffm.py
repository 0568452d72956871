"""FFM: Field-aware Factorization Machines (Juan, Zhuang, Chin, Lin, "Field-aware Factorization Machines
for CTR Prediction", RecSys 2016), as the official CAN code's `Model_FFM` (can-paper.md section 7).

    logit = w_0 + sum_f w_f + sum_{i<j} <v_{i, field j}, v_{j, field i}>
    fields [item, sum hist item, cate, sum hist cate]

No DNN, no user id. The linear term has per-id scalar weights; each id has a field-aware table row
[F-1, E] = [3, 18] (one latent vector per partner field), shared by the target and the history field of
the same vocabulary, and a history field is the sum of its rows over the sequence.

Follows the code in: fields, field order, LR term, sum pooling, [n, 3, 18] tables. Deviations: the history
sums are masked (the code adds the padding row, so outputs depend on batch padding; see dnn.py); the
category weights are sized by the category vocabulary (the code sizes `w_cate_var` with n_mid, which only
wastes rows); glorot init is taken over the [n, 3 * 18] table (TF's glorot over the code's 3-D shape is
about 4.6x narrower). The FFM paper's per-field instance normalisation and its FTRL-free AdaGrad
training are not used (Adam, as every model here).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.embedding import EmbeddingInit
from canctr.layers.interaction import ffm_interaction
from canctr.models._common import CODE_FIELDS, Field, FieldEmbeddings, LinearFeatures
from canctr.models.base import ModelOutput
from canctr.models.registry import register_model

FFM_FIELDS: tuple[Field, ...] = ("item", "hist_item", "cate", "hist_cate")  # the code's order


@dataclass
class FFMConfig:
    embed_dim: int = 18  # the code's EMBEDDING_DIM
    init: EmbeddingInit = "glorot"


@register_model(
    "ffm",
    config=FFMConfig,
    paper="Field-aware Factorization Machines for CTR Prediction (Juan et al., RecSys 2016)",
    description="LR + field-aware FM over [item, sum hist item, cate, sum hist cate] (CAN code's Model_FFM); no DNN",
)
class FFM(nn.Module):
    def __init__(self, schema: Schema, config: FFMConfig) -> None:
        super().__init__()
        self.partners = len(FFM_FIELDS) - 1  # F - 1 latent vectors per id
        self.field_aware = FieldEmbeddings(schema, FFM_FIELDS, self.partners * config.embed_dim, config.init)
        self.linear = LinearFeatures(schema, CODE_FIELDS, config.init)

    def logit(self, batch: Batch) -> Tensor:
        """LR + FFM terms [B] (DeepFFM adds its DNN logit to this)."""
        fields = self.field_aware(batch).unflatten(-1, (self.partners, -1))  # [B, F, F-1, E]
        return self.linear(batch) + ffm_interaction(fields)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.logit(batch))
