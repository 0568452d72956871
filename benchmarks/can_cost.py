"""What CAN's co-action costs on top of DIEN: training step time of can-dien vs dien, measured fairly.

Both models train side by side on the very same batches (length-bucketed, as in training): after
`--warmup` steps each, they take turns in chunks of `--chunk` steps (order alternating), so that this
machine's noise, which comes in bursts of seconds, hits both alike. Reported per batch size and optimizer:
total time per step of each model, their ratio, and the median and quartiles of the per-chunk ratios.

    python benchmarks/can_cost.py --data data/beauty --batch-sizes 128 1024 --optimizers adam lazy_adam
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from canctr.bench import training_batches
from canctr.data.schema import Schema
from canctr.env import machine_description
from canctr.models import create_model
from canctr.train.loop import train_step
from canctr.train.optim import make_optimizer


def interleaved(schema: Schema, batches: list, models: tuple[str, str], optimizer: str, warmup: int,
                chunk: int) -> tuple[list[float], list[float]]:
    """Seconds per chunk of each model, the two trained turn about over the same batch sequence."""
    runs = []
    for name in models:
        torch.manual_seed(0)
        model = create_model(name, schema)
        runs.append((model, make_optimizer(model, 1e-3, optimizer)))
    for model, opt in runs:
        for b in batches[:warmup]:
            train_step(model, b, opt)
    times: tuple[list[float], list[float]] = ([], [])
    for k, start in enumerate(range(warmup, len(batches) - chunk + 1, chunk)):
        for i in ((0, 1) if k % 2 == 0 else (1, 0)):
            model, opt = runs[i]
            t0 = time.perf_counter()
            for b in batches[start : start + chunk]:
                train_step(model, b, opt)
            times[i].append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", nargs=2, default=["dien", "can-dien"], metavar=("BASE", "CAN"))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    ap.add_argument("--optimizers", nargs="+", default=["adam", "lazy_adam"])
    ap.add_argument("--steps", type=int, default=400, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=10, help="steps per turn")
    ap.add_argument("--out", default="benchmarks/results/can_cost_cpu")
    a = ap.parse_args()
    schema = Schema.load(a.data)
    base, can = a.models
    rows = []
    for bs in a.batch_sizes:
        batches = training_batches(a.data, bs, a.warmup + a.steps, negatives=("hist",))
        for optimizer in a.optimizers:
            t_base, t_can = interleaved(schema, batches, (base, can), optimizer, a.warmup, a.chunk)
            per_chunk = sorted(c / b for b, c in zip(t_base, t_can))

            def q(f: float, per_chunk: list[float] = per_chunk) -> float:  # the f-quantile of the chunk ratios
                return per_chunk[min(len(per_chunk) - 1, int(f * len(per_chunk)))]

            steps = a.chunk * len(t_base)
            row = {"batch_size": bs, "optimizer": optimizer, "steps": steps, "chunk": a.chunk,
                   f"{base}_ms": 1000 * sum(t_base) / steps, f"{can}_ms": 1000 * sum(t_can) / steps,
                   "ratio": sum(t_can) / sum(t_base), "chunk_ratio_median": q(0.5),
                   "chunk_ratio_q25": q(0.25), "chunk_ratio_q75": q(0.75)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"command": "python benchmarks/can_cost.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(), "data": schema.dataset}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# {can} step time relative to {base} ({meta['data']})", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", "",
             f"| batch | optimizer | steps each | {base} ms/step | {can} ms/step | ratio "
             "| per-chunk ratio: median (IQR) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['optimizer']} | {r['steps']} | {r[f'{base}_ms']:.2f} | "
              f"{r[f'{can}_ms']:.2f} | {r['ratio']:.2f} | {r['chunk_ratio_median']:.2f} "
              f"({r['chunk_ratio_q25']:.2f}-{r['chunk_ratio_q75']:.2f}) |"
              for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
