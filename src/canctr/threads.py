"""How many threads a canctr process computes with, decided once, early, from the cores it may really use.

torch starts one OpenMP thread per CPU the process may be scheduled on (its affinity mask), whatever its
container's CPU quota allows (a 2-CPU quota on a 64-core host: 64 threads), and every process on the machine
does the same.
Two trainings side by side on 2 cores then run 4 threads, and libgomp's threads spin while they wait for
work, on the cores the other process needs: measured on Beauty can-dnn at batch 128, each kept 4 % of its
solo samples/s (benchmarks/results/concurrent_training_cpu.md).

* `available_cores()`: the CPUs this process may run on (sched_getaffinity) bounded by the cgroup CPU quota
  (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us), rounded up, at least 1.
* `resolve_threads(n)`: `--threads N` if given, else OMP_NUM_THREADS if set, else `available_cores()`.
* `set_threads(n)`: torch.set_num_threads (and inter-op threads, while that is still allowed) and
  OMP_NUM_THREADS for the processes this one starts (bench cells, serve workers, reproduce cells).

The OpenMP wait policy is left as it is (libgomp's spin, then sleep). torch's pip wheels use libgomp, which
reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once, when torch is imported. Shorter spinning lets two oversubscribed
processes share the cores far better, but every one tried also slowed a training alone on its cores
(PASSIVE: -36 %; GOMP_SPINCOUNT=1000: -9 %, with each of a pair at 54 % of solo): see
benchmarks/results/concurrent_training_cpu.md and concurrent_training_solo_cpu.md. Side by side, give each
job its share of the cores instead (`--threads`, `canctr reproduce --jobs N`), or set one of them yourself.

Standard library only at import time (torch is imported by `set_threads`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_v2_quota(text: str) -> float | None:
    """'max 100000' -> None (no quota); '150000 100000' -> 1.5 (CPUs)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota = int(parts[0])
    period = int(parts[1]) if len(parts) > 1 else 100000  # the kernel's default period
    return quota / period if quota > 0 and period > 0 else None


def _cgroup_v1_quota(quota_text: str, period_text: str) -> float | None:
    """cpu.cfs_quota_us '-1' -> None (no quota); '200000' over period '100000' -> 2.0."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroup_dirs(root: Path, proc_cgroup: Path = Path("/proc/self/cgroup")) -> list[Path]:
    """The cgroup directories of this process that may hold a CPU quota: its own (from /proc/self/cgroup,
    when it is visible under `root`) and their parents (a parent's quota bounds its children), then the
    mount roots (a container with its own cgroup namespace sees its cgroup as the root)."""
    dirs: list[Path] = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1], Path(parts[2].lstrip("/"))
        if controllers == "":  # v2
            bases = [root]
        elif "cpu" in controllers.split(","):  # v1, mounted at cpu or cpu,cpuacct
            bases = [root / "cpu", root / "cpu,cpuacct"]
        else:
            continue
        for base in bases:
            dirs += [base / p for p in (rel, *rel.parents) if p != Path(".")]
    return dirs + [root, root / "cpu", root / "cpu,cpuacct"]


def cgroup_cpu_limit(root: Path | str = CGROUP_ROOT, dirs: list[Path] | None = None) -> float | None:
    """The tightest CPU quota (in CPUs, may be fractional) among this process's cgroup files under `root`,
    or None when there is none (or nothing readable). `dirs` replaces the directories looked at (tests)."""
    root = Path(root)
    limits = []
    for d in dirs if dirs is not None else _own_cgroup_dirs(root):
        try:
            if (d / "cpu.max").is_file():
                limits.append(_cgroup_v2_quota((d / "cpu.max").read_text()))
            elif (d / "cpu.cfs_quota_us").is_file():
                limits.append(_cgroup_v1_quota((d / "cpu.cfs_quota_us").read_text(),
                                               (d / "cpu.cfs_period_us").read_text()))
        except (OSError, ValueError, IndexError):  # unreadable or malformed: no limit from this file
            continue
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def available_cores(root: Path | str = CGROUP_ROOT, dirs: list[Path] | None = None) -> int:
    """CPUs this process may use: its affinity mask, bounded by the cgroup quota rounded up; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, dirs)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def check_threads(n: int | None, option: str = "--threads") -> int | None:
    if n is not None and n < 1:
        raise ValueError(f"{option} must be a positive number of threads, got {n}")
    return n


def resolve_threads(n: int | None = None) -> int:
    """`n` (--threads) if given, else a valid OMP_NUM_THREADS, else `available_cores()`."""
    if check_threads(n) is not None:
        return n
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # "4,2" is a nested-levels list
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()


_applied: int | None = None
_requested: int | None = None  # --threads as given (None: not given)


def requested_threads() -> int | None:
    """The `--threads` count this process was started with, or None when the user did not give one."""
    return _requested


def set_threads(n: int | None = None) -> int:
    """Use `resolve_threads(n)` intra-op threads in this process and in the processes it starts; returns
    the count. Call it once, early, before any parallel work (inter-op threads can only be set before)."""
    global _applied, _requested
    threads = resolve_threads(n)
    _requested = n if n is not None else _requested
    os.environ["OMP_NUM_THREADS"] = str(threads)  # child processes (bench cells, serve workers) inherit it
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if _applied is None:
        try:  # allowed once, before the inter-op pool starts; the pool runs torch.jit forks and the like
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass
    _applied = threads
    return threads


__all__ = ["available_cores", "cgroup_cpu_limit", "requested_threads", "resolve_threads", "set_threads"]
