"""Product and cross layers: PNN's inner / kernel products, ONN's operation-aware variant of them, and
DCN-V2's cross network.

Notation: B batch, F fields, N = F (F - 1) / 2 field pairs (i < j), K vector dim, X cross-network width.
Every layer takes vectors already looked up and pooled; none of them knows the schema.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from canctr.layers.mlp import glorot_linear

Product = Literal["both", "inner", "outer"]


def pair_vectors(fields: Tensor) -> tuple[Tensor, Tensor]:
    """The two sides of every field pair i < j (in row-major order (0, 1), (0, 2), ..., as the code's
    `ProductLayer`) -> (left [B, N, K], right [B, N, K]).

    fields [B, F, K]: one vector per field (PNN): left = v_i, right = v_j.
    fields [B, F, F-1, K]: one vector per field and partner (ONN's operation awareness): left = v_{i,j},
    right = v_{j,i}, where field i keeps its vector for partner j in slot j-1 if j > i, else slot j.
    """
    num_fields = fields.shape[1]
    i, j = torch.triu_indices(num_fields, num_fields, offset=1, device=fields.device)
    if fields.dim() == 3:
        return fields[:, i], fields[:, j]
    if fields.dim() == 4 and fields.shape[2] == num_fields - 1:
        return fields[:, i, j - 1], fields[:, j, i]
    raise ValueError(f"pair_vectors expects [B, F, K] or [B, F, F-1, K], got {tuple(fields.shape)}")


class ProductLayer(nn.Module):
    """Pairwise products of F fields -> [B, out_dim]: for every pair n = (i, j) the inner product
    <p_n, q_n> ("inner", IPNN) and / or the kernel product p_n^T W_n q_n ("outer"), inner ones first.

    The kernel product is the official CAN code's "outer" term: one learned K x K matrix per pair, stored
    as the code's `pnn_var` [K, N, K] with W_n[m, k] = kernel[k, n, m] (p indexes m, q indexes k).
    Takes [B, F, K] or, for ONN, [B, F, F-1, K] fields (see `pair_vectors`).
    """

    def __init__(self, num_fields: int, dim: int, *, product: Product = "both") -> None:
        super().__init__()
        if product not in ("both", "inner", "outer"):
            raise ValueError(f"unknown product {product!r}; expected 'both', 'inner' or 'outer'")
        if num_fields < 2:
            raise ValueError(f"ProductLayer needs at least 2 fields, got {num_fields}")
        num_pairs = num_fields * (num_fields - 1) // 2
        self.inner = product in ("both", "inner")
        self.kernel = None
        if product in ("both", "outer"):
            self.kernel = nn.Parameter(torch.empty(dim, num_pairs, dim))
            # torch's fans for [K, N, K] are (N K, K K), TF's (N K, K K) too: the same glorot bound as the code
            nn.init.xavier_uniform_(self.kernel)
        self.out_dim = num_pairs * (int(self.inner) + int(self.kernel is not None))

    def forward(self, fields: Tensor) -> Tensor:
        left, right = pair_vectors(fields)  # [B, N, K] each
        out = []
        if self.inner:
            out.append((left * right).sum(dim=-1))  # [B, N]
        if self.kernel is not None:
            projected = torch.einsum("knm,bnk->bnm", self.kernel, right)  # W_n q_n: [B, N, K]
            out.append((left * projected).sum(dim=-1))  # [B, N]
        return torch.cat(out, dim=-1)


class CrossNetwork(nn.Module):
    """DCN-V2's cross network (Wang et al., WWW 2021, eq. 1): x_{l+1} = x_0 * (W_l x_l + b_l) + x_l,
    [B, X] -> [B, X] after `layers` layers.

    `rank` = 0: full-rank W_l [X, X]. `rank` = r > 0: the paper's low-rank form W_l = U_l V_l^T with
    U_l, V_l [X, r] (its eq. 2 without the mixture of experts), x_0 * (U_l (V_l^T x_l) + b_l) + x_l.
    Glorot-uniform weights, zero biases.
    """

    def __init__(self, dim: int, layers: int = 3, *, rank: int = 0) -> None:
        super().__init__()
        if layers < 1 or rank < 0:
            raise ValueError(f"CrossNetwork needs layers >= 1 and rank >= 0, got layers={layers}, rank={rank}")

        def weight() -> nn.Module:
            if rank == 0:
                return glorot_linear(dim, dim)
            return nn.Sequential(glorot_linear(dim, rank, bias=False), glorot_linear(rank, dim))  # V^T, then U, b

        self.layers = nn.ModuleList(weight() for _ in range(layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x
