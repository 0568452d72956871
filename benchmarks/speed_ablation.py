"""Before/after numbers for the CPU training optimisations, measured in one process, interleaved.

For each model: ms per training step at batch 128 on the real prepared data with
    baseline   plain shuffling (no length bucketing) + torch's default (foreach) Adam
    +bucket    length bucketing in 20-batch windows (the official iterator's)
    +fused     bucketing + fused Adam (the defaults)
Rounds alternate the variants so load changes hit all alike; the median over rounds is reported.

    python benchmarks/speed_ablation.py --data data/beauty --models dnn can-dnn din dien can-dien
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from canctr.bench import training_batches
from canctr.data.schema import Schema
from canctr.env import machine_description
from canctr.models import create_model
from canctr.train.loop import train_step

VARIANTS = {"baseline": (0, False), "+bucket": (20, False), "+fused": (20, True)}


def step_ms(schema, data, model_name: str, bucket: int, fused: bool, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, schema)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    batches = training_batches(data, 128, warmup + steps, bucket=bucket, negatives=("hist",))
    for b in batches[:warmup]:
        train_step(model, b, opt)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        train_step(model, b, opt)
    return 1000 * (time.perf_counter() - t0) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", nargs="+", default=["dnn", "can-dnn", "din", "dien", "can-dien"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/speed_ablation_cpu")
    a = ap.parse_args()
    schema = Schema.load(a.data)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(a.rounds):
        for model in a.models:
            for name, (bucket, fused) in VARIANTS.items():
                ms = step_ms(schema, a.data, model, bucket, fused, a.steps, a.warmup)
                times.setdefault((model, name), []).append(ms)
    rows = []
    for model in a.models:
        base = statistics.median(times[(model, "baseline")])
        for name in VARIANTS:
            ms = statistics.median(times[(model, name)])
            rows.append({"model": model, "variant": name, "ms_per_step": ms, "samples_per_second": 128_000 / ms,
                         "speedup_vs_baseline": base / ms})
    meta = {"command": "python benchmarks/speed_ablation.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(),
            "data": Schema.load(a.data).dataset}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# CPU training optimisations, before/after ({meta['data']}, batch 128)", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", "",
             "| model | variant | ms/step | samples/s | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['ms_per_step']:.2f} | {r['samples_per_second']:,.0f} | "
              f"{r['speedup_vs_baseline']:.2f}× |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
