"""CAN-DIN: the DIN backbone plus CAN co-action features (Bian et al., "CAN: Feature Co-Action Network for
Click-Through Rate Prediction", WSDM 2022, arXiv 2011.05625, on DIN: Zhou et al., KDD 2018).

x = [DIN input (162), co-action(item -> history items) (36), co-action(cate -> history cates) (36)]
-> MLP with Dice. Not in the paper or its code, which put CAN on DNN and DIEN only; it completes the
grid, since DIN is DIEN without the GRUs and the auxiliary loss. The co-action block is the one CAN-DNN
uses (see can_dnn.py for its paper-vs-code choices and `CoActionFeaturesConfig` for the variants); the
backbone is din.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from canctr.data.schema import Schema
from canctr.models._common import CoActionFeatures, CoActionFeaturesConfig
from canctr.models.din import DIN, DINConfig
from canctr.models.registry import register_model


@dataclass
class CANDINConfig(DINConfig):
    coaction: CoActionFeaturesConfig = field(default_factory=CoActionFeaturesConfig)


@register_model(
    "can-din",
    config=CANDINConfig,
    paper="CAN (Bian et al., WSDM 2022, arXiv 2011.05625) on DIN (Zhou et al., KDD 2018)",
    description="DIN + co-action features (item->hist items, cate->hist cates)",
)
class CANDIN(DIN):
    def cross_features(self, schema: Schema, config: CANDINConfig) -> list[nn.Module]:
        return [CoActionFeatures(schema, config.coaction, config.init, representation=self.embed)]
