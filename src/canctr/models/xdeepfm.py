"""xDeepFM (Lian, Zhou, Zhang, Chen, Xie, Sun, "xDeepFM: Combining Explicit and Implicit Feature
Interactions for Recommender Systems", KDD 2018), as the official CAN code's `Model_xDeepFM`.

    logit = DNN logit + Linear(CIN(fields)) [+ LR term if use_linear]
    fields = the field view (Roles.view: [item, cate, mean hist item, mean hist cate] in the public
             layout) from the DNN's own embeddings (shared)

CIN layers (256, 256, 256) with split-half (half of each of the first two layers feeds the next layer,
half goes to the output), no bias and no activation inside the CIN, every output map sum-pooled over E
(128 + 128 + 256 = 512), then a linear map with bias to one logit (the code's `w_nn_output`).

Follows the code in the fields, the CIN and the plain sum of the parts. The xDeepFM paper's output unit
(eq. 10) also has the linear (LR) part; the code computes that LR term and then drops it, so
`use_linear` defaults to False (code); True adds w_0 + per-id scalar weights over the fields, as the
paper. Deviations: sequence sums are masked (see dnn.py); the CIN gets the sequence MEAN, not the code's
sum (`hist_pool="sum"` restores it): three CIN layers make degree-4 products of the fields, so an
unnormalised sum over a long history blows the CIN output up and drowns the DNN part (measured in
docs/model_zoo.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.interaction import CIN
from canctr.layers.mlp import glorot_linear
from canctr.models.base import ModelOutput
from canctr.models.dnn import DNN, DNNConfig
from canctr.models.features import LinearFeatures, Pool
from canctr.models.registry import FeatureBlock, register_model


@dataclass
class XDeepFMConfig(DNNConfig):
    cin_layers: tuple[int, ...] = (256, 256, 256)  # feature maps per CIN layer (code)
    cin_split_half: bool = True  # code and paper default
    use_linear: bool = False  # the code drops its LR term; the paper (eq. 10) keeps it
    hist_pool: Pool = "mean"  # sequence fields entering the CIN; "sum" = the code (unstable, see above)


@register_model(
    "xdeepfm",
    config=XDeepFMConfig,
    paper="xDeepFM: Combining Explicit and Implicit Feature Interactions (Lian et al., KDD 2018)",
    description="DNN logit + CIN (256, 256, 256, split-half) over the field view (target fields, pooled keys)",
)
class XDeepFM(DNN):
    shares_user_side = False  # its own terms read one row per candidate

    def __init__(self, schema: Schema, config: XDeepFMConfig, blocks: Sequence[FeatureBlock] = ()) -> None:
        super().__init__(schema, config, blocks)
        self.hist_pool = config.hist_pool
        self.fields = self.embed.roles.view
        self.cin = CIN(len(self.fields), config.cin_layers, split_half=config.cin_split_half)
        self.cin_out = glorot_linear(self.cin.out_dim, 1)  # the code's w_nn_output / b_nn_output
        self.linear = LinearFeatures(schema, self.fields, config.init) if config.use_linear else None

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embed(batch)
        logits = self.dnn_logit(batch, e) + self.cin_out(self.cin(e.view(self.fields, self.hist_pool))).squeeze(-1)
        if self.linear is not None:
            logits = logits + self.linear(batch)
        return ModelOutput(logits=logits)
