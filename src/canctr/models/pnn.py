"""PNN: Product-based Neural Network (Qu et al., "Product-based Neural Networks for User Response
Prediction", ICDM 2016), in the form of the official CAN code's `Model_PNN`.

    fields = the FM family's field view (Roles.view), sequences mean-pooled, the DNN's own embeddings;
             in the public layout [item, cate, mean hist item, mean hist cate], 4 x 18
    p      = inner products <f_i, f_j> || kernel products f_i^T W_ij f_j over the pairs i < j (6 + 6)
    x      = [DNN input, p] (90 + 12 in the public layout) -> BN(inference) -> 200 -> 80 -> 1, PReLU

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

from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.product import Product, ProductLayer
from canctr.models.base import BackboneConfig, ModelOutput, head
from canctr.models.features import FeatureEmbeddings
from canctr.models.registry import register_model


@dataclass
class PNNConfig(BackboneConfig):
    product: Product = "both"  # "inner" = IPNN, "outer" = OPNN (kernel product), "both" = the code


@register_model(
    "pnn",
    config=PNNConfig,
    paper="Product-based Neural Networks for User Response Prediction (Qu et al., ICDM 2016)",
    description="DNN input + inner and kernel products of the field view (target fields, mean-pooled keys)",
)
class PNN(nn.Module):
    def __init__(self, schema: Schema, config: PNNConfig) -> None:
        super().__init__()
        self.embed = FeatureEmbeddings(schema, config.embed_dim, config.init)
        self.fields = self.embed.roles.view
        self.product = ProductLayer(len(self.fields), config.embed_dim, product=config.product)
        self.mlp = head(config, self.embed.input_dim + self.product.out_dim)

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        products = self.product(e.view(self.fields, pool="mean"))  # fields [B, F, E] -> [B, pairs (x 2)]
        return ModelOutput(logits=self.mlp(e.inputs(extra=[products])).squeeze(-1))
