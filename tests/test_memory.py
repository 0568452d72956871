"""The allocator setting of canctr/memory.py: with it, a freed megabyte-sized buffer (an embedding
table's gradient, one of Adam's temporaries) stays in the heap for the next step instead of being a fresh
mapping each time. Checked through glibc's own accounting (mallinfo2) in a fresh interpreter, since the
setting is process-wide; its effect on step time and page faults is recorded by
benchmarks/before_after.py --untuned (benchmarks/results/before_after_feature_spec_beauty_allocator.md)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from canctr.memory import keep_freed_memory

BLOCK = r"""
import ctypes, ctypes.util, json
from canctr.memory import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2()
p = libc.malloc(16 << 20)  # 16 MB, the size of a large table's gradient
mapped = libc.mallinfo2().hblkhd - before.hblkhd  # bytes in separate mappings
libc.free(p)
kept = libc.mallinfo2().fordblks - before.fordblks  # free bytes the heap keeps for reuse
print(json.dumps({"applied": applied, "mapped": mapped, "kept": kept}))
"""


def _block(tuning: str) -> dict:
    env = {**os.environ, "CANCTR_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", BLOCK], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc_with_mallinfo2() -> bool:
    lib, version = platform.libc_ver()
    return platform.system() == "Linux" and lib == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 33)


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="mallopt and mallinfo2 are glibc's (2.33+)")
def test_a_freed_large_buffer_stays_in_the_heap() -> None:
    untuned, tuned = _block("0"), _block("1")
    assert untuned == {"applied": False, "mapped": untuned["mapped"], "kept": 0}
    assert untuned["mapped"] >= 16 << 20  # glibc's default: its own mapping, unmapped on free
    assert tuned["applied"] is True and tuned["mapped"] == 0  # served from the heap ...
    assert tuned["kept"] >= 15 << 20  # ... and (all but what the allocation itself reused) kept after the free


@pytest.mark.parametrize(("mmap_mb", "trim_mb"), [(0, 256), (64, 256), (32, 16)])
def test_impossible_thresholds_are_refused(mmap_mb: int, trim_mb: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import canctr.memory as memory

    monkeypatch.setattr(memory, "_applied", None)
    with pytest.raises(ValueError, match="keep_freed_memory: need"):
        keep_freed_memory(mmap_mb, trim_mb)
