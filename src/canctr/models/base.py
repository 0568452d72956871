"""What every model returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """logits: [B] pre-sigmoid scores. aux_losses: weighted scalar terms the training step adds to the
    CTR loss (e.g. DIEN's auxiliary loss); empty in eval mode."""

    logits: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
