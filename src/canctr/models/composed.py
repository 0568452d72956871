"""The CAN paper's composed models: a backbone plus feature blocks, registered by composition
(registry.register_composite), not by subclassing. Bian et al., "CAN: Feature Co-Action Network for
Click-Through Rate Prediction", WSDM 2022, arXiv 2011.05625.

    can-dnn        DNN + co-action block       the code's model type "CAN"
    can-din        DIN + co-action block       not in the paper or its code; completes the grid
    can-dien       DIEN + co-action block      the code's "CAN+DIEN" (plus DIEN's auxiliary loss)
    cartesian      DNN + Cartesian block       the code's "Cartesion", Table 2's memorisation baseline
    can-cartesian  DNN + both blocks           the code's "CAN+Cartesion", Table 2's best row

Each config is the backbone's config plus a `coaction` section where the co-action block is present
(`--set coaction.orders=2`, `--set 'coaction.pairs=["item>hist_cate"]'`, see CoActionBlockConfig); the
Cartesian block uses the backbone's embed_dim and init. In the public layout the MLP input is DNN 90 +
co-action 72 (2 pairs x 36) = 162 for CAN-DNN, + 36 Cartesian = 126 / 198 for Cartesian / CAN+Cartesian,
DIN / DIEN 162 + 72 = 234 for CAN-DIN / CAN-DIEN (the official code's widths, inferred from its shapes).

The co-action block follows the official code (`gen_coaction`, "CAN config"): no micro-MLP biases,
tanh on all but the last layer, orders 1..3 concatenated (36 dims per pair, the paper's eq. 11 sums
them), every layer's output concatenated (eq. 9), the unit per position then a masked sum over the
sequence (eq. 10 as the text describes it), glorot init, parameter independence only (section 4.4). Each
of these is a `coaction.*` option for the paper's variants (layers.CoActionConfig, CoActionBlockConfig).
The Cartesian block follows the code too (pair sums masked there as well); see models/cartesian_block.py.
The backbones' own deviations from the code (masked sums, Dice in eval mode) are listed in dnn.py,
din.py and dien.py.
"""

from __future__ import annotations

from canctr.models import dien, din, dnn  # noqa: F401  (the backbones register first)
from canctr.models.cartesian_block import CARTESIAN
from canctr.models.coaction_block import COACTION
from canctr.models.registry import register_composite

CANDNNConfig = register_composite(
    "can-dnn", backbone="dnn", blocks=[COACTION], config_name="CANDNNConfig", module=__name__,
    paper="CAN: Feature Co-Action Network for CTR Prediction (Bian et al., WSDM 2022, arXiv 2011.05625)",
    description="DNN + co-action features of the spec's pairs (item->hist items, cate->hist cates)",
)
CANDINConfig = register_composite(
    "can-din", backbone="din", blocks=[COACTION], config_name="CANDINConfig", module=__name__,
    paper="CAN (Bian et al., WSDM 2022, arXiv 2011.05625) on DIN (Zhou et al., KDD 2018)",
    description="DIN + co-action features of the spec's pairs",
)
CANDIENConfig = register_composite(
    "can-dien", backbone="dien", blocks=[COACTION], config_name="CANDIENConfig", module=__name__,
    paper="CAN: Feature Co-Action Network for CTR Prediction (Bian et al., WSDM 2022, arXiv 2011.05625)",
    description="DIEN + co-action features of the spec's pairs",
)
CartesianConfig = register_composite(
    "cartesian", backbone="dnn", blocks=[CARTESIAN], config_name="CartesianConfig", module=__name__,
    paper="Cartesian-product baseline in CAN (Bian et al., WSDM 2022) Table 2",
    description="DNN + masked sums of the spec's Cartesian pair-id embeddings",
)
CANCartesianConfig = register_composite(
    "can-cartesian", backbone="dnn", blocks=[COACTION, CARTESIAN], config_name="CANCartesianConfig",
    module=__name__,
    paper="CAN + Cartesian in CAN (Bian et al., WSDM 2022, arXiv 2011.05625) Table 2",
    description="DNN + co-action features + Cartesian pair-id features",
)

__all__ = ["CANCartesianConfig", "CANDIENConfig", "CANDINConfig", "CANDNNConfig", "CartesianConfig"]
