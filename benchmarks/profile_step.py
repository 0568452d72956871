"""Where a training step's time goes: torch.profiler over a few steps of one model, top operators.

    python benchmarks/profile_step.py --data data/beauty --models dien can-dien --batch-size 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from canctr.bench import training_batches
from canctr.data.schema import Schema
from canctr.env import machine_description
from canctr.models import create_model
from canctr.train.loop import resolve_device, train_step
from canctr.train.optim import make_optimizer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", nargs="+", default=["dien", "can-dien"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default="benchmarks/results/profile_cpu.md")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    schema = Schema.load(a.data)
    batches = training_batches(a.data, a.batch_size, a.steps + 10, device=dev, negatives=("hist",))
    sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    lines = [f"# Training-step profiles ({schema.dataset}, batch {a.batch_size}, {a.optimizer}, {dev.type})", "",
             f"Command: `python benchmarks/profile_step.py {' '.join(sys.argv[1:])}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {machine_description()}", ""]
    for name in a.models:
        torch.manual_seed(0)
        model = create_model(name, schema).to(dev)
        opt = make_optimizer(model, 1e-3, a.optimizer)
        for b in batches[:10]:
            train_step(model, b, opt)
        with profile(activities=acts) as prof:
            for b in batches[10:]:
                train_step(model, b, opt)
        table = prof.key_averages().table(sort_by=sort, row_limit=a.top, max_name_column_width=48)
        lines += [f"## {name}", "", "```", table.strip(), "```", ""]
        print(f"## {name}\n{table}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
