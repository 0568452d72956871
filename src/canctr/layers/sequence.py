"""DIEN's sequence layers (Zhou et al., AAAI 2019): interest extractor GRU, AUGRU, auxiliary loss.

Notation: B batch, L history length, D input dim, H hidden (state) dim. Histories are left-aligned:
positions [0, hist_len) are valid (mask [B, L] bool), hist_len may be 0.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canctr.layers import compiled
from canctr.layers.inference import tanh_
from canctr.layers.mlp import MLP, Norm


class InterestExtractor(nn.Module):
    """A GRU over the behaviour sequence: [B, L, D] -> states [B, L, H], zero at padded positions.

    The GRU is causal and histories are left-aligned, so the state at a valid position never depends on
    the padding after it; running the padded tensor is exact, no packing needed. Initialised like TF's
    GRUCell (DIEN code): glorot weights, gate biases 1.0, candidate bias 0. torch's GRU applies the reset
    gate after the recurrent matmul (TF applies it before); we keep nn.GRU for its fused kernel.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden_dim, batch_first=True)
        H = hidden_dim
        with torch.no_grad():
            for name, p in self.gru.named_parameters():
                if name.startswith("weight"):
                    for chunk in p.split(H):  # r, z, n blocks, each [H, in]
                        nn.init.xavier_uniform_(chunk)
                else:
                    p.zero_()
            self.gru.bias_ih_l0[: 2 * H].fill_(1.0)  # reset and update gates

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # torch.export decomposes nn.GRU into a Python loop that fixes L: exported, the GRU is one opaque op
        # (`gru_states`) that the ONNX export writes as ONNX's GRU (`onnx_translations`), L dynamic
        g = self.gru
        if torch.compiler.is_exporting():
            states = gru_states(x, g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0)
        elif _compiled_ok(x) and (kernels := compiled.ops()) is not None:  # on the CPU: the time loop in one call
            proj, steps = F.linear(x, g.weight_ih_l0, g.bias_ih_l0), _longest(mask)
            states = _CompiledGRU.apply(proj, g.weight_hh_l0, g.bias_hh_l0, steps) if torch.is_grad_enabled() \
                else kernels.gru_infer(proj, g.weight_hh_l0.t(), g.bias_hh_l0, steps)
        else:
            states = g(x)[0]
        return states.masked_fill(~mask.unsqueeze(-1), 0.0)


def _compiled_ok(x: Tensor) -> bool:
    """Whether the compiled kernels (canctr/csrc/recurrent.cpp) may run on `x`: float32 on the CPU, not traced,
    compiled or exported (those keep the torch ops). The caller picks the training or the scoring kernels by
    whether a gradient is being recorded."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()))


def _longest(mask: Tensor) -> int:
    """The longest row's valid length, mask [B, L] bool (0 for no rows): where every time loop may stop."""
    return int(mask.sum(1).max()) if mask.shape[0] else 0


class _CompiledGRU(torch.autograd.Function):
    """The extractor's GRU for training, forward and backward (BPTT) in the compiled kernels: x_proj [B, L, 3H]
    (x W_ih^T + b_ih, which stays under autograd), w_hh [3H, H], b_hh [3H] -> states [B, L, H] of the first
    `steps` positions (zeros after: every row is padding there). Held to nn.GRU by tests/test_compiled.py."""

    @staticmethod
    def forward(ctx, x_proj, w_hh, b_hh, steps: int):  # noqa: ANN001, ANN205
        states, rz, n, ghn = compiled.ops().gru_train_forward(x_proj, w_hh, b_hh, steps)  # states [L, B, H]
        ctx.save_for_backward(states, rz, n, ghn, w_hh)
        return states.transpose(0, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_states):  # noqa: ANN001, ANN205
        states, rz, n, ghn, w_hh = ctx.saved_tensors
        d_xproj, d_gh = compiled.ops().gru_train_backward(d_states, states, rz, n, ghn, w_hh)
        steps, B, H = n.shape
        h_prev = torch.cat([states.new_zeros(1, B, H), states[: steps - 1]]) if steps else states[:0]
        d_w_hh = d_gh.reshape(-1, 3 * H).t() @ h_prev.reshape(-1, H)
        return d_xproj.transpose(0, 1), d_w_hh, d_gh.sum((0, 1)), None


@torch.library.custom_op("canctr::gru_states", mutates_args=())
def gru_states(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """One layer of nn.GRU, batch first, from a zero state: x [B, L, D] -> states [B, L, H] (the exported
    extractor; eagerly torch's GRU)."""
    h0 = x.new_zeros(1, x.shape[0], w_hh.shape[1])
    return torch.gru(x, h0, [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, False, False, True)[0]


@gru_states.register_fake
def _gru_states_fake(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1])


def onnx_translations() -> dict:
    """The ONNX export's translation of the ops above (`torch.onnx.export(custom_translation_table=...)`):
    `gru_states` as ONNX's GRU with linear_before_reset = 1 (torch's GRU: the reset gate applied after the
    recurrent matmul), one fused kernel in ONNX Runtime instead of a Scan of a dozen nodes a step."""
    from onnxscript import opset18 as op

    def gru(x, w_ih, w_hh, b_ih, b_hh):  # noqa: ANN001, ANN202
        H = w_hh.shape[1]  # the weights' shapes are static

        def zrh(t):  # noqa: ANN001, ANN202 - torch's gate blocks (r, z, n) in ONNX's order (z, r, h); folded
            return op.Concat(*(op.Slice(t, [a * H], [a * H + H], [0]) for a in (1, 0, 2)), axis=0)

        w, r = op.Unsqueeze(zrh(w_ih), [0]), op.Unsqueeze(zrh(w_hh), [0])  # [1, 3H, D], [1, 3H, H]
        b = op.Unsqueeze(op.Concat(zrh(b_ih), zrh(b_hh), axis=0), [0])  # [1, 6H]
        y, _ = op.GRU(op.Transpose(x, perm=[1, 0, 2]), w, r, b, hidden_size=H, linear_before_reset=1)
        return op.Transpose(op.Squeeze(y, [1]), perm=[1, 0, 2])  # [L, 1, B, H] -> [B, L, H]

    return {torch.ops.canctr.gru_states.default: gru}


class AUGRU(nn.Module):
    """GRU with an attentional update gate; returns the state after each row's last valid position.

    Per step (TF GRUCell convention, as the official `VecAttGRUCell`):
        r, u = sigmoid(W_x x_t + U_g h + b_g)                 (b_g starts at 1.0)
        c    = tanh(W_c x_t + U_c (r * h) + b_c)              (reset applied before the matmul)
    form="code":  u' = (1 - a_t) * u,   h = u' * h + (1 - u') * c       (u gates the OLD state)
    form="paper": u~ = a_t * u,         h = (1 - u~) * h + u~ * c       (DIEN eq. (5)-(6))
    So a_t = 0 leaves a plain GRU step in the code form and freezes the state in the paper form.
    Positions >= hist_len do not touch the state, so the result is the state at position hist_len - 1
    (zeros for an empty history). Input projections for all steps come from one matmul; only the
    recurrent part loops over time.
    """

    def __init__(self, input_dim: int, hidden_dim: int, form: Literal["code", "paper"] = "code") -> None:
        super().__init__()
        if form not in ("code", "paper"):
            raise ValueError(f"AUGRU form must be 'code' or 'paper', got {form!r}")
        self.form = form
        self.hidden_dim = H = hidden_dim
        self.input_proj = nn.Linear(input_dim, 3 * H)  # [r | u | c] input parts and biases
        self.gate_proj = nn.Linear(H, 2 * H, bias=False)  # recurrent part of r, u
        self.cand_proj = nn.Linear(H, H, bias=False)  # recurrent part of c, on r * h
        with torch.no_grad():
            for chunk in self.input_proj.weight.split(H):
                nn.init.xavier_uniform_(chunk)
            for chunk in self.gate_proj.weight.split(H):
                nn.init.xavier_uniform_(chunk)
            nn.init.xavier_uniform_(self.cand_proj.weight)
            self.input_proj.bias.zero_()
            self.input_proj.bias[: 2 * H].fill_(1.0)

    def forward(self, x: Tensor, attention: Tensor, mask: Tensor, rows: Tensor | None = None) -> Tensor:
        """x [B, L, D], attention [B, L], mask [B, L] bool -> final state [B, H].

        rows: [B] row of x for each of the B sequences (x then has its own number of rows, e.g. one per user
        while attention and mask have one per candidate): the input projection runs once per row of x."""
        H = self.hidden_dim
        proj = self.input_proj(x)
        if rows is not None:  # one row of x (a single user, eagerly): broadcast it, else gather
            one = x.shape[0] == 1 and not (torch.jit.is_tracing() or torch.compiler.is_exporting())
            proj = proj.expand(rows.shape[0], -1, -1) if one else proj.index_select(0, rows)
        x_gates, x_cand = proj.split([2 * H, H], dim=-1)  # [B, L, 2H], [B, L, H]
        paper = self.form == "paper"
        if torch.compiler.is_exporting():  # torch.export / ONNX: a scan over time keeps L dynamic (ONNX Scan)
            return _augru_scan_export(x_gates, x_cand, attention, mask, self.gate_proj.weight, self.cand_proj.weight,
                                      paper)
        if torch.jit.is_tracing():  # TorchScript: a scripted loop, or tracing would unroll it for one L
            keep = (attention if paper else 1.0 - attention).unsqueeze(-1)
            return _augru_loop()(x_gates, x_cand, keep, mask.unsqueeze(-1), self.gate_proj.weight.t(),
                               self.cand_proj.weight.t(), paper)
        if not torch.is_grad_enabled():  # inference: nothing kept for a backward
            return _augru_infer(x_gates, x_cand, attention, mask, self.gate_proj.weight, self.cand_proj.weight, paper)
        if _compiled_ok(x_cand) and compiled.ops() is not None:  # training on the CPU: the compiled scan
            return _CompiledAUGRU.apply(x_gates, x_cand, attention, mask, self.gate_proj.weight,
                                        self.cand_proj.weight, paper)
        return _AUGRUScan.apply(x_gates, x_cand, attention, mask, self.gate_proj.weight, self.cand_proj.weight, paper)

    def reference_forward(self, x: Tensor, attention: Tensor, mask: Tensor) -> Tensor:
        """The same recurrence step by step under autograd (the specification `_AUGRUScan` is tested against)."""
        B, L, _ = x.shape
        H = self.hidden_dim
        x_gates, x_cand = self.input_proj(x).split([2 * H, H], dim=-1)
        h = x.new_zeros(B, H)
        for t in range(L):
            r, u = torch.sigmoid(x_gates[:, t] + self.gate_proj(h)).chunk(2, dim=-1)
            c = torch.tanh(x_cand[:, t] + self.cand_proj(r * h))
            a = attention[:, t, None]
            if self.form == "code":
                u = (1.0 - a) * u
                h_new = u * h + (1.0 - u) * c
            else:
                u = a * u
                h_new = (1.0 - u) * h + u * c
            h = torch.where(mask[:, t, None], h_new, h)
        return h


def _augru_infer(x_gates: Tensor, x_cand: Tensor, attention: Tensor, mask: Tensor, w_gates: Tensor, w_cand: Tensor,
                 paper: bool) -> Tensor:
    """`_AUGRUScan.forward` without what its backward needs (shapes as there), for scoring: float32 on the CPU
    the compiled loop (canctr/csrc/recurrent.cpp) or, where it cannot be built, the lean loop `_augru_infer_cpu`;
    else `_augru_infer_reference`."""
    if _compiled_ok(x_cand) and x_gates.dtype == torch.float32 and (kernels := compiled.ops()) is not None:
        steps = _longest(mask)
        valid = None if bool((mask.sum(1) == steps).all()) else mask
        keep = attention if paper else 1.0 - attention
        return kernels.augru_infer(x_gates, x_cand, keep, valid, w_gates.t(), w_cand.t(), paper, steps)
    if (x_cand.device.type == "cpu" and x_cand.dtype == torch.float32 and x_gates.dtype == torch.float32
            and not torch.compiler.is_compiling()):
        return _augru_infer_cpu(x_gates, x_cand, attention, mask, w_gates, w_cand, paper)
    return _augru_infer_reference(x_gates, x_cand, attention, mask, w_gates, w_cand, paper)


def _augru_infer_cpu(x_gates: Tensor, x_cand: Tensor, attention: Tensor, mask: Tensor, w_gates: Tensor,
                     w_cand: Tensor, paper: bool) -> Tensor:
    """`_augru_infer_reference` in 7 calls a step, none allocating (a step's work is small, ~100 x 36 at
    scoring: the calls' fixed costs are the time). The per-step slices are taken once (unbind), results go to
    buffers allocated once (out=), and the sigmoid is numpy's tanh on the same memory:
    sigmoid(z) = (1 + tanh(z / 2)) / 2, the halves folded into the inputs and weights (exact: powers of two),
        g      = tanh(x_g / 2 + h (W_g / 2))               = [2r - 1 | 2u - 1]
        rh     = h + g_r * h                               = 2 r h
        c      = tanh(x_c + rh (W_c / 2))
        ue     = keep / 2 + g_u * keep / 2                 = u keep
        h      = lerp(c, h, ue) (code) or lerp(h, c, ue) (paper), kept where the position is valid.
    The loop stops at the longest row; when every row has that length the masking is skipped."""
    B, L, H = x_cand.shape
    lengths = mask.sum(1)
    steps = int(lengths.max()) if B else 0
    full = bool((lengths == steps).all())
    # one user's projection broadcast over its candidates (stride 0): halve that row only
    xg = (0.5 * x_gates[:1, :steps]).expand(B, -1, -1) if x_gates.stride(0) == 0 else 0.5 * x_gates[:, :steps]
    xg = xg.unbind(1)  # [B, 2H] each
    xc = x_cand[:, :steps].unbind(1)
    kh = (0.5 * (attention[:, :steps] if paper else 1.0 - attention[:, :steps])).unsqueeze(-1).unbind(1)
    valid = None if full else mask[:, :steps].unsqueeze(-1).unbind(1)
    wg_t, wc_t = (0.5 * w_gates).t(), (0.5 * w_cand).t()
    h = x_cand.new_zeros(B, H)
    g, rh, c, ue = x_cand.new_empty(B, 2 * H), x_cand.new_empty(B, H), x_cand.new_empty(B, H), x_cand.new_empty(B, H)
    h_new = h if full else x_cand.new_empty(B, H)
    g_r, g_u, g_np, c_np = g[:, :H], g[:, H:], g.numpy(), c.numpy()
    for t in range(steps):
        torch.addmm(xg[t], h, wg_t, out=g)
        np.tanh(g_np, out=g_np)
        torch.addcmul(h, g_r, h, out=rh)
        torch.addmm(xc[t], rh, wc_t, out=c)
        np.tanh(c_np, out=c_np)
        torch.addcmul(kh[t], g_u, kh[t], out=ue)
        if paper:
            torch.lerp(h, c, ue, out=h_new)
        else:
            torch.lerp(c, h, ue, out=h_new)
        if valid is not None:
            torch.where(valid[t], h_new, h, out=h)
    return h


def _augru_infer_reference(x_gates: Tensor, x_cand: Tensor, attention: Tensor, mask: Tensor, w_gates: Tensor,
                           w_cand: Tensor, paper: bool) -> Tensor:
    """`_AUGRUScan.forward` without what its backward needs, one `_augru_step` a step (any device and dtype;
    the reference of `_augru_infer_cpu`): the loop stops at the longest row, and when every row has that
    length (one user's candidates) the per-step masking is skipped."""
    B, L, H = x_cand.shape
    keep = (attention if paper else 1.0 - attention).unsqueeze(-1)  # [B, L, 1]
    lengths = mask.sum(1)
    steps = int(lengths.max()) if B else 0
    full = bool((lengths == steps).all())
    h = x_cand.new_zeros(B, H)
    wg_t, wc_t = w_gates.t(), w_cand.t()
    for t in range(steps):
        h = _augru_step(h, x_gates[:, t], x_cand[:, t], keep[:, t], None if full else mask[:, t, None], wg_t, wc_t,
                        paper)
    return h


def _augru_step(h: Tensor, xg: Tensor, xc: Tensor, keep: Tensor, valid: Tensor | None, wg_t: Tensor, wc_t: Tensor,
                paper: bool) -> Tensor:
    """One AUGRU step without autograd (the same ops as `_AUGRUScan.forward`; inference and export): h [B, H],
    xg [B, 2H], xc [B, H], keep [B, 1], valid [B, 1] bool or None (every row valid), wg_t [H, 2H],
    wc_t [H, H] -> the next state [B, H]."""
    H = h.shape[1]
    g = torch.sigmoid(torch.addmm(xg, h, wg_t))
    c = tanh_(torch.addmm(xc, g[:, :H] * h, wc_t))  # numpy's tanh eagerly; torch's under export
    ue = g[:, H:] * keep
    h_new = torch.lerp(h, c, ue) if paper else torch.lerp(c, h, ue)
    return h_new if valid is None else torch.where(valid, h_new, h)


def _augru_step_export(h: Tensor, xg: Tensor, xc: Tensor, keep: Tensor, valid: Tensor, wg_t: Tensor, wc_t: Tensor,
                       paper: bool) -> Tensor:
    """`_augru_step` in few ONNX nodes, the body of the exported Scan (each node runs once per step): the gates
    split by one Split instead of two slices, the interpolation written out (torch.lerp becomes Less / Where
    / two branches in ONNX). Shapes as `_augru_step`, valid [B, 1] bool."""
    H = h.shape[1]
    r, u = torch.sigmoid(torch.addmm(xg, h, wg_t)).split([H, H], dim=-1)
    c = torch.tanh(torch.addmm(xc, r * h, wc_t))
    ue = u * keep
    h_new = h + ue * (c - h) if paper else c + ue * (h - c)
    return torch.where(valid, h_new, h)


@functools.cache
def _augru_loop():  # noqa: ANN202
    """`_augru_loop_py` scripted, on first use (scripting warns that TorchScript is deprecated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_augru_loop_py)


def _augru_loop_py(x_gates: Tensor, x_cand: Tensor, keep: Tensor, valid: Tensor, wg_t: Tensor, wc_t: Tensor,
                   paper: bool) -> Tensor:
    """The forward recurrence for TorchScript (scripted, tracing records the loop, so it runs any L):
    x_gates [B, L, 2H], x_cand [B, L, H], keep [B, L, 1], valid [B, L, 1] bool -> h [B, H]."""
    B, L, H = x_cand.shape
    h = x_cand.new_zeros(B, H)
    for t in range(L):
        g = torch.sigmoid(torch.addmm(x_gates[:, t], h, wg_t))
        c = torch.tanh(torch.addmm(x_cand[:, t], g[:, :H] * h, wc_t))
        ue = g[:, H:] * keep[:, t]
        h_new = torch.lerp(h, c, ue) if paper else torch.lerp(c, h, ue)
        h = torch.where(valid[:, t], h_new, h)
    return h


def _augru_scan_export(x_gates: Tensor, x_cand: Tensor, attention: Tensor, mask: Tensor, w_gates: Tensor,
                       w_cand: Tensor, paper: bool) -> Tensor:
    """The forward recurrence as torch's scan operator (torch.export; the ONNX exporter emits a Scan), time-major."""
    from torch._higher_order_ops.scan import scan

    keep = (attention if paper else 1.0 - attention).unsqueeze(-1)  # [B, L, 1]
    wg_t, wc_t = w_gates.t(), w_cand.t()

    def step(h: Tensor, xs: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h = _augru_step_export(h, *xs, wg_t, wc_t, paper)
        return h, h.new_zeros(())  # scan needs a per-step output; a scalar costs nothing

    xs = tuple(t.transpose(0, 1) for t in (x_gates, x_cand, keep, mask.unsqueeze(-1)))  # [L, B, ...]
    h, _ = scan(step, x_cand.new_zeros(x_cand.shape[0], x_cand.shape[2]), xs)
    return h


class _AUGRUScan(torch.autograd.Function):
    """AUGRU's time loop with a hand-written backward (BPTT).

    Under autograd every one of the ~14 small ops per step records a node and the backward walks them
    one by one; here the forward runs 8 ops per step without recording, keeps (h, gates, candidate) per
    step, and the backward runs the recurrence in reverse with the recurrent weight gradients taken as one
    matmul over all steps. Outputs and gradients equal the step-by-step version (tests/test_layers.py).
    Shapes: x_gates [B, L, 2H] (input part + bias of r, u), x_cand [B, L, H], attention [B, L],
    mask [B, L] bool, w_gates [2H, H], w_cand [H, H] (nn.Linear layout) -> h [B, H].
    """

    @staticmethod
    def forward(ctx, x_gates, x_cand, attention, mask, w_gates, w_cand, paper: bool):  # noqa: ANN001, ANN205
        B, L, H2 = x_gates.shape
        H = H2 // 2
        # how much of the update gate survives: a (paper) or 1 - a (code), [B, L, 1]
        keep = (attention if paper else 1.0 - attention).unsqueeze(-1)
        valid = mask.unsqueeze(-1)
        hs = x_gates.new_empty(L, B, H)  # state before step t
        gs = x_gates.new_empty(L, B, H2)  # sigmoid gates [r | u]
        cs = x_gates.new_empty(L, B, H)  # candidate
        h = x_gates.new_zeros(B, H)
        wg_t, wc_t = w_gates.t(), w_cand.t()
        for t in range(L):
            hs[t] = h
            g = torch.sigmoid(torch.addmm(x_gates[:, t], h, wg_t), out=gs[t])
            c = torch.tanh(torch.addmm(x_cand[:, t], g[:, :H] * h, wc_t), out=cs[t])
            ue = g[:, H:] * keep[:, t]
            # code: h' = ue * h + (1 - ue) * c = lerp(c, h, ue); paper: h' = (1 - ue) * h + ue * c = lerp(h, c, ue)
            h_new = torch.lerp(h, c, ue) if paper else torch.lerp(c, h, ue)
            h = torch.where(valid[:, t], h_new, h)
        ctx.save_for_backward(hs, gs, cs, keep, valid, w_gates, w_cand)
        ctx.paper = paper
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):  # noqa: ANN001, ANN205
        hs, gs, cs, keep, valid, w_gates, w_cand = ctx.saved_tensors
        L, B, H = hs.shape
        paper = ctx.paper
        d_gates = grad_h.new_empty(L, B, 2 * H)  # time-major, like hs, for the weight gradients
        d_cand = grad_h.new_empty(L, B, H)
        d_keep = grad_h.new_empty(L, B)
        vf = valid.to(grad_h.dtype)
        dh = grad_h
        for t in range(L - 1, -1, -1):
            h, g, c = hs[t], gs[t], cs[t]
            r, u = g[:, :H], g[:, H:]
            k = keep[:, t]
            dn = dh * vf[:, t]  # gradient reaching h' (a padded step passes dh straight to h)
            ue = u * k
            if paper:  # h' = h + ue * (c - h)
                d_ue = dn * (c - h)
                dc, dh_next = dn * ue, dh - dn * ue
            else:  # h' = c + ue * (h - c)
                d_ue = dn * (h - c)
                dc, dh_next = dn - dn * ue, dh - dn + dn * ue
            d_keep[t] = (d_ue * u).sum(-1)
            dcp = torch.mul(dc, 1.0 - c * c, out=d_cand[t])  # through tanh
            d_rh = dcp @ w_cand
            dg = d_gates[t]
            torch.mul(d_rh, h, out=dg[:, :H])
            torch.mul(d_ue, k, out=dg[:, H:])
            dg.mul_(g * (1.0 - g))  # through sigmoid
            dh = dh_next + d_rh * r + dg @ w_gates
        rh = gs[..., :H] * hs  # [L, B, H] the inputs of the candidate's recurrent matmul
        d_wg = d_gates.reshape(L * B, 2 * H).t() @ hs.reshape(L * B, H)
        d_wc = d_cand.reshape(L * B, H).t() @ rh.reshape(L * B, H)
        d_att = d_keep.t() if paper else -d_keep.t()
        return d_gates.transpose(0, 1), d_cand.transpose(0, 1), d_att, None, d_wg, d_wc, None


class _CompiledAUGRU(torch.autograd.Function):
    """`_AUGRUScan` with its time loops, forward and backward, in the compiled kernels (rows split over the
    threads); the recurrent weights' gradients as there, one matmul over every step. Same arguments and result;
    held to `_AUGRUScan` by tests/test_compiled.py. The loops stop at the batch's longest row."""

    @staticmethod
    def forward(ctx, x_gates, x_cand, attention, mask, w_gates, w_cand, paper: bool):  # noqa: ANN001, ANN205
        keep = attention if paper else 1.0 - attention
        steps = _longest(mask)
        h, hs, gs, cs = compiled.ops().augru_train_forward(x_gates, x_cand, keep, mask, w_gates, w_cand, paper,
                                                           steps)
        ctx.save_for_backward(hs, gs, cs, keep, mask, w_gates, w_cand)
        ctx.paper, ctx.L = paper, mask.shape[1]
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):  # noqa: ANN001, ANN205
        hs, gs, cs, keep, mask, w_gates, w_cand = ctx.saved_tensors
        d_gates, d_cand, d_keep = compiled.ops().augru_train_backward(grad_h, hs, gs, cs, keep, mask, w_gates,
                                                                      w_cand, ctx.paper, ctx.L)
        steps, _, H = hs.shape
        d_wg = d_gates[:steps].reshape(-1, 2 * H).t() @ hs.reshape(-1, H)
        d_wc = d_cand[:steps].reshape(-1, H).t() @ (gs[..., :H] * hs).reshape(-1, H)
        d_att = d_keep.t() if ctx.paper else -d_keep.t()
        return d_gates.transpose(0, 1), d_cand.transpose(0, 1), d_att, None, d_wg, d_wc, None


class AuxiliaryLoss(nn.Module):
    """DIEN's auxiliary loss: the extractor state h_t must tell the real next behaviour e_{t+1} from the
    sampled negative at t+1.

    Network (official `auxiliary_net`): [h_t, e] -> norm -> 100 sigmoid -> 50 sigmoid -> 1 logit, shared
    by the clicked and the negative input. Loss per valid pair (t, t+1): -log p(e_{t+1}) - log(1 - p(neg)),
    averaged over valid pairs. (The code averages over all B x (L-1) slots, padding included, which makes
    the loss depend on the padded width; and adds 1e-8 inside the log. We use exact BCE with logits.)
    Only valid pairs enter the network, so a "batchnorm" norm sees no padding.
    """

    def __init__(self, state_dim: int, embed_dim: int, *, hidden: Sequence[int] = (100, 50), norm: Norm = "affine"):
        super().__init__()
        self.net = MLP(state_dim + embed_dim, hidden, activation="sigmoid", norm=norm)

    def forward(self, states: Tensor, clicked: Tensor, negative: Tensor, mask: Tensor) -> Tensor:
        """states [B, L, H], clicked / negative [B, L, D], mask [B, L] bool -> scalar."""
        pairs = mask[:, 1:]  # (t, t+1) both valid, since histories are left-aligned
        h = states[:, :-1][pairs]  # [N, H]
        pos_logit = self.net(torch.cat([h, clicked[:, 1:][pairs]], dim=-1)).squeeze(-1)  # [N]
        neg_logit = self.net(torch.cat([h, negative[:, 1:][pairs]], dim=-1)).squeeze(-1)
        loss = F.softplus(-pos_logit) + F.softplus(neg_logit)  # -log sigmoid(pos) - log(1 - sigmoid(neg))
        return loss.sum() / pairs.sum().clamp(min=1)
