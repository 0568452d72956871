"""Schema-agnostic tensor-to-tensor building blocks (embeddings, MLP head, co-action, attention, GRUs)."""

from canctr.layers.attention import TargetAttention
from canctr.layers.coaction import CoAction, CoActionConfig
from canctr.layers.embedding import embedding_table, masked_sum
from canctr.layers.mlp import MLP, Affine, BatchNorm, Dice, PReLU, glorot_linear, make_activation, make_norm
from canctr.layers.sequence import AUGRU, AuxiliaryLoss, InterestExtractor

__all__ = [
    "AUGRU",
    "MLP",
    "Affine",
    "AuxiliaryLoss",
    "BatchNorm",
    "CoAction",
    "CoActionConfig",
    "Dice",
    "InterestExtractor",
    "PReLU",
    "TargetAttention",
    "embedding_table",
    "glorot_linear",
    "make_activation",
    "make_norm",
    "masked_sum",
]
