"""PNN: Product-based Neural Network (Qu et al., "Product-based Neural Networks for User Response
Prediction", ICDM 2016), in the form of the official CAN code's `Model_PNN` (can-paper.md section 7).

    fields = [item, cate, mean hist item, mean hist cate]            4 x 18, the DNN's own embeddings
    p      = 6 inner products <f_i, f_j> || 6 kernel products f_i^T W_ij f_j     over the pairs i < j
    x      = [e_uid, item_eb, sum hist, p] (90 + 12) -> BN(inference) -> 200 -> 80 -> 1, PReLU

Follows the code: the four fields and their shared (DNN) embeddings, the kernel W [18, 6, 18] (its
`pnn_var`, glorot), the products concatenated to the DNN input, the head. `product` picks the paper's
variants: "inner" (IPNN), "outer" (OPNN, here the code's per-pair kernel product), "both" (the code; the
paper's PNN* also concatenates the two).
Differs from the paper, whose first hidden layer is l_1 = relu(W_z . z + W_p . p + b_1), i.e. a Linear over
[z, p] as here, but with IPNN's weights on p factorised (theta theta^T, for speed) and OPNN's p the
superposed outer product (sum_i f_i)(sum_j f_j)^T; the code (followed here) weighs every pair's value
with a full first Linear and uses the per-pair kernel product for "outer".
Deviation from the code: the history means are over VALID positions.
The code's `reduce_mean` averages over the padded width, padding rows included, a padding bug that
makes a sample's fields depend on how wide its batch was padded (and the history sum is unmasked, see
dnn.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.product import Product, ProductLayer
from canctr.models._common import CODE_FIELDS, BackboneConfig, BehaviourEmbeddings, embedded_fields, head
from canctr.models.base import ModelOutput
from canctr.models.registry import register_model


@dataclass
class PNNConfig(BackboneConfig):
    product: Product = "both"  # "inner" = IPNN, "outer" = OPNN (kernel product), "both" = the code


@register_model(
    "pnn",
    config=PNNConfig,
    paper="Product-based Neural Networks for User Response Prediction (Qu et al., ICDM 2016)",
    description="DNN input + inner and kernel products of [item, cate, mean hist item, mean hist cate]",
)
class PNN(nn.Module):
    def __init__(self, schema: Schema, config: PNNConfig) -> None:
        super().__init__()
        self.embed = BehaviourEmbeddings(schema, config.embed_dim, config.init)
        self.product = ProductLayer(len(CODE_FIELDS), config.embed_dim, product=config.product)
        base_dim = self.embed.user_dim + 2 * self.embed.item_dim  # 90
        self.mlp = head(config, base_dim + self.product.out_dim)  # + 12

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        products = self.product(embedded_fields(e, pool="mean"))  # [B, 12] from fields [B, 4, E]
        x = torch.cat([e.user, e.target, e.hist_sum, products], dim=-1)
        return ModelOutput(logits=self.mlp(x).squeeze(-1))
