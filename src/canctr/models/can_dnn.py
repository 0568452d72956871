"""CAN-DNN: the DNN backbone plus CAN co-action features (Bian et al., "CAN: Feature Co-Action Network for
Click-Through Rate Prediction", WSDM 2022, arXiv 2011.05625; the code's model type "CAN").

x = [DNN input (90), co-action(target item -> history items) (36), co-action(target cate -> history
cates) (36)] -> MLP. Each pair has its own induction [n, 160] and feed [n, 16] tables (parameter
independence); other independence levels are off, as in the paper's public-data experiments.

Follows the official code (`gen_coaction`, "CAN config"): no micro-MLP biases, tanh on all but the last
layer, orders 1..3 concatenated (36 dims per pair, the paper's eq. 11 sums them), every layer's output
concatenated (WSDM eq. 9), per-element unit then masked sum over the history, glorot init. Each of these
is a `coaction.*` option (see `CoActionConfig`) for the paper's variants, as are the pairs, the induction
side and the independence levels (see `CoActionFeaturesConfig`). The DNN part is masked (see dnn.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from canctr.data.schema import Schema
from canctr.models._common import CoActionFeatures, CoActionFeaturesConfig
from canctr.models.dnn import DNN, DNNConfig
from canctr.models.registry import register_model


@dataclass
class CANDNNConfig(DNNConfig):
    coaction: CoActionFeaturesConfig = field(default_factory=CoActionFeaturesConfig)


@register_model(
    "can-dnn",
    config=CANDNNConfig,
    paper="CAN: Feature Co-Action Network for CTR Prediction (Bian et al., WSDM 2022, arXiv 2011.05625)",
    description="DNN + co-action features (item->hist items, cate->hist cates), 72 extra dims",
)
class CANDNN(DNN):
    def cross_features(self, schema: Schema, config: CANDNNConfig) -> list[nn.Module]:
        return [CoActionFeatures(schema, config.coaction, config.init, representation=self.embed)]
