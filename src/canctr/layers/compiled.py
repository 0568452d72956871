"""Compiled CPU kernels (canctr/csrc), built on first use with torch.utils.cpp_extension and cached.

`ops()` returns `torch.ops.canctr_cpu` (DIEN's recurrences: `augru_infer`, `gru_infer` for scoring, and
`augru_train_forward` / `_backward`, `gru_train_forward` / `_backward` for training), or None where they cannot
be built (no C++ compiler or ninja) or are turned off with `CANCTR_COMPILED=0`; callers then
run the Python loops the kernels are tested against. The first build takes about 10 s (cached under
`TORCH_EXTENSIONS_DIR`, by default ~/.cache/torch_extensions; concurrent processes wait on one build).
"""

from __future__ import annotations

import functools
import os
import re
import threading
import warnings
from pathlib import Path

import torch

_SOURCES = [Path(__file__).resolve().parent.parent / "csrc" / "recurrent.cpp"]


def enabled() -> bool:
    """False when `CANCTR_COMPILED` is set to 0 / false / no / off (the Python loops run instead)."""
    return os.environ.get("CANCTR_COMPILED", "1").strip().lower() not in ("0", "false", "no", "off")


_LOCK = threading.Lock()  # one build per process, whichever thread asks first


@functools.cache
def _load() -> object | None:
    with _LOCK:
        return _build()


def _build() -> object | None:
    try:
        from torch.utils import cpp_extension

        # -fopenmp: ATen's parallel_for is inline code whose OpenMP pragma must be compiled in; the library then
        # binds to the libgomp torch has loaded (same soname), one thread pool
        cpp_extension.load(_name(), [str(s) for s in _SOURCES], extra_cflags=["-O3", "-fopenmp"],
                           extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
        return torch.ops.canctr_cpu
    except Exception as e:  # noqa: BLE001 - any build failure: fall back, say why once
        cause = e.__cause__ or e  # torch's "Could not load this library" carries the loader's reason
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        warnings.warn(f"canctr: compiled CPU kernels unavailable ({reason}); using the Python loops", stacklevel=4)
        return None


def _name() -> str:
    """The build's name, one per torch version: a library built against another torch's headers is never loaded
    (torch's own cache key covers the sources and flags, not the torch it was built with)."""
    return "canctr_cpu_kernels_torch_" + re.sub(r"\W", "_", torch.__version__)


def ops() -> object | None:
    """The compiled kernels, or None (not buildable here, or turned off by CANCTR_COMPILED=0)."""
    return _load() if enabled() else None


def warm_kernels(model: torch.nn.Module) -> None:
    """Build (or load) the kernels now if `model` runs one of them, so that a server's first request or a timed
    loop does not pay for it."""
    from canctr.layers.sequence import AUGRU, InterestExtractor

    if any(isinstance(m, (AUGRU, InterestExtractor)) for m in model.modules()):
        ops()


__all__ = ["enabled", "ops", "warm_kernels"]
