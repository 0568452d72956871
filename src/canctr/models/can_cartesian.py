"""CAN + Cartesian: the DNN backbone with both co-action and Cartesian pair-id features, the best row of
CAN's Table 2 (Bian et al., WSDM 2022, arXiv 2011.05625; the code's model type "CAN+Cartesion").

x = [DNN input (90), co-action (72), pair-id sums (36)] -> MLP (198 inputs). See can_dnn.py and
cartesian.py for the parts and their paper-vs-code choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from canctr.data.schema import Schema
from canctr.models._common import CartesianFeatures, CoActionFeatures, CoActionFeaturesConfig
from canctr.models.dnn import DNN, DNNConfig
from canctr.models.registry import register_model


@dataclass
class CANCartesianConfig(DNNConfig):
    coaction: CoActionFeaturesConfig = field(default_factory=CoActionFeaturesConfig)


@register_model(
    "can-cartesian",
    config=CANCartesianConfig,
    paper="CAN + Cartesian in CAN (Bian et al., WSDM 2022, arXiv 2011.05625) Table 2",
    description="DNN + co-action features + Cartesian pair-id features",
)
class CANCartesian(DNN):
    def cross_features(self, schema: Schema, config: CANCartesianConfig) -> list[nn.Module]:
        return [
            CoActionFeatures(schema, config.coaction, config.init, representation=self.embed),
            CartesianFeatures(schema, config.embed_dim, config.init),
        ]
