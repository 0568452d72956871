"""FFM: Field-aware Factorization Machines (Juan, Zhuang, Chin, Lin, "Field-aware Factorization Machines
for CTR Prediction", RecSys 2016), as the official CAN code's `Model_FFM`.

    logit = w_0 + sum_f w_f + sum_{i<j} <v_{i, field j}, v_{j, field i}>

No DNN. The fields are the FM family's field view (models/features.py, Roles.view); with attention each
query field is followed by its key sequence, the code's order [item, sum hist item, cate, sum hist cate]
in the public layout. The linear term has per-id scalar weights; each id has a field-aware table row
[F-1, E] (one latent vector per partner field), shared by the fields reading the same table, and a
sequence field is the sum of its rows over the valid positions. Dense fields are not used.

Follows the code in: fields, field order, LR term, sum pooling, [n, F-1, 18] tables. Deviations: the
sequence sums are masked (the code adds the padding row, so outputs depend on batch padding; see dnn.py);
the category weights are sized by the category vocabulary (the code sizes `w_cate_var` with n_mid, which
only wastes rows); glorot init is taken over the [n, (F-1) * 18] table (TF's glorot over the code's 3-D
shape is narrower). The FFM paper's per-field instance normalisation and its FTRL-free AdaGrad training
are not used (Adam, as every model here).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.data.spec import FeatureSpec
from canctr.layers.embedding import EmbeddingInit
from canctr.layers.interaction import ffm_interaction
from canctr.models.base import ModelOutput
from canctr.models.features import FieldEmbeddings, LinearFeatures, Roles
from canctr.models.registry import register_model


@dataclass
class FFMConfig:
    embed_dim: int = 18  # the code's EMBEDDING_DIM
    init: EmbeddingInit = "glorot"


def ffm_fields(spec: FeatureSpec) -> tuple[str, ...]:
    """The field view in FFM's order: each attention query field followed by its key (the code's order)."""
    roles = Roles.of(spec)
    if roles.keys:
        return tuple(name for pair in zip(roles.query, roles.keys, strict=True) for name in pair)
    return roles.view


@register_model(
    "ffm",
    config=FFMConfig,
    paper="Field-aware Factorization Machines for CTR Prediction (Juan et al., RecSys 2016)",
    description="LR + field-aware FM over the field view (CAN code's Model_FFM); no DNN",
)
class FFM(nn.Module):
    def __init__(self, schema: Schema, config: FFMConfig) -> None:
        super().__init__()
        fields = ffm_fields(schema.spec)
        self.partners = len(fields) - 1  # F - 1 latent vectors per id
        if self.partners < 1:
            raise ValueError("FFM needs at least two sparse fields")
        self.field_aware = FieldEmbeddings(schema, fields, self.partners * config.embed_dim, config.init)
        self.linear = LinearFeatures(schema, Roles.of(schema.spec).view, config.init)

    def logit(self, batch: Batch) -> Tensor:
        """LR + FFM terms [B] (DeepFFM adds its DNN logit to this)."""
        fields = self.field_aware(batch).unflatten(-1, (self.partners, -1))  # [B, F, F-1, E]
        return self.linear(batch) + ffm_interaction(fields)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.logit(batch))
