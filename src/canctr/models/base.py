"""What every model shares: its output, the base config and MLP head, and what it asks of the loader.

The model contract:

* built as `create_model(name, schema, config)`; it takes its fields, roles and widths from
  `schema.spec` (see models/features.py) and its table sizes from `schema.vocab` / `schema.pairs`;
* called as `model(batch) -> ModelOutput` on a `canctr.data.batch.Batch`;
* a model whose training needs sampled negatives from the loader (DIEN's auxiliary loss) says so with a
  method `needs_negatives() -> tuple[str, ...]` returning the sequence groups to draw them for; the
  trainer passes `negative_groups(model)` to `BatchLoader(negatives=...)`, and the batch then carries
  `batch.negatives[field]` [B, L_g] for every field of those groups. Models without the method need none;
* a model that can score a user-shared batch (`Batch.user`: the user's fields once, its candidates as rows;
  serving) says so with the class attribute `shares_user_side = True` and then computes its user-side work
  once per user; `shares_user_side(model)` tells, and a caller gives any other model `batch.expanded()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from canctr.layers.embedding import EmbeddingInit
from canctr.layers.mlp import MLP, HiddenNorm, Norm


@dataclass
class ModelOutput:
    """logits: [B] pre-sigmoid scores. aux_losses: weighted scalar terms the training step adds to the
    CTR loss (e.g. DIEN's auxiliary loss); empty in eval mode."""

    logits: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)


def negative_groups(model: nn.Module) -> tuple[str, ...]:
    """The sequence groups `model` needs loader-drawn negatives for (its `needs_negatives()`, else none).
    A wrapper with a `.module` (DistributedDataParallel, torch.compile's `_orig_mod`) is looked through."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return negative_groups(inner)
    needs = getattr(model, "needs_negatives", None)
    return tuple(needs()) if callable(needs) else ()


def shares_user_side(model: nn.Module) -> bool:
    """Whether `model` takes a user-shared batch (see the module docstring); wrappers are looked through."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return shares_user_side(inner)
    return bool(getattr(model, "shares_user_side", False))


@dataclass
class BackboneConfig:
    """Fields every model with an MLP shares; defaults from the official code (`train.py`, `build_fcn_net`)."""

    embed_dim: int = 18  # EMBEDDING_DIM
    mlp: tuple[int, ...] = (200, 80)  # final MLP hidden sizes (then Linear -> 1 logit)
    activation: Literal["prelu", "dice"] = "prelu"
    norm: Norm = "affine"  # the code's always-inference BatchNorm; "batchnorm" = a real BN
    hidden_norm: HiddenNorm = "none"  # "batchnorm": a real BN after each hidden Linear (torch-rechub, FuxiCTR)
    init: EmbeddingInit = "glorot"  # TF1 default; "normal" = the paper's N(0, 0.01)


def head(config: BackboneConfig, in_dim: int, late_dim: int = 0) -> MLP:
    """The final MLP producing one logit per sample: [..., in_dim] (+ [..., late_dim] features joining
    before the output layer, see MLP) -> [..., 1]."""
    return MLP(in_dim, config.mlp, activation=config.activation, norm=config.norm, hidden_norm=config.hidden_norm,
               late_dim=late_dim)


__all__ = ["BackboneConfig", "ModelOutput", "head", "negative_groups", "shares_user_side"]
