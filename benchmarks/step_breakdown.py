"""Where a training step's time goes, per model and history width, and how close it runs to the FLOP peak.

    python benchmarks/step_breakdown.py --data data/beauty data/ml1m data/taobao200 \
        --models dnn can-dnn din dien can-dien --batch-size 128 --out benchmarks/results/step_breakdown_cpu

For each (data set, model), in one process, on the same real batches (`canctr.bench.training_batches`):

* step ms: mean of --steps timed training steps (forward, backward, Adam) after 10 warm-up steps;
* forward by part: the model's top-level modules timed by forward hooks (the embeddings, the interest extractor,
  the auxiliary loss, the attention, AUGRU, each feature block such as the co-action block, the MLP head);
  whatever the model's forward does outside them is "forward, rest"; then the backward and the optimizer step;
* by operator kind: the self CPU time of torch.profiler's operators over the same steps, grouped (matmul,
  elementwise and activations, embedding gathers and their backward, the hand-written recurrences' own
  Python-level work, copies and reshapes, the rest);
* FLOPs: matmul FLOPs of one step's forward and backward (torch.utils.flop_counter: mm, addmm, bmm, baddbmm and
  what nn.GRU decomposes into; elementwise work is not counted) over the same batches, and the achieved
  GFLOP/s beside the machine's float32 matmul peak measured in the same process (`canctr.bench.matmul_peak_gflops`).

A history's width is the data set's: Beauty (median 6 events, window 100), MovieLens-1M (most of the 50-wide
window full), the Taobao subset prepared with `--protocol all --max-len 200` (up to 200).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from canctr.bench import matmul_peak_gflops, training_batches
from canctr.data.schema import Schema
from canctr.env import machine_description
from canctr.models import create_model
from canctr.train.loop import batch_loss, train_step
from canctr.train.optim import make_optimizer

KINDS = {  # operator -> kind; anything else is "other"
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"),
    "embedding gather / scatter": ("aten::index_select", "aten::embedding", "aten::embedding_dense_backward",
                                   "aten::index_add_", "aten::_index_put_impl_", "aten::index"),
    "copies and reshapes": ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::stack",
                            "aten::as_strided", "aten::view", "aten::select", "aten::slice", "aten::transpose",
                            "aten::empty", "aten::zeros", "aten::fill_", "aten::zero_", "aten::expand"),
    "optimizer": ("aten::_fused_adam_", "aten::_foreach_add_", "Optimizer.step#Adam.step",
                  "Optimizer.zero_grad#Adam.zero_grad"),
}
ELEMENTWISE = ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::sigmoid", "aten::tanh", "aten::where",
               "aten::masked_fill", "aten::softmax", "aten::_softmax", "aten::lerp", "aten::addcmul", "aten::sum",
               "aten::mean", "aten::neg", "aten::rsub", "aten::exp", "aten::log", "aten::softplus", "aten::prelu",
               "aten::_prelu_kernel", "aten::native_batch_norm", "aten::clamp", "aten::pow", "aten::sqrt",
               "aten::max", "aten::min", "aten::gt", "aten::lt", "aten::eq", "aten::ne", "aten::ge", "aten::le",
               "aten::logical_not", "aten::bitwise_not", "aten::binary_cross_entropy_with_logits")


def kind_of(name: str) -> str:
    for kind, names in KINDS.items():
        if name in names:
            return kind
    base = name.rstrip("_")
    if base in ELEMENTWISE or name.endswith("_backward") or base.startswith(ELEMENTWISE):
        return "elementwise and activations"
    if name.startswith("_") and ("Scan" in name or "GRU" in name):
        return "recurrence loops (own Python)"
    return "other"


def forward_parts(model: torch.nn.Module) -> tuple[dict[str, float], list]:
    """Forward hooks on the model's top-level modules (each block of `blocks` by its class): seconds accumulate
    into the returned dict; the hook handles to remove."""
    seconds: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}
    handles = []
    parts = []
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList):
            parts += [(type(m).__name__, m) for m in child]
        else:
            parts.append((name, child))
    for name, m in parts:
        handles.append(m.register_forward_pre_hook(
            lambda mod, args, n=name: started.__setitem__(n, time.perf_counter())))
        handles.append(m.register_forward_hook(
            lambda mod, args, out, n=name: seconds.__setitem__(n, seconds[n] + time.perf_counter() - started[n])))
    return seconds, handles


def cell(data: str, name: str, batch_size: int, steps: int, max_len: int) -> dict:
    schema = Schema.load(data)
    batches = training_batches(data, batch_size, steps + 10, negatives=("hist",), max_len=max_len)
    torch.manual_seed(0)
    model = create_model(name, schema)
    opt = make_optimizer(model, 1e-3, "adam")
    for b in batches[:10]:
        train_step(model, b, opt)
    # whole steps
    times = []
    for b in batches[10:]:
        t0 = time.perf_counter()
        train_step(model, b, opt)
        times.append(time.perf_counter() - t0)
    step = statistics.mean(times)  # a mean, like the parts and the FLOPs below (the batches' widths differ)
    # forward by part, backward, optimizer (the same batches again)
    fwd, handles = forward_parts(model)
    phase = defaultdict(float)
    for b in batches[10:]:
        model.train()
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = batch_loss(model, b)[0]
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        phase["forward"] += t1 - t0
        phase["backward"] += t2 - t1
        phase["optimizer"] += t3 - t2
    for h in handles:
        h.remove()
    n = len(batches) - 10
    parts = {k: v / n * 1e3 for k, v in fwd.items()}
    parts["forward, rest"] = phase["forward"] / n * 1e3 - sum(parts.values())
    parts["backward"] = phase["backward"] / n * 1e3
    parts["optimizer"] = phase["optimizer"] / n * 1e3
    # operator kinds
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[10:]:
            train_step(model, b, opt)
    kinds: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        kinds[kind_of(e.key)] += e.self_cpu_time_total / 1e3 / n
    # FLOPs
    flops = []
    for b in batches[10:]:
        with FlopCounterMode(display=False) as fc:
            opt.zero_grad(set_to_none=True)
            batch_loss(model, b)[0].backward()
        flops.append(fc.get_total_flops())
    widths = [b.mask("hist").shape[1] if "hist" in b.lengths else 0 for b in batches[10:]]  # padded widths
    return {"data": schema.dataset, "data_dir": data, "model": name, "batch_size": batch_size,
            "max_width_seen": max(widths), "mean_width": statistics.mean(widths), "step_ms": step * 1e3,
            "parts_ms": parts, "kinds_ms": dict(kinds),
            "flops_per_step": statistics.mean(flops), "gflops": statistics.mean(flops) / step / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--models", nargs="+", default=["dnn", "can-dnn", "din", "dien", "can-dien"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-len", type=int, default=200, help="training history cut-off (canctr train: --max-len, "
                    "default 100; 200 here so the Taobao subset runs at its full width)")
    ap.add_argument("--out", default="benchmarks/results/step_breakdown_cpu")
    a = ap.parse_args()
    peak = matmul_peak_gflops()
    cells = []
    for data in a.data:
        for name in a.models:
            c = cell(data, name, a.batch_size, a.steps, a.max_len)
            cells.append(c)
            print(f"{data} {name}: {c['step_ms']:.2f} ms/step, {c['gflops']:.1f} GFLOP/s "
                  f"({c['gflops'] / peak:.1%} of {peak:.0f})", flush=True)
    peak_after = matmul_peak_gflops()
    command = "python benchmarks/step_breakdown.py " + " ".join(sys.argv[1:])
    result = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(),
              "threads": torch.get_num_threads(), "matmul_peak_gflops": [peak, peak_after], "cells": cells}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    peak = max(r["matmul_peak_gflops"])
    lines = [f"# Where a training step's time goes (batch {r['cells'][0]['batch_size']}, CPU)", "",
             f"Command: `{r['command']}`  ",
             f"Date: {r['date']}; machine: {r['machine']}", "",
             f"Float32 matmul peak measured in the same process (2048 x 2048, best of 10), before and after the "
             f"cells: {r['matmul_peak_gflops'][0]:.0f} / {r['matmul_peak_gflops'][1]:.0f} GFLOP/s; the "
             f"fraction below is of the higher. FLOPs are the step's matmul FLOPs (forward + backward).", "",
             "Width: the timed batches' padded history width (each batch is padded to its longest history; "
             "length-bucketed batches as in training), mean and max.", "",
             "| data | width mean / max | model | step ms | matmul GFLOP / step | achieved GFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        lines.append(f"| {c['data']} | {c['mean_width']:.0f} / {c['max_width_seen']} | {c['model']} | "
                     f"{c['step_ms']:.2f} | "
                     f"{c['flops_per_step'] / 1e9:.3f} | {c['gflops']:.1f} | {c['gflops'] / peak:.1%} |")
    lines += ["", "## By part (ms per step; forward parts by forward hooks, then backward and optimizer)", ""]
    for c in r["cells"]:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in c["parts_ms"].items())
        lines.append(f"- **{c['data']} {c['model']}** ({c['step_ms']:.2f} ms): {parts}")
    kinds = sorted({k for c in r["cells"] for k in c["kinds_ms"]})
    lines += ["", "## By operator kind (self CPU ms per step, torch.profiler)", "",
              "| data | model | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for c in r["cells"]:
        lines.append(f"| {c['data']} | {c['model']} | " + " | ".join(f"{c['kinds_ms'].get(k, 0):.2f}" for k in kinds)
                     + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
