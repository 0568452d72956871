"""DNN ("Embedding & MLP"), the base of the CAN paper's Table 2/3 (Bian et al., WSDM 2022, arXiv 2011.05625).

Input (official `Model_DNN`, the paper's eq. 1):
    x = [other categorical fields, target fields, sum of each key sequence, sum of each other sequence,
         dense fields] (+ feature blocks) -> MLP -> logit
which for the public layout is [e_uid, e_mid, e_cat, sum_t e_hist_mid, sum_t e_hist_cat], 90 dims with
18-dim embeddings, and the head BN(inference) -> 200 PReLU -> 80 PReLU -> 1. Fields and widths come from
the feature spec (models/features.py).

Follows the official code in: embedding size, glorot init, the head (its BatchNorm is the learnable
affine map it effectively is). Deviation: the code's history sum is unmasked (it adds the learned
padding row once per padded slot, so a sample's output depends on how wide its batch was padded); we
sum valid positions only, so padding and batch composition never change outputs.

`blocks` (see registry.FeatureBlock) append extra features to the MLP input: CAN-DNN is this backbone
with the co-action block, Cartesian with the Cartesian block (models/composed.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.models.base import BackboneConfig, ModelOutput, head
from canctr.models.features import Embedded, FeatureEmbeddings
from canctr.models.registry import FeatureBlock, register_model


@dataclass
class DNNConfig(BackboneConfig):
    """All fields from BackboneConfig (embed_dim 18, mlp (200, 80), prelu, affine norm, glorot)."""


@register_model(
    "dnn",
    config=DNNConfig,
    paper="Embedding&MLP baseline as in CAN (Bian et al., WSDM 2022) Table 2/3",
    description="[fields, masked sums of the sequences, dense] -> MLP",
)
class DNN(nn.Module):
    shares_user_side = True  # takes a user-shared batch (Batch.user): the user's fields are looked up once

    def __init__(self, schema: Schema, config: DNNConfig, blocks: Sequence[FeatureBlock] = ()) -> None:
        super().__init__()
        self.embed = FeatureEmbeddings(schema, config.embed_dim, config.init)
        self.blocks = nn.ModuleList(b.build(schema, config, self.embed) for b in blocks)
        self.mlp = head(config, self.embed.input_dim + sum(b.out_dim for b in self.blocks))

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.dnn_logit(batch, self.embed(batch, shared=True)))

    def dnn_logit(self, batch: Batch, e: Embedded) -> Tensor:
        """The MLP's logit [B]; models that add terms to it (DeepFM, xDeepFM, Wide&Deep) reuse `e`."""
        return self.mlp(e.inputs(extra=[b(batch) for b in self.blocks])).squeeze(-1)
