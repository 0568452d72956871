"""ONN: Operation-aware Neural Network (Yang et al., "Operation-aware Neural Networks for User Response
Prediction", arXiv 1904.12579, 2019; also called NFFM), in the form of the official CAN code's
`Model_ONN`.

    o      = the FM family's field view (Roles.view; [item, cate, mean hist item, mean hist cate] in the
             public layout) in own ONN tables of (F - 1) x 5 dims: each field keeps one 5-dim slice per
             partner field (operation awareness, as FFM's field awareness)
    p      = for the pairs i < j: <o_{i,j}, o_{j,i}> || o_{i,j}^T W_ij o_{j,i}    (6 + 6 in the public layout)
    x      = [DNN input with MEAN-pooled sequences (90, the ordinary embeddings), p]
             -> BN(inference) -> 200 -> 80 -> 1, PReLU

The paper's operation-aware embedding gives every feature one vector per operation it takes part in
(a "copy" into the MLP input and one product per partner field); the code (followed here) uses the
ordinary 18-dim embeddings as the copy part and 5-dim slices for the products, which are the inner and
kernel products of its PNN (`product` selects them, as in pnn.py). Follows the code: sizes, tables
(glorot), the MEAN-pooled history in both parts, the head. The code hands out the slices in a different
but equivalent order (a relabelling of the table's columns); we use FFM's: field i keeps its slice for
partner j at position j-1 if j > i, else j. Deviation from the code: the history means are over VALID
positions (the code's `reduce_mean` averages over the padded width, padding rows included, a padding
bug).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.product import Product, ProductLayer
from canctr.models.base import BackboneConfig, ModelOutput, head
from canctr.models.features import FeatureEmbeddings, FieldEmbeddings
from canctr.models.registry import register_model


@dataclass
class ONNConfig(BackboneConfig):
    operation_dim: int = 5  # per-partner slice (the code's `dim = 5`; a field's ONN row is (F - 1) x 5)
    product: Product = "both"  # inner and kernel products (the code); "inner" / "outer" for one of them


@register_model(
    "onn",
    config=ONNConfig,
    paper="Operation-aware Neural Networks for User Response Prediction (Yang et al., arXiv 1904.12579)",
    description="DNN input (mean-pooled sequences) + products of per-partner embedding slices of the field view",
)
class ONN(nn.Module):
    def __init__(self, schema: Schema, config: ONNConfig) -> None:
        super().__init__()
        self.embed = FeatureEmbeddings(schema, config.embed_dim, config.init)
        fields = self.embed.roles.view
        width = (len(fields) - 1) * config.operation_dim
        self.operations = FieldEmbeddings(schema, fields, width, config.init, pool="mean")  # [B, F, (F-1) * 5]
        self.product = ProductLayer(len(fields), config.operation_dim, product=config.product)
        self.mlp = head(config, self.embed.input_dim + self.product.out_dim)
        self.operation_dim = config.operation_dim

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        slices = self.operations(batch).unflatten(-1, (-1, self.operation_dim))  # [B, F, F-1, 5]
        products = self.product(slices)  # [B, pairs (x 2)]
        return ModelOutput(logits=self.mlp(e.inputs("mean", extra=[products])).squeeze(-1))
