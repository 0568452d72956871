"""A one-line description of the machine, recorded next to every measured number."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device | str | None = None) -> str:
    """e.g. 'AMD EPYC 7B13, 2 cores, 2 torch threads, torch 2.13.0+cpu' (+ the GPU when on CUDA)."""
    parts = [cpu_model(), f"{os.cpu_count()} cores", f"{torch.get_num_threads()} torch threads",
             f"torch {torch.__version__}"]
    if device is not None and torch.device(device).type == "cuda":
        parts.append(torch.cuda.get_device_name(torch.device(device)))
    return ", ".join(parts)
