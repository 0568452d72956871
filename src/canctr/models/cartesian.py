"""Cartesian: the DNN backbone plus embeddings of (target, history) pair ids, the pure-memorisation
baseline of CAN's Table 2 (Bian et al., WSDM 2022, arXiv 2011.05625; the code's model type "Cartesion").

x = [DNN input (90), masked sum of item-pair embeddings (18), masked sum of cate-pair embeddings (18)]
-> MLP. The pair tables have one 18-dim row per (target, history) pair seen in training
(schema.n_item_pair / n_cate_pair), id 0 = unseen pair. Follows the official code: the pair sums are
masked there too; the DNN part is masked here (see dnn.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from canctr.data.schema import Schema
from canctr.models._common import CartesianFeatures
from canctr.models.dnn import DNN, DNNConfig
from canctr.models.registry import register_model


@dataclass
class CartesianConfig(DNNConfig):
    """Same fields as DNNConfig; the pair embeddings use embed_dim and init."""


@register_model(
    "cartesian",
    config=CartesianConfig,
    paper="Cartesian-product baseline in CAN (Bian et al., WSDM 2022) Table 2",
    description="DNN + masked sums of (target item, hist item) and (target cate, hist cate) pair-id embeddings",
)
class Cartesian(DNN):
    def cross_features(self, schema: Schema, config: CartesianConfig) -> list[nn.Module]:
        return [CartesianFeatures(schema, config.embed_dim, config.init)]
