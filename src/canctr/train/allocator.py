"""Keep the training step's freed buffers in the process heap instead of handing them back to the OS.

Every step allocates and frees the same few megabyte-sized buffers (the dense gradients of the embedding
tables, Adam's temporaries). glibc's malloc serves a request above its mmap threshold (128 KiB at start)
with a fresh `mmap` and unmaps it on `free`, so each step touches those pages anew: on Beauty CAN-DNN at
batch 128 that is ~400-500 minor page faults and ~8% of the step (benchmarks/results/
allocator_faults_cpu.md). glibc raises the threshold by itself once a large mapped block is freed, which
the earlier in-RAM arrays did by accident while loading; the memory-mapped store frees nothing large, so
the threshold stays low. Setting it (and the heap's trim threshold) once at start makes the steady state
fault-free. The cost is that up to `trim_mb` of freed memory stays in the process, well under one step's
working set of a real model.

glibc only (Linux); elsewhere, or with CANCTR_MALLOC_TUNING=0, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_MAX_MB = 32  # glibc refuses a larger mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)

_applied: bool | None = None


def keep_freed_memory(mmap_mb: int = _MMAP_MAX_MB, trim_mb: int = 256) -> bool:
    """Set glibc's mmap threshold to `mmap_mb` and trim threshold to `trim_mb` for this process, once.
    Returns whether the settings are in force (False off glibc or when CANCTR_MALLOC_TUNING=0)."""
    global _applied
    if not 0 < mmap_mb <= _MMAP_MAX_MB or trim_mb < mmap_mb:
        raise ValueError(f"keep_freed_memory: need 0 < mmap_mb <= {_MMAP_MAX_MB} and trim_mb >= mmap_mb, "
                         f"got {mmap_mb}, {trim_mb}")
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("CANCTR_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the trim threshold first: setting either one turns off glibc's dynamic adjustment of both
    ok = mallopt(_M_TRIM_THRESHOLD, trim_mb << 20) == 1 and mallopt(_M_MMAP_THRESHOLD, mmap_mb << 20) == 1
    _applied = ok
    return ok


__all__ = ["keep_freed_memory"]
