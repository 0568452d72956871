"""Before/after of the compiled recurrences (canctr/csrc/recurrent.cpp) in DIEN-family training and scoring,
turn about in one process: the same fixed batches, two models from the same seed (one per variant, each with
its own optimizer), `rounds` rounds of `steps` steps each, the Python loops (CANCTR_COMPILED=0: nn.GRU and
the hand-written AUGRU scan) and the compiled kernels alternating. Reports the median ms per training step and
per bulk scoring batch (no gradient) of each variant and their ratio.

    python benchmarks/compiled_recurrences_ab.py --data data/ml1m data/beauty data/taobao200 \
        --models dien can-dien --batch-sizes 128 1024 --out benchmarks/results/compiled_recurrences_ab_cpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch


def measure(data: str, model_name: str, batch_size: int, steps: int, rounds: int) -> dict:
    from canctr.bench import timed_steps, training_batches
    from canctr.data.schema import Schema
    from canctr.layers import compiled
    from canctr.memory import keep_freed_memory
    from canctr.models import create_model
    from canctr.models.base import negative_groups
    from canctr.train.optim import make_optimizer

    keep_freed_memory()
    schema = Schema.load(data)
    models, opts = {}, {}
    for variant in ("python", "compiled"):
        torch.manual_seed(0)
        models[variant] = create_model(model_name, schema)
        opts[variant] = make_optimizer(models[variant], 1e-3, "adam")
    batches = training_batches(data, batch_size, steps, negatives=negative_groups(models["python"]))
    compiled.warm_kernels(models["compiled"])
    train = {v: [] for v in models}
    score = {v: [] for v in models}
    for r in range(rounds + 1):  # round 0 warms up both variants and is not counted
        for variant, model in models.items():
            os.environ["CANCTR_COMPILED"] = "1" if variant == "compiled" else "0"
            model.train()
            t0 = time.perf_counter()
            timed_steps(model, iter(batches), opts[variant], len(batches))
            t1 = time.perf_counter()
            model.eval()
            with torch.inference_mode():
                for b in batches:
                    model(b)
            t2 = time.perf_counter()
            if r:
                train[variant].append(1000 * (t1 - t0) / len(batches))
                score[variant].append(1000 * (t2 - t1) / len(batches))
    os.environ.pop("CANCTR_COMPILED", None)
    row = {"data": Path(data).name, "model": model_name, "batch_size": batch_size, "steps": steps, "rounds": rounds}
    for v in models:
        row[f"train_ms_{v}"] = statistics.median(train[v])
        row[f"score_ms_{v}"] = statistics.median(score[v])
    row["train_speedup"] = row["train_ms_python"] / row["train_ms_compiled"]
    row["score_speedup"] = row["score_ms_python"] / row["score_ms_compiled"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--models", nargs="+", default=["dien", "can-dien"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    ap.add_argument("--steps", type=int, default=10, help="training steps (and scoring batches) per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="results stem (JSON + markdown)")
    a = ap.parse_args()
    from canctr.env import machine_description

    rows = []
    for data in a.data:
        for model_name in a.models:
            for bs in a.batch_sizes:
                rows.append(measure(data, model_name, bs, a.steps, a.rounds))
                print(rows[-1], flush=True)
    meta = {"command": "python benchmarks/compiled_recurrences_ab.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(),
            "threads": torch.get_num_threads()}
    lines = ["# DIEN's recurrences compiled (canctr/csrc/recurrent.cpp) against the Python loops, turn about", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", "",
             f"The same {a.steps} fixed training batches (length-bucketed, history cut at 100) per variant and round, "
             f"{a.rounds} rounds after one of warm-up, the variants alternating in one process; medians. python: "
             "nn.GRU for the extractor and the hand-written AUGRU scan (`CANCTR_COMPILED=0`); compiled: both "
             "recurrences' time loops, forward and backward, in the C++ kernels. train = a whole training step "
             "(forward, auxiliary loss, backward, Adam); score = the forward without gradient on the same batches.",
             "", "| data | model | batch | train ms python | train ms compiled | speed-up | score ms python "
             "| score ms compiled | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {r['model']} | {r['batch_size']} | {r['train_ms_python']:.1f} "
              f"| {r['train_ms_compiled']:.1f} | {r['train_speedup']:.2f}x | {r['score_ms_python']:.2f} "
              f"| {r['score_ms_compiled']:.2f} | {r['score_speedup']:.2f}x |" for r in rows]
    from canctr.bench import publish

    publish(a.out, {"meta": meta, "rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
