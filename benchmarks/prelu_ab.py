"""PReLU forward + backward: the clamp formula (`PReLU.reference_forward`) against torch's fused kernel
(`PReLU.forward`), alternating rounds in one process, median microseconds per call.

    python benchmarks/prelu_ab.py --out benchmarks/results/prelu_ab_cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=[128, 200])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from canctr.bench import write_results
    from canctr.env import machine_description
    from canctr.layers.mlp import PReLU

    layer = PReLU(a.shape[1])
    x0, grad = torch.randn(*a.shape), torch.ones(*a.shape)
    variants = {"clamp formula (reference)": layer.reference_forward, "fused kernel": layer.forward}
    us: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(a.rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            fn = variants[name]
            t0 = time.perf_counter()
            for _ in range(a.calls):
                fn(x0.detach().requires_grad_()).backward(grad)
            us[name].append(1e6 * (time.perf_counter() - t0) / a.calls)
    med = {k: statistics.median(v) for k, v in us.items()}
    command = "python benchmarks/prelu_ab.py " + " ".join(sys.argv[1:])
    lines = [f"# PReLU forward + backward at {a.shape[0]} x {a.shape[1]}", "", f"Command: `{command}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {machine_description()}", "",
             "| variant | median µs per call | rounds (µs) |", "|---|---|---|"]
    lines += [f"| {k} | {med[k]:.1f} | {' '.join(f'{x:.0f}' for x in us[k])} |" for k in variants]
    print("\n".join(lines))
    if a.out:
        write_results(a.out, {"command": command, "shape": a.shape, "us": us, "median_us": med}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
