"""How canctr's hot loops get their memory: glibc's malloc and the kernel's transparent huge pages.

Training and `prepare table` both allocate and free the same large buffers over and over (a training step's
embedding-table gradients and Adam temporaries, a few MB each; a prepare batch's 20-80 MB arrays). With
glibc's defaults a request above the mmap threshold (128 KiB at start, raised by glibc itself only after a
large mapped block is freed, at most to 32 MiB) is a fresh mapping that `free` unmaps, so every step or
batch faults its pages in and has the kernel zero them anew; with transparent huge pages each such 2 MiB
fault may also be compacted synchronously. Measured: on Beauty CAN-DNN at batch 128, 463 minor faults a step
and ~10 % of it (benchmarks/results/before_after_feature_spec_beauty_allocator.md); in a 5 M-row prepare,
~400k faults and the largest item of the CPU profile (benchmarks/results/prepare_table_cpu.md).

* `keep_freed_memory()`: once per training process (`fit`, `bench`): mmap threshold 32 MiB, trim threshold
  256 MiB, so a step's buffers come from and return to the heap.
* `kept_heap()`: around a prepare: nothing mmapped, nothing trimmed; restored (and the heap trimmed) after.
* `small_pages()`: around a prepare: no transparent huge pages for the process (prctl) nor numpy's requests.

glibc / Linux only; elsewhere, or with CANCTR_MALLOC_TUNING=0, nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc malloc.h
_MMAP_MAX_MB = 32  # glibc refuses a larger mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
_GLIBC_MMAP_MAX = 65536  # glibc's default number of mmapped blocks
_PR_SET_THP_DISABLE, _PR_GET_THP_DISABLE = 41, 42  # linux/prctl.h

_applied: bool | None = None
_trim_after = 64 << 20  # the trim threshold kept_heap restores: glibc's own once its mmap threshold is at 32 MiB


def _tuning_on() -> bool:
    return os.environ.get("CANCTR_MALLOC_TUNING", "1") != "0"


def _libc() -> Any | None:
    """glibc's mallopt and malloc_trim with their signatures, or None (another libc, or no ctypes access)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return None
    return libc


def keep_freed_memory(mmap_mb: int = _MMAP_MAX_MB, trim_mb: int = 256) -> bool:
    """Set glibc's mmap threshold to `mmap_mb` and trim threshold to `trim_mb` for this process, once.
    Returns whether the settings are in force (False off glibc or when CANCTR_MALLOC_TUNING=0)."""
    global _applied, _trim_after
    if not 0 < mmap_mb <= _MMAP_MAX_MB or trim_mb < mmap_mb:
        raise ValueError(f"keep_freed_memory: need 0 < mmap_mb <= {_MMAP_MAX_MB} and trim_mb >= mmap_mb, "
                         f"got {mmap_mb}, {trim_mb}")
    if _applied is not None:
        return _applied
    _applied = False
    libc = _libc() if _tuning_on() else None
    if libc is None:
        return False
    # the trim threshold first: setting either one turns off glibc's dynamic adjustment of both
    _applied = libc.mallopt(_M_TRIM_THRESHOLD, trim_mb << 20) == 1 and libc.mallopt(_M_MMAP_THRESHOLD,
                                                                                     mmap_mb << 20) == 1
    if _applied:
        _trim_after = trim_mb << 20
    return _applied


@contextlib.contextmanager
def kept_heap() -> Iterator[None]:
    """Within the block every request comes from the heap (M_MMAP_MAX 0) and freed memory stays there (trim
    threshold 2 GiB): the same pages serve batch after batch (~400k -> ~170k faults per 5 M-row prepare).
    Afterwards mmap is allowed again, the trim threshold restored and the heap trimmed."""
    libc = _libc() if _tuning_on() else None
    if libc is not None and not (libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
                                 and libc.mallopt(_M_MMAP_MAX, 0) == 1):
        libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _trim_after)
            libc.malloc_trim(0)


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """No transparent huge pages within the block (restored afterwards). numpy asks for them (madvise) on
    every array of 4 MiB or more, and pyarrow's mimalloc on its 1 GiB arena; a prepare allocates and frees
    such memory batch after batch, mimalloc purges what is freed (MADV_DONTNEED), and each fresh 2 MiB fault
    is compacted and zeroed synchronously (THP defrag "madvise", the kernel default): up to a sixth of the
    CPU time, varying with the memory's fragmentation, and ~70 MB more peak RSS. Linux's per-process switch
    (prctl PR_SET_THP_DISABLE) covers both; numpy's own switch is turned off as well (other systems)."""
    switch = getattr(getattr(np, "_core", np).multiarray, "_set_madvise_hugepage", None)
    previous = switch(False) if switch is not None else None
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None).prctl
            prctl.restype = ctypes.c_int
            # only where THP is on for this process now (nothing to do, and nothing to restore, otherwise)
            if prctl(_PR_GET_THP_DISABLE, 0, 0, 0, 0) != 0 or prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
                prctl = None
        except (OSError, AttributeError):
            prctl = None
    try:
        yield
    finally:
        if switch is not None:
            switch(previous)
        if prctl is not None:
            prctl(_PR_SET_THP_DISABLE, 0, 0, 0, 0)


__all__ = ["keep_freed_memory", "kept_heap", "small_pages"]
