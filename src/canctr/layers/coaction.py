"""The CAN co-action unit (Bian et al., WSDM 2022, arXiv 2011.05625, eqs. 5-11).

Notation: B batch, L history length, D feed dim (input of the micro-MLP), C orders,
P induction dim (length of one target id's induction vector), S per-order output width.

For one (induction, feed) feature pair the target id's induction vector is cut into the weights (and
optionally biases) of a tiny per-sample MLP; every history element's feed vector, raised element-wise to
the powers 1..C, runs through it, and the per-element outputs are summed over the valid positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor, nn


@dataclass
class CoActionConfig:
    """Defaults follow the official code (`script/model.py` "CAN config"); the paper's choices are noted.

    layers: (in, out) per micro-MLP layer; code and WSDM: 16->8, 8->4.
    bias: per-layer biases b_i in the induction vector (paper eq. 8); the code has none.
    activation: tanh or none between layers (ablation: tanh +0.23 %).
    activate_last: also apply the activation after the last layer (paper); the code leaves it linear.
    orders: C, the feed is raised element-wise to the powers 1..C (paper and code: 3).
    order_combine: "concat" the per-order outputs (code) or "sum" them (paper eq. 11).
    order_independent: a separate induction block per order (WSDM 4.4), induction width x C.
    layer_outputs: "concat" every layer's output (WSDM eq. 9, code) or keep the "last" (arXiv v1).
    """

    layers: tuple[tuple[int, int], ...] = ((16, 8), (8, 4))
    bias: bool = False
    activation: Literal["tanh", "none"] = "tanh"
    activate_last: bool = False
    orders: int = 3
    order_combine: Literal["concat", "sum"] = "concat"
    order_independent: bool = False
    layer_outputs: Literal["concat", "last"] = "concat"

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("CoActionConfig.layers must have at least one (in, out) layer")
        for (_, out), (nxt, _) in pairwise(self.layers):
            if out != nxt:
                raise ValueError(f"CoActionConfig.layers {self.layers}: a layer's out must equal the next in")
        if any(n <= 0 for layer in self.layers for n in layer):
            raise ValueError(f"CoActionConfig.layers {self.layers}: sizes must be positive")
        if self.orders < 1:
            raise ValueError(f"CoActionConfig.orders must be >= 1, got {self.orders}")


class CoAction(nn.Module):
    """H(P_induction, P_feed) for a sequence feed, masked-sum pooled. Parameter-free: the micro-MLP's
    weights are the induction vector, so gradients flow into the caller's induction/feed tables.

    Shapes: induction [B, P] (the induction-table row of the TARGET id), feed [B, L, D] (feed-table rows
    of the HISTORY ids), mask [B, L] bool -> [B, out_dim].
    """

    def __init__(self, config: CoActionConfig | None = None) -> None:
        super().__init__()
        self.config = config or CoActionConfig()

    @property
    def block_dim(self) -> int:
        """Length of one micro-MLP's parameters: per layer in*out weights then out biases (if bias)."""
        return sum(i * o + (o if self.config.bias else 0) for i, o in self.config.layers)

    @property
    def induction_dim(self) -> int:
        cfg = self.config
        return self.block_dim * (cfg.orders if cfg.order_independent else 1)

    @property
    def feed_dim(self) -> int:
        return self.config.layers[0][0]

    @property
    def out_dim(self) -> int:
        cfg = self.config
        per_order = sum(o for _, o in cfg.layers) if cfg.layer_outputs == "concat" else cfg.layers[-1][1]
        return per_order * (cfg.orders if cfg.order_combine == "concat" else 1)

    def forward(self, induction: Tensor, feed: Tensor, mask: Tensor) -> Tensor:
        cfg = self.config
        B, L, D = feed.shape
        if induction.shape != (B, self.induction_dim) or D != self.feed_dim or mask.shape != (B, L):
            raise ValueError(
                f"CoAction expects induction [B, {self.induction_dim}], feed [B, L, {self.feed_dim}], mask "
                f"[B, L]; got {tuple(induction.shape)}, {tuple(feed.shape)}, {tuple(mask.shape)}"
            )
        C = cfg.orders
        blocks = C if cfg.order_independent else 1
        params = induction.reshape(B, blocks, self.block_dim)  # block c drives order c (or one for all)

        # all orders at once: h [B, C, L, D] holds x, x**2, ..., x**C (element-wise powers)
        powers = torch.arange(1, C + 1, dtype=feed.dtype, device=feed.device).view(1, C, 1, 1)
        h = feed.unsqueeze(1).pow(powers)

        outputs = []
        offset = 0
        last = len(cfg.layers) - 1
        for i, (n_in, n_out) in enumerate(cfg.layers):
            # row-major reshape, as tf.reshape: W[j, k] = params[offset + j * n_out + k]
            weight = params[..., offset : offset + n_in * n_out].reshape(B, blocks, n_in, n_out)
            offset += n_in * n_out
            h = torch.matmul(h, weight)  # [B, C, L, n_out]; a shared block broadcasts over the C orders
            if cfg.bias:
                h = h + params[..., offset : offset + n_out].reshape(B, blocks, 1, n_out)
                offset += n_out
            if cfg.activation == "tanh" and (i < last or cfg.activate_last):
                h = torch.tanh(h)
            outputs.append(h)
        if cfg.layer_outputs == "last":
            outputs = outputs[-1:]

        out = torch.cat(outputs, dim=-1)  # [B, C, L, S]
        out = out.masked_fill(~mask[:, None, :, None], 0.0).sum(dim=2)  # masked SUM over L -> [B, C, S]
        # concat keeps the code's layout: order-major, the layers' outputs inside each order
        return out.reshape(B, -1) if cfg.order_combine == "concat" else out.sum(dim=1)
