"""DeepFFM: the DNN backbone plus a field-aware FM, the DeepFFM baseline of CAN's Tables 3/4 (Bian et al.,
WSDM 2022), defined by the official code's `Model_DeepFFM`. The FFM part is Juan
et al., RecSys 2016; the paper the CAN tables cite for DeepFFM (a "Yang et al." in our issue, i.e. the
deep field-aware FM line of NFFM / ONN) could not be checked here, so the code is the definition.

    logit = DNN logit + (w_0 + sum_f w_f) + FFM term

Composition, not a copy: the DNN part is `dnn.DNN` (its own 18-dim embeddings, BN(inference) -> 200 ->
80 -> 1) and the LR + FFM part is `ffm.FFM` with its own [n, F-1, 18] field-aware tables, summed as in the
code (no combining layer). Code deviations are those of the two parts (masked sequence sums, category
weights sized by the category vocabulary; see dnn.py and ffm.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.models.base import ModelOutput
from canctr.models.dnn import DNN, DNNConfig
from canctr.models.ffm import FFM, FFMConfig
from canctr.models.registry import FeatureBlock, register_model


@dataclass
class DeepFFMConfig(DNNConfig):
    """DNNConfig's fields; the FFM part uses the same embed_dim and init."""


@register_model(
    "deepffm",
    config=DeepFFMConfig,
    paper=(
        "DeepFFM baseline of CAN (Bian et al., WSDM 2022) Table 3, as its code's Model_DeepFFM "
        "(FFM: Juan et al., RecSys 2016)"
    ),
    description="DNN logit + LR + field-aware FM over the field view (CAN code's Model_DeepFFM)",
)
class DeepFFM(DNN):
    shares_user_side = False  # its own terms read one row per candidate

    def __init__(self, schema: Schema, config: DeepFFMConfig, blocks: Sequence[FeatureBlock] = ()) -> None:
        super().__init__(schema, config, blocks)
        self.ffm = FFM(schema, FFMConfig(embed_dim=config.embed_dim, init=config.init))

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.dnn_logit(batch, self.embed(batch)) + self.ffm.logit(batch))
