"""Elementwise kernels for inference (no gradient), where torch's own are slow on the CPU.

`tanh_`: torch 2.13's CPU tanh costs about 2 ns per float32 element and thread on the AVX-512 machine the
benchmarks run on (10x its sigmoid); numpy's SIMD tanh is about 6x faster on one thread and within 2 ulp
(max abs difference to float64 tanh 6e-8, torch's 3e-8), recorded in benchmarks/results/serve_latency_cpu.md.
The co-action unit's first layer and DIEN's AUGRU apply tanh to every (candidate, position), so scoring
spends a large part of its time there. Training (a tensor that needs a gradient), other devices and dtypes,
and tracing / export keep `torch.tanh`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def tanh_(t: Tensor) -> Tensor:
    """tanh of `t`, in place when no gradient is needed (`t` must then be a fresh tensor the caller owns)."""
    if (t.requires_grad or t.device.type != "cpu" or t.dtype != torch.float32 or torch.jit.is_tracing()
            or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        return torch.tanh(t)
    a = t.numpy()
    np.tanh(a, out=a)
    return t


__all__ = ["tanh_"]
