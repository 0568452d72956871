"""Schema-agnostic tensor-to-tensor building blocks (embeddings, MLP head, co-action, attention, GRUs,
FM-family interactions)."""

from canctr.layers.attention import TargetAttention
from canctr.layers.coaction import CoAction, CoActionConfig
from canctr.layers.embedding import embedding_table, masked_sum
from canctr.layers.interaction import CIN, LinearTerm, ffm_interaction, fm_interaction
from canctr.layers.mlp import MLP, Affine, BatchNorm, Dice, PReLU, glorot_linear, make_activation, make_norm
from canctr.layers.product import CrossNetwork, ProductLayer, pair_vectors
from canctr.layers.sequence import AUGRU, AuxiliaryLoss, InterestExtractor

__all__ = [
    "AUGRU",
    "CIN",
    "MLP",
    "Affine",
    "AuxiliaryLoss",
    "BatchNorm",
    "CoAction",
    "CoActionConfig",
    "CrossNetwork",
    "Dice",
    "InterestExtractor",
    "LinearTerm",
    "PReLU",
    "ProductLayer",
    "TargetAttention",
    "embedding_table",
    "ffm_interaction",
    "fm_interaction",
    "glorot_linear",
    "make_activation",
    "make_norm",
    "masked_sum",
    "pair_vectors",
]
