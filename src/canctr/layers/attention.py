"""DIN-style target attention (Zhou et al., KDD 2018), as implemented in the DIEN/CAN code.

Notation: B batch, L history length, D key dim, Dq query dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canctr.layers.mlp import MLP, PReLU, glorot_linear


class TargetAttention(nn.Module):
    """Score every history element against the target with DIN's activation unit and pool.

    score_t = MLP([q, k_t, q - k_t, q * k_t]) with sigmoid hidden units 80 -> 40 -> 1 (`din_attention` /
    `din_fcn_attention` in the official code). With `softmax` the scores are normalised over the valid
    positions (the DIEN/CAN code); without it they are used raw as weights (the DIN paper, which avoids
    normalising to keep the intensity of the user's interest). Invalid positions always get weight 0,
    so an empty history pools to zeros.

    Args:
        dim: key dim D.
        query_dim: if given, the query is first projected to D by Linear + PReLU, as DIEN's
            `din_fcn_attention`; if None the query must already be D-dimensional (DIN).
        hidden: activation-unit hidden sizes.
        softmax: normalise the scores over valid positions.
    """

    def __init__(
        self, dim: int, *, query_dim: int | None = None, hidden: Sequence[int] = (80, 40), softmax: bool = True
    ) -> None:
        super().__init__()
        self.softmax = softmax
        self.query_proj = nn.Sequential(glorot_linear(query_dim, dim), PReLU(dim)) if query_dim is not None else None
        # a constant shift of every score is a no-op under softmax, so the output bias would get no gradient
        self.unit = MLP(4 * dim, hidden, activation="sigmoid", norm="none", out_bias=not softmax)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """query [B, Dq], keys [B, L, D], mask [B, L] bool -> (weights [B, L], pooled [B, D]).

        rows: [B] the row of `keys` for each query (keys then hold one row per user, the queries are the
        candidates): the keys' share of the first layer runs once per user, see `_shared_scores`."""
        q = self.query_proj(query) if self.query_proj is not None else query
        if rows is not None:
            scores = self._shared_scores(q, keys, rows)
            keys = keys.index_select(0, rows)
        else:
            scores = self._scores(q, keys)  # [B, L]
        if self.softmax:
            # finite fill: a row with no valid position gives a uniform softmax, then zeroed below (not NaN)
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=-1)
        weights = scores.masked_fill(~mask, 0.0)
        pooled = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # [B, D]
        return weights, pooled

    def reference_scores(self, q: Tensor, keys: Tensor) -> Tensor:
        """The activation unit's scores [B, L] on its concatenated input [q, k, q - k, q * k], as the official
        code computes them (q [B, D] already projected, keys [B, L, D]); `_scores` is held equal to it."""
        q = q.unsqueeze(1).expand_as(keys)
        return self.unit(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)

    def _scores(self, q: Tensor, keys: Tensor) -> Tensor:
        """`reference_scores` with a quarter of its first layer's multiply-adds. With W = [W_q | W_k | W_d | W_p]
        the first layer is (W_q + W_d) q + b + (W_k - W_d + W_p diag(q)) k: per sample one [D, h1] matrix
        M_b = (W_k - W_d)^T + diag(q_b) W_p^T, then one [L, D] @ [D, h1] product (baddbmm) instead of a
        [L, 4D] @ [4D, h1] one, and no [B, L, 4D] concatenation. Forward + backward of the unit: 2.4x faster
        at B 128, L 50 and 2.3x at B 1024, L 200 (2 CPU cores)."""
        first = self.unit.net[1]  # net = [norm (identity here), Linear(4D, h1), sigmoid, ..., Linear(., 1)]
        w_q, w_k, w_d, w_p = first.weight.split(q.shape[-1], dim=1)  # [h1, D] each
        m = (w_k - w_d).t().unsqueeze(0) + q.unsqueeze(2) * w_p.t().unsqueeze(0)  # [B, D, h1]
        h = torch.baddbmm(F.linear(q, w_q + w_d, first.bias).unsqueeze(1), keys, m)  # [B, L, h1]
        return self.unit.net[2:](h).squeeze(-1)

    def _shared_scores(self, q: Tensor, keys: Tensor, rows: Tensor) -> Tensor:
        """The activation unit's scores [B, L] for queries q [B, D] over per-user keys [U, L, D], rows [B].

        The first layer is linear in its input [q, k, q - k, q * k], so with W = [W_q | W_k | W_d | W_p] it is
        (W_q + W_d) q + (W_k - W_d) k + W_p (q * k) + b: the key term once per user, the query term once per
        candidate, and only the product term per (candidate, position), a quarter of the first layer's work."""
        first = self.unit.net[1]  # net = [norm (identity here), Linear(4D, h1), sigmoid, ..., Linear(., 1)]
        w_q, w_k, w_d, w_p = first.weight.split(q.shape[-1], dim=1)  # [h1, D] each
        # one user (a single request): its rows broadcast over the candidates instead of being gathered
        one = keys.shape[0] == 1 and not (torch.jit.is_tracing() or torch.compiler.is_exporting())  # eager only
        gather = (lambda t: t) if one else (lambda t: t.index_select(0, rows))
        h = F.linear(gather(keys) * q.unsqueeze(1), w_p)  # [B, L, h1]
        h = h.add_(gather(F.linear(keys, w_k - w_d))).add_(F.linear(q, w_q + w_d, first.bias).unsqueeze(1))
        return self.unit.net[2:](h).squeeze(-1)
