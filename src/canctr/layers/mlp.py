"""Normalisation, activations and the MLP head shared by every model.

Notation: B batch, C channels (the last dim). Every module here works on [..., C] inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["affine", "batchnorm", "none"]
HiddenNorm = Literal["none", "batchnorm"]
Activation = Literal["prelu", "dice", "sigmoid"]

TF_BN_EPS = 1e-3  # tf.layers.batch_normalization default epsilon
TF_BN_MOMENTUM = 0.01  # torch convention for TF's moving-average decay 0.99


def glorot_linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """nn.Linear with TF's dense defaults: glorot_uniform weights, zero bias."""
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class Affine(nn.Module):
    """y = weight * x + bias per channel: what the official code's BatchNorm really computes.

    `tf.layers.batch_normalization` runs with its default training=False and no update ops, so the moving
    statistics stay 0/1 and the layer is gamma * x / sqrt(1 + 1e-3) + beta. The constant is folded into
    `weight`, which therefore starts at 1 / sqrt(1 + 1e-3).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), 1.0 / math.sqrt(1.0 + TF_BN_EPS)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight + self.bias


class BatchNorm(nn.BatchNorm1d):
    """nn.BatchNorm1d over the last dim of [..., C].

    A training batch of at most one row is normalised with its own statistics (mean = the row, var = 0, so
    the normalised value is 0, as the official Dice computes it) instead of raising like nn.BatchNorm1d;
    running statistics are left untouched by such a batch.
    """

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if self.training and flat.shape[0] <= 1:
            out = torch.zeros_like(flat)
            if self.affine:
                out = out * self.weight + self.bias
        else:
            out = super().forward(flat)
        return out.reshape(x.shape)


class PReLU(nn.Module):
    """max(0, x) + alpha * min(0, x) with a per-channel alpha over the last dim, initialised to 0.1 (code)."""

    def __init__(self, dim: int, init: float = 0.1) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        # torch's fused kernel (channels on dim 1, hence the [-1, C] view): the same values as the reference
        # max(0, x) + alpha * min(0, x) (`reference_forward`), with one backward kernel instead of two clamps,
        # two wheres and an add (7x faster at [128, 200] on the CPU). The gradient differs only at x == 0
        # exactly, where the reference's subgradient is 1 + alpha and the kernel's alpha.
        return F.prelu(x.reshape(-1, x.shape[-1]), self.alpha).view(x.shape)

    def reference_forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, min=0) + self.alpha * torch.clamp(x, max=0)


class Dice(nn.Module):
    """DIN's Dice: p = sigmoid(BN(x)) without affine, y = p * x + alpha * (1 - p) * x; eps 1e-9, alpha = 0.

    Deviation from the official `Dice.py`, which always normalises with the current batch's statistics:
    in eval mode we use running statistics (as the DIN paper describes), so a sample's prediction does
    not depend on its batch-mates.
    """

    def __init__(self, dim: int, eps: float = 1e-9) -> None:
        super().__init__()
        self.bn = BatchNorm(dim, eps=eps, momentum=TF_BN_MOMENTUM, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        p = torch.sigmoid(self.bn(x))
        return p * x + self.alpha * (1.0 - p) * x


def make_norm(kind: Norm, dim: int) -> nn.Module:
    """The input normalisation: "affine" = the code's inference-mode BN (default), "batchnorm" = a real
    BN, "none" = identity."""
    if kind == "affine":
        return Affine(dim)
    if kind == "batchnorm":
        return BatchNorm(dim, eps=TF_BN_EPS, momentum=TF_BN_MOMENTUM)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'affine', 'batchnorm' or 'none'")


def make_activation(kind: Activation, dim: int) -> nn.Module:
    if kind == "prelu":
        return PReLU(dim)
    if kind == "dice":
        return Dice(dim)
    if kind == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {kind!r}; expected 'prelu', 'dice' or 'sigmoid'")


class MLP(nn.Module):
    """norm -> [Linear -> (hidden BN) -> activation] per hidden size -> Linear(out_dim), on [..., in_dim].

    With the defaults this is the official `build_fcn_net`: BN(inference) -> 200 -> PReLU -> 80 -> PReLU
    -> 1. `hidden_norm="batchnorm"` adds a train-mode BatchNorm (torch defaults: eps 1e-5, momentum 0.1)
    between every hidden Linear and its activation, as torch-rechub's MLP and FuxiCTR's `batch_norm=True`
    do; it speeds up the first few hundred steps at large batch (docs/performance.md). `out_bias=False`
    drops the output bias where it is redundant (scores fed to a softmax).
    `late_dim` > 0 widens the output layer for features that skip the hidden layers and join the last
    hidden activation (NCF's GMF vector, DCN-V2's parallel cross network): `forward(x, late)`.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (200, 80),
        *,
        activation: Activation = "prelu",
        norm: Norm = "affine",
        hidden_norm: HiddenNorm = "none",
        out_dim: int = 1,
        out_bias: bool = True,
        late_dim: int = 0,
    ) -> None:
        super().__init__()
        if hidden_norm not in ("none", "batchnorm"):
            raise ValueError(f"unknown hidden_norm {hidden_norm!r}; expected 'none' or 'batchnorm'")
        layers: list[nn.Module] = [make_norm(norm, in_dim)]
        dim = in_dim
        for width in hidden:
            layers.append(glorot_linear(dim, width))
            if hidden_norm == "batchnorm":
                layers.append(BatchNorm(width))
            layers.append(make_activation(activation, width))
            dim = width
        layers.append(glorot_linear(dim + late_dim, out_dim, bias=out_bias))
        self.net = nn.Sequential(*layers)
        self.late_dim = late_dim

    def forward(self, x: Tensor, late: Tensor | None = None) -> Tensor:
        """x [..., in_dim], late [..., late_dim] (required iff late_dim > 0) -> [..., out_dim]."""
        if (late is None) != (self.late_dim == 0) or (late is not None and late.shape[-1] != self.late_dim):
            got = None if late is None else tuple(late.shape)
            raise ValueError(f"MLP built with late_dim={self.late_dim} got late features {got}")
        if late is None:
            return self.net(x)
        hidden = self.net[:-1](x)  # norm and hidden layers
        return self.net[-1](torch.cat([hidden, late], dim=-1))
