"""The CAN co-action unit (Bian et al., "CAN: Feature Co-Action Network for Click-Through Rate
Prediction", WSDM 2022, arXiv 2011.05625, section 4.2, eqs. 5-11).

Notation: B batch, L history length, D feed dim (input of the micro-MLP), C orders,
P induction dim (length of one target id's induction vector), S per-order output width.

For one (induction, feed) feature pair the target id's induction vector is cut into the weights (and
optionally biases) of a tiny per-sample MLP; every history element's feed vector, raised element-wise to
the powers 1..C, runs through it, and the per-element outputs are summed over the valid positions. The
unit also runs the swapped direction (a micro-MLP per history element, the target's vector fed).

`CoAction.reference_forward` is the paper's equations read literally (a loop over orders and layers,
one matmul per position); `CoAction.forward` computes the same thing faster (tests hold them equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor, nn

from canctr.layers.inference import tanh_


@dataclass
class CoActionConfig:
    """Defaults follow the official code (`script/model.py` "CAN config"); the paper's choices are noted,
    with its Table 5 ablations (CAN-DNN, Amazon Books AUC, WSDM 2022 Table 5) where it ran one.

    layers: (in, out) per micro-MLP layer; code and WSDM: 16->8, 8->4. Ablation of the depth (16/8, 8/4,
        4/4): 1 layer 0.7889, 2 layers 0.7935, 3 layers 0.7913; the paper: deeper suits larger features.
    bias: per-layer biases b_i in the induction vector (paper eq. 8); the code has none.
    activation: tanh or none between layers. Ablation: none 0.7917, tanh 0.7935 (+0.23 % rel.).
    activate_last: also apply the activation after the last layer (paper); the code leaves it linear.
    orders: C, the feed is raised element-wise to the powers 1..C (paper and code: 3). Ablation: order 1
        0.7902, 2 0.7921, 3 0.7935, 4 0.7934.
    order_combine: "concat" the per-order outputs (code) or "sum" them (paper eq. 11).
    order_independent: a separate induction block per order (WSDM 4.4 level 3, "optional"), induction
        width x C; off in the code and the public-data experiments, on online (no public ablation).
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
    """H(P_induction, P_feed) applied per history position, masked-sum pooled. Parameter-free: the
    micro-MLP's weights are the induction vector, so gradients flow into the caller's induction/feed tables.

    Args:
        config: the micro-MLP's layers, biases, activation, orders and output layout (CoActionConfig;
            default: the official code's 16->8->4, tanh, orders 1..3 concatenated, P = 160, D = 16).

    Properties: `induction_dim` P (the induction vector's length), `feed_dim` D (the feed vector's length,
    the first layer's input), `out_dim` (the pooled output's width; 36 by default).

    forward(induction, feed, mask) -> [B, out_dim]:
        induction: [B, P] (one micro-MLP per sample) or [B, L, P] (one per position);
        feed: [B, L, D] (one input per position) or [B, 1, D] (one input for every position);
        mask: [B, L] bool, True at valid positions (for two single-valued features use L = 1, all True).
    The usual direction (paper, code) is induction [B, P] from the TARGET id and feed [B, L, D] from the
    HISTORY ids. With the sides swapped (section 4.2: "the roles could be swapped") every history position
    brings its own micro-MLP, induction [B, L, P], and the target's feed [B, 1, D] runs through each of
    them. A size-1 L broadcasts; at least one side must span the mask's L (an empty width L = 0 gives zeros).
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

    def reference_forward(self, induction: Tensor, feed: Tensor, mask: Tensor) -> Tensor:
        """The paper's equations, literally: same arguments and result as `forward`, slower."""
        cfg, B, L = self.config, *mask.shape
        ind = (induction if induction.dim() == 3 else induction.unsqueeze(1)).expand(B, L, -1)  # [B, L, P]
        x = feed.expand(B, L, -1)  # P_feed of every position, [B, L, D]
        per_order = []
        for c in range(1, cfg.orders + 1):
            start = (c - 1) * self.block_dim if cfg.order_independent else 0  # order independence (4.4)
            params = ind[..., start : start + self.block_dim]  # eqs. 5-6: P_induction = ||_i (w_i || b_i)
            h, outputs, offset = x**c, [], 0  # eq. 11: the c-th element-wise power of the feed
            for i, (n_in, n_out) in enumerate(cfg.layers):
                w = params[..., offset : offset + n_in * n_out].reshape(B, L, n_in, n_out)  # row-major
                offset += n_in * n_out
                h = (h.unsqueeze(-2) @ w).squeeze(-2)  # eq. 7: w_{i-1} (x) h_{i-1}
                if cfg.bias:
                    h = h + params[..., offset : offset + n_out]  # + b_{i-1}
                    offset += n_out
                if cfg.activation == "tanh" and (i < len(cfg.layers) - 1 or cfg.activate_last):
                    h = torch.tanh(h)  # sigma
                outputs.append(h)
            y = torch.cat(outputs, dim=-1) if cfg.layer_outputs == "concat" else h  # eq. 9: ||_i h_i
            # eq. 10: sum pooling over the valid behaviours, after the unit (the text and the code; eq. 10 as
            # typeset sums the feed vectors inside H)
            per_order.append(y.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1))
        stacked = torch.stack(per_order, dim=1)  # [B, C, S]
        return stacked.flatten(1) if cfg.order_combine == "concat" else stacked.sum(dim=1)  # eq. 11

    def forward(self, induction: Tensor, feed: Tensor, mask: Tensor) -> Tensor:
        cfg = self.config
        ind = induction.unsqueeze(1) if induction.dim() == 2 else induction  # [B, Li, P]
        B, L = mask.shape
        Li, Lf = ind.shape[1], feed.shape[1] if feed.dim() == 3 else -1
        exporting = torch.jit.is_tracing() or torch.compiler.is_exporting()  # symbolic shapes; eager checked them
        if not exporting and (
            ind.shape != (B, Li, self.induction_dim)
            or feed.shape != (B, Lf, self.feed_dim)
            or L not in (Li, Lf)
            or not {Li, Lf} <= {1, L}
        ):
            raise ValueError(
                f"CoAction expects induction [B, {self.induction_dim}] or [B, L, {self.induction_dim}], feed "
                f"[B, L, {self.feed_dim}] or [B, 1, {self.feed_dim}], mask [B, L]; got {tuple(induction.shape)}, "
                f"{tuple(feed.shape)}, {tuple(mask.shape)}"
            )
        C = cfg.orders
        blocks = C if cfg.order_independent else 1
        # block c drives order c (or one block for all): [B, blocks, Li, block_dim]
        params = ind.reshape(B, Li, blocks, self.block_dim).transpose(1, 2)
        pool_at, mask_feed = self._plan(Li)
        if mask_feed:
            feed = feed.masked_fill(~mask.unsqueeze(-1), 0.0)
        return self._layers(self._powers(feed), [], params, mask, 0, pool_at, mask_feed, pooled=False)

    def shared_forward(self, induction: Tensor, feed: Tensor, mask: Tensor, user: Tensor,
                       per_user: int | None = None) -> Tensor:
        """`forward(induction, feed[user], mask[user])` with the feed computed once per user (serving: one user's
        history, many candidates): induction [B, P] (one micro-MLP per candidate), feed [U, L, D], mask [U, L],
        user [B] int64 -> [B, out_dim]. per_user: the caller's promise that user is [0] * K + [1] * K + ... (K =
        per_user candidates each, in user order), which spares the candidates' placement in the padded grid.

        The feed's powers are built once per user. Eagerly, the first layer is then one matmul per user for all
        its candidates, [C * L, D] @ [D, K_u * n_out] (candidates padded to the largest K_u), instead of one
        small matmul per candidate; under tracing / export (no data-dependent sizes) the powers are gathered
        per candidate and the per-candidate path runs."""
        cfg = self.config
        U, L = mask.shape
        B = induction.shape[0]
        exporting = torch.jit.is_tracing() or torch.compiler.is_exporting()
        if not exporting and (induction.shape != (B, self.induction_dim) or feed.shape != (U, L, self.feed_dim)
                              or user.shape != (B,)):
            raise ValueError(
                f"CoAction.shared_forward expects induction [B, {self.induction_dim}], feed [U, L, "
                f"{self.feed_dim}], mask [U, L], user [B]; got {tuple(induction.shape)}, {tuple(feed.shape)}, "
                f"{tuple(mask.shape)}, {tuple(user.shape)}"
            )
        blocks = cfg.orders if cfg.order_independent else 1
        pool_at, mask_feed = self._plan(1)
        if mask_feed:
            feed = feed.masked_fill(~mask.unsqueeze(-1), 0.0)
        h = self._powers(feed)  # [U, C, L, D]
        params = induction.reshape(B, blocks, 1, self.block_dim)
        rows_mask = mask.index_select(0, user)
        if exporting or pool_at == 0 or B == 0:  # per candidate from the first layer (nothing to fuse before pooling)
            return self._layers(h.index_select(0, user), [], params, rows_mask, 0, pool_at, mask_feed, pooled=False)

        # slot of each candidate among its user's: K = the most candidates of one user; cell = user * K + slot
        if per_user is not None and per_user * U == B:  # the grid is the candidates as they are
            K, cell = per_user, None
        elif U == 1:
            K, cell = B, None
        else:
            counts = torch.bincount(user, minlength=U)
            K = int(counts.max())
            order = torch.argsort(user, stable=True)
            starts = counts.cumsum(0) - counts
            cell = torch.empty_like(user)
            cell[order] = user[order] * K + torch.arange(B, device=user.device) - starts[user[order]]
        grid = params[:, :, 0] if cell is None else \
            params.new_zeros(U * K, blocks, self.block_dim).index_copy_(0, cell, params[:, :, 0])  # padded
        C, D, n_out = cfg.orders, self.feed_dim, cfg.layers[0][1]
        w = grid[..., : D * n_out].reshape(U, K, blocks, D, n_out)  # row-major, as in forward
        if blocks == 1:  # [U, C * L, D] @ [U, D, K * n_out]: every candidate's first layer in one matmul
            y = torch.bmm(h.reshape(U, C * L, D), w[:, :, 0].permute(0, 2, 1, 3).reshape(U, D, K * n_out))
            y = y.view(U, C, L, K, n_out)
        else:  # order c through candidate k's block c
            y = torch.einsum("ucli,ukcio->uclko", h, w)
        if cfg.bias:
            b = grid[..., D * n_out : D * n_out + n_out].reshape(U, K, blocks, n_out)
            y = y + b.permute(0, 2, 1, 3).unsqueeze(2)  # [U, blocks, 1, K, n_out]
        if self._activated(0):
            y = tanh_(y)  # fresh: the bmm's output
        if pool_at == 1:  # pool over the user's positions before gathering the candidates: [U, C, K, n_out]
            y = y.sum(dim=2) if mask_feed else y.masked_fill(~mask[:, None, :, None, None], 0.0).sum(dim=2)
            y = y.transpose(1, 2).reshape(U * K, C, 1, n_out)
        else:  # [U, C, L, K, n] -> [U * K, C, L, n]
            y = y.permute(0, 3, 1, 2, 4).reshape(U * K, C, L, n_out)
        y = y if cell is None else y.index_select(0, cell)  # [B, C, 1 or L, n_out]
        return self._layers(y, [y] if cfg.layer_outputs == "concat" else [], params, rows_mask, 1, pool_at,
                            mask_feed, pooled=pool_at == 1)

    def _activated(self, i: int) -> bool:
        cfg = self.config
        return cfg.activation == "tanh" and (i < len(cfg.layers) - 1 or cfg.activate_last)

    def _plan(self, Li: int) -> tuple[int, bool]:
        """(pool_at, mask_feed) for Li micro-MLPs per sample.

        One micro-MLP per sample (Li = 1, the usual direction): the layers after the last activation are linear
        maps shared by every position, so they commute with the sum over L and run once on the pooled
        [B, C, 1, n] (the code's linear last layer: only 16->8 runs per position); biases there count once per
        valid position. Per-position micro-MLPs (Li = L) pool after the last layer. Without biases a zero feed
        gives zero outputs (0**c = 0, tanh(0) = 0): masking the [B, L, D] feed replaces masking the
        [B, C, L, S] outputs, and pooling is a plain sum."""
        n_layers = len(self.config.layers)
        pool_at = max((i + 1 for i in range(n_layers) if self._activated(i)), default=0) if Li == 1 else n_layers
        return pool_at, Li == 1 and not self.config.bias

    def _powers(self, feed: Tensor) -> Tensor:
        """feed [N, Lf, D] -> [N, C, Lf, D]: x, x**2, ..., x**C (element-wise), by repeated multiplication: a
        tensor-exponent pow (and its backward) costs several times more on CPU."""
        powers = [feed]
        for _ in range(self.config.orders - 1):
            powers.append(powers[-1] * feed)
        return torch.stack(powers, dim=1)

    def _layers(self, h: Tensor, outputs: list[Tensor], params: Tensor, mask: Tensor, start: int, pool_at: int,
                mask_feed: bool, pooled: bool) -> Tensor:
        """The micro-MLP from layer `start` on: h [B, C, L or 1, n] (the input of layer `start`; pooled over L
        when `pooled`), `outputs` the layer outputs so far (for "concat"), params [B, blocks, Li, block_dim],
        mask [B, L] -> [B, out_dim]."""
        cfg = self.config
        B, blocks, Li = params.shape[:3]
        n_layers = len(cfg.layers)

        def pool(t: Tensor) -> Tensor:  # masked sum over L: [B, C, L, n] -> [B, C, 1, n]
            if not mask_feed:
                t = t.masked_fill(~mask[:, None, :, None], 0.0)
            return t.sum(dim=2, keepdim=True)

        offset = sum(i * o + (o if cfg.bias else 0) for i, o in cfg.layers[:start])
        for i, (n_in, n_out) in enumerate(cfg.layers[start:], start):
            if i == pool_at and not pooled:
                h, outputs = self._pool_outputs(h, outputs, pool)
            # row-major reshape, as tf.reshape: W[j, k] = params[offset + j * n_out + k]
            weight = params[..., offset : offset + n_in * n_out].reshape(B, blocks, Li, n_in, n_out)
            offset += n_in * n_out
            h = _micro_matmul(h, weight)  # [B, C, L or 1, n_out]
            if cfg.bias:
                b = params[..., offset : offset + n_out]  # [B, blocks, Li, n_out] broadcasts
                h = h + (b if i < pool_at else b * mask.sum(1).to(b.dtype)[:, None, None, None])
                offset += n_out
            if self._activated(i):
                h = tanh_(h)  # fresh: the matmul's (+ bias) output
            if cfg.layer_outputs == "concat":
                outputs.append(h)
        if pool_at == n_layers and not pooled:
            h, outputs = self._pool_outputs(h, outputs, pool)
        out = (torch.cat(outputs, dim=-1) if cfg.layer_outputs == "concat" else h).squeeze(2)  # [B, C, S]
        # concat keeps the code's layout: order-major, the layers' outputs inside each order
        return out.reshape(B, -1) if cfg.order_combine == "concat" else out.sum(dim=1)

    @staticmethod
    def _pool_outputs(
        h: Tensor, outputs: list[Tensor], pool: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """Pool the per-position layer outputs so far with one masked sum; h (the latest of them, or the
        input powers when none) continues pooled. -> (h [B, C, 1, n], [pooled outputs])."""
        if not outputs:
            return pool(h), []
        pooled = pool(torch.cat(outputs, dim=-1))
        return pooled[..., -h.shape[-1] :], [pooled]


def _micro_matmul(h: Tensor, weight: Tensor) -> Tensor:
    """h [B, C, Lf, n_in] through per-sample weights [B, blocks, Li, n_in, n_out] -> [B, C, L, n_out].

    One matrix per sample (Li = blocks = 1, the default): orders and positions fold into the rows of one
    bmm, a view without copies, [B, C * Lf, n_in] @ [B, n_in, n_out]. Otherwise einsum, which folds the
    size-1 order / position axes into the matmul's rows or columns instead of copying the weights.
    """
    B, C, Lf, n_in = h.shape
    if weight.shape[1] == 1 and weight.shape[2] == 1:
        return torch.bmm(h.reshape(B, C * Lf, n_in), weight[:, 0, 0]).view(B, C, Lf, -1)
    return torch.einsum("bcli,bclio->bclo", h, weight)
