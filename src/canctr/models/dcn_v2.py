"""DCN-V2: Deep & Cross Network V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical
Lessons for Web-scale Learning to Rank Systems", WWW 2021).

    x0     = the DNN input (dnn.py; 90 wide in the public layout, W in general)
    cross  = 3 layers of x_{l+1} = x0 * (W_l x_l + b_l) + x_l, W_l full-rank [W, W] (or U_l V_l^T)
    stacked:  logit = MLP(cross(x0))                   BN(inference) -> 200 -> 80 -> 1, PReLU
    parallel: logit = Linear([MLP hidden(x0), cross(x0)])

Not in the CAN paper or its code; built on the same inputs, embeddings and head as the DNN baseline
(dnn.py, masked history sum) so the comparison isolates the cross network. Follows the paper in: the
cross layer (eq. 1), the optional low-rank W = U V^T (`rank`; eq. 2 without its mixture of experts and
inner non-linearity), the stacked and parallel structures (`structure`), glorot weights and zero biases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.product import CrossNetwork
from canctr.models.base import BackboneConfig, ModelOutput, head
from canctr.models.features import FeatureEmbeddings
from canctr.models.registry import register_model


@dataclass
class DCNV2Config(BackboneConfig):
    cross_layers: int = 3
    rank: int = 0  # 0: full-rank W_l; r > 0: W_l = U_l V_l^T with U_l, V_l [W, r]
    structure: Literal["stacked", "parallel"] = "stacked"  # cross then MLP, or both side by side


@register_model(
    "dcn-v2",
    config=DCNV2Config,
    paper="DCN V2: Improved Deep & Cross Network (Wang et al., WWW 2021)",
    description="cross network v2 (3 full-rank layers) over the DNN input, stacked with the MLP",
)
class DCNV2(nn.Module):
    def __init__(self, schema: Schema, config: DCNV2Config) -> None:
        super().__init__()
        self.embed = FeatureEmbeddings(schema, config.embed_dim, config.init)
        dim = self.embed.input_dim
        self.cross = CrossNetwork(dim, config.cross_layers, rank=config.rank)
        self.parallel = config.structure == "parallel"
        self.mlp = head(config, dim, late_dim=dim if self.parallel else 0)

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        x0 = e.inputs()
        logits = self.mlp(x0, late=self.cross(x0)) if self.parallel else self.mlp(self.cross(x0))
        return ModelOutput(logits=logits.squeeze(-1))
