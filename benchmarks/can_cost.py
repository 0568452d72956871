"""What CAN's co-action costs on top of DIEN: training step time of can-dien vs dien, measured fairly.

Both models train on the very same batches (length-bucketed, as in training); rounds alternate the two
models so that machine noise hits both alike; each round times `--steps` steps after `--warmup`. The
ratio of the medians is reported with the per-round spread, for each batch size and optimizer.

    python benchmarks/can_cost.py --data data/beauty --batch-sizes 128 1024 --optimizers adam lazy_adam
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from canctr.data.batch import BatchLoader, load_split
from canctr.data.schema import Schema
from canctr.env import machine_description
from canctr.models import create_model
from canctr.train.loop import train_step
from canctr.train.optim import make_optimizer


def time_steps(schema: Schema, batches: list, model_name: str, optimizer: str, warmup: int) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, schema)
    opt = make_optimizer(model, 1e-3, optimizer)
    for b in batches[:warmup]:
        train_step(model, b, opt)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        train_step(model, b, opt)
    return 1000 * (time.perf_counter() - t0) / (len(batches) - warmup)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", nargs=2, default=["dien", "can-dien"], metavar=("BASE", "CAN"))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    ap.add_argument("--optimizers", nargs="+", default=["adam", "lazy_adam"])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/can_cost_cpu")
    a = ap.parse_args()
    schema, arrays = Schema.load(a.data), load_split(a.data, "train")
    base, can = a.models
    rows = []
    for bs in a.batch_sizes:
        loader = BatchLoader(arrays, batch_size=bs, shuffle=True, seed=0, max_len=100, bucket=20, drop_last=True)
        need = a.warmup + a.steps
        batches, epoch = [], 0
        while len(batches) < need:
            batches += list(loader.iter_epoch(epoch))[: need - len(batches)]
            epoch += 1
        for optimizer in a.optimizers:
            ms: dict[str, list[float]] = {base: [], can: []}
            for r in range(a.rounds):
                for m in ((base, can) if r % 2 == 0 else (can, base)):
                    ms[m].append(time_steps(schema, batches, m, optimizer, a.warmup))
            per_round = [c / b for b, c in zip(ms[base], ms[can])]
            row = {"batch_size": bs, "optimizer": optimizer, f"{base}_ms": statistics.median(ms[base]),
                   f"{can}_ms": statistics.median(ms[can]), "rounds": a.rounds, "steps": a.steps,
                   "ratio": statistics.median(ms[can]) / statistics.median(ms[base]),
                   "ratio_min": min(per_round), "ratio_max": max(per_round)}
            rows.append(row)
            print(json.dumps(row))
    meta = {"command": "python benchmarks/can_cost.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine_description(), "data": schema.dataset}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# {can} step time relative to {base} ({meta['data']})", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", "",
             f"| batch | optimizer | {base} ms/step | {can} ms/step | ratio (medians) | per-round range |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['optimizer']} | {r[f'{base}_ms']:.2f} | {r[f'{can}_ms']:.2f} | "
              f"{r['ratio']:.2f} | {r['ratio_min']:.2f}-{r['ratio_max']:.2f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
