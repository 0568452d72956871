"""CAN-DIEN: the DIEN backbone plus CAN co-action features (Bian et al., "CAN: Feature Co-Action Network
for Click-Through Rate Prediction", WSDM 2022, arXiv 2011.05625; the code's model type "CAN+DIEN").

x = [DIEN input (162), co-action(item -> history items) (36), co-action(cate -> history cates) (36)]
-> MLP with Dice, plus DIEN's auxiliary loss. The co-action block is the one CAN-DNN uses (see
can_dnn.py for its paper-vs-code choices); the backbone is dien.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from canctr.data.schema import Schema
from canctr.models._common import CoActionFeatures, CoActionFeaturesConfig
from canctr.models.dien import DIEN, DIENConfig
from canctr.models.registry import register_model


@dataclass
class CANDIENConfig(DIENConfig):
    coaction: CoActionFeaturesConfig = field(default_factory=CoActionFeaturesConfig)


@register_model(
    "can-dien",
    config=CANDIENConfig,
    paper="CAN: Feature Co-Action Network for CTR Prediction (Bian et al., WSDM 2022, arXiv 2011.05625)",
    description="DIEN + co-action features (item->hist items, cate->hist cates)",
)
class CANDIEN(DIEN):
    def cross_features(self, schema: Schema, config: CANDIENConfig) -> list[nn.Module]:
        return [CoActionFeatures(schema, config.coaction, config.init, representation=self.embed)]
