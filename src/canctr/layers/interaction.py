"""Explicit feature-interaction layers of the FM family: LR term, FM, field-aware FM, CIN.

Notation: B batch, F fields, E embedding dim, H feature maps of a CIN layer. Every layer takes one
vector per field, already looked up and pooled ([B, F, E]); none of them knows the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from canctr.layers.mlp import glorot_linear


class LinearTerm(nn.Module):
    """The LR / wide part: w_0 + sum_f w_f, from per-field first-order weights [B, F] -> [B].

    The w_f are scalar embedding rows looked up (and pooled over histories) by the caller; this module
    owns the global bias w_0, zero-initialised as the official code's `b_var`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, weights: Tensor) -> Tensor:
        return weights.sum(dim=-1) + self.bias


def fm_interaction(fields: Tensor) -> Tensor:
    """FM's second-order term sum_{i<j} <v_i, v_j> over fields [B, F, E] -> [B].

    Computed as 0.5 * sum_e [(sum_f v_f)^2 - sum_f v_f^2], O(F E) instead of O(F^2 E) (Rendle 2010,
    Lemma 3.1). A field may be a pooled sum of several ids; pairs inside one field are not interactions.
    """
    square_of_sum = fields.sum(dim=1).square()  # [B, E]
    sum_of_squares = fields.square().sum(dim=1)  # [B, E]
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=-1)


def ffm_interaction(fields: Tensor) -> Tensor:
    """Field-aware FM's second-order term sum_{i<j} <v_{i,j}, v_{j,i}> -> [B] (Juan et al., RecSys 2016).

    fields: [B, F, F-1, E], field i's latent vector for each partner field j != i, in partner order with
    i itself skipped (slot j-1 for j > i, slot j for j < i), as the official code's `[n, F-1, E]` tables.
    """
    num_fields = fields.shape[1]
    if fields.shape[2] != num_fields - 1:
        raise ValueError(f"ffm_interaction: expected [B, F, F-1, E], got {tuple(fields.shape)}")
    i, j = torch.triu_indices(num_fields, num_fields, offset=1, device=fields.device)  # pairs i < j
    left = fields[:, i, j - 1]  # [B, pairs, E]: v_{i, j}
    right = fields[:, j, i]  # [B, pairs, E]: v_{j, i} (i < j, so slot i)
    return (left * right).sum(dim=(1, 2))


class CIN(nn.Module):
    """xDeepFM's Compressed Interaction Network (Lian et al., KDD 2018, eqs. 6-9).

    Layer k: X^k[h, e] = sum_{i, m} W^k[h, i, m] X^{k-1}[i, e] X^0[m, e], no bias and no activation (as
    the official CAN/xDeepFM code). With `split_half`, half of every layer but the last feeds the next
    layer and the other half goes straight to the output (the code's default). Each output feature map
    is sum-pooled over E: [B, F, E] -> [B, out_dim].
    """

    def __init__(self, num_fields: int, layers: Sequence[int] = (256, 256, 256), *, split_half: bool = True) -> None:
        super().__init__()
        if not layers or any(h <= 0 for h in layers):
            raise ValueError(f"CIN layers must be a non-empty list of positive sizes, got {layers}")
        if split_half and any(h % 2 for h in layers[:-1]):
            raise ValueError(f"CIN layers {layers}: with split_half every layer but the last must be even")
        self.split_half = split_half
        self.filters = nn.ModuleList()
        self.out_dim = 0
        width = num_fields  # H_{k-1}: feature maps entering layer k
        for k, h in enumerate(layers):
            # the code's conv1d filter [1, H_{k-1} * F, H] is a linear map over the H_{k-1} * F products
            self.filters.append(glorot_linear(width * num_fields, h, bias=False))
            if split_half and k < len(layers) - 1:
                width, self.out_dim = h // 2, self.out_dim + h // 2
            else:
                width, self.out_dim = h, self.out_dim + h

    def forward(self, x0: Tensor) -> Tensor:
        B, _, E = x0.shape
        hidden, pooled = x0, []
        for k, layer in enumerate(self.filters):
            # z[b, i, m, e] = X^{k-1}[b, i, e] * X^0[b, m, e], flattened to [B, E, H_{k-1} * F] for the map
            z = (hidden.unsqueeze(2) * x0.unsqueeze(1)).reshape(B, -1, E).transpose(1, 2)
            out = layer(z).transpose(1, 2)  # [B, H, E]
            if self.split_half and k < len(self.filters) - 1:
                hidden, direct = out.chunk(2, dim=1)  # first half goes on, second half to the output
            else:
                hidden, direct = out, out
            pooled.append(direct.sum(dim=-1))
        return torch.cat(pooled, dim=-1)
