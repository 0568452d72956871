"""The co-action unit alone, forward + backward: one bmm per layer (the current `_micro_matmul`) against the
einsum it replaced, in alternating rounds.

    python benchmarks/coaction_unit_ab.py --out benchmarks/results/coaction_unit_ab_cpu.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import canctr.layers.coaction as co
from canctr.env import machine_description


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256, help="rows of one unit call (2 pairs x 128 samples)")
    ap.add_argument("--length", type=int, default=12, help="history width (Beauty's bucketed batches: ~12)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    unit = co.CoAction()
    ind = torch.randn(a.batch, unit.induction_dim, requires_grad=True)
    feed = torch.randn(a.batch, a.length, unit.feed_dim, requires_grad=True)
    mask = torch.rand(a.batch, a.length) < 0.7
    variants = {"bmm": co._micro_matmul, "einsum": lambda h, w: torch.einsum("bcli,bclio->bclo", h, w)}
    outs = {}
    for name, fn in variants.items():
        co._micro_matmul = fn
        outs[name] = unit(ind, feed, mask).detach()
    assert torch.allclose(outs["bmm"], outs["einsum"], atol=1e-5), "the two forms disagree"
    ms: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(a.rounds):
        for name in (list(variants) if r % 2 else list(variants)[::-1]):
            co._micro_matmul = variants[name]
            for _ in range(10):
                unit(ind, feed, mask).sum().backward()
            t = time.perf_counter()
            for _ in range(a.iters):
                unit(ind, feed, mask).sum().backward()
            ms[name].append((time.perf_counter() - t) / a.iters * 1e3)
    co._micro_matmul = variants["bmm"]
    ratios = sorted(e / b for e, b in zip(ms["einsum"], ms["bmm"]))
    lines = ["# Co-action unit, forward + backward: bmm per layer vs einsum", "",
             f"Command: `python benchmarks/coaction_unit_ab.py {' '.join(sys.argv[1:])}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {machine_description()}; "
             f"batch {a.batch}, width {a.length}, {a.rounds} alternating rounds of {a.iters} calls", "",
             "| form | median ms | per-round ms |", "|---|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.3f} | {', '.join(f'{x:.2f}' for x in v)} |" for k, v in ms.items()]
    lines += ["", f"einsum / bmm per round: median {statistics.median(ratios):.2f} "
              f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})"]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
