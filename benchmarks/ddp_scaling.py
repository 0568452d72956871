"""Data-parallel scaling on one machine: training samples/s at 1 and 2 processes (torchrun, gloo, 1 thread each).

    python benchmarks/ddp_scaling.py --data data/beauty data/ml1m --out benchmarks/results/ddp_scaling_cpu

Each cell is a fresh job running the trainer's own pieces (canctr.train.distributed: DDP wrap, the rank's
stride of the global batch, the optimizer) for --warmup then --steps timed steps; samples/s is global samples
over rank 0's wall time between two barriers. Configurations, per (dataset, model):
    1 proc x 1 thread at global batch B       the baseline
    2 procs x 1 thread at global batch B      strong scaling (each rank B/2): the run that matches 1 process
    2 procs x 1 thread at global batch 2B     weak scaling (each rank B)
    1 proc x 2 threads at global batch B      the same 2 cores used by intra-op threads instead
efficiency = samples/s(2 procs) / (2 x samples/s(1 proc x 1 thread)). Rounds alternate the order. With
`adam` every embedding table's dense gradient is all-reduced each step; `lazy_adam` all-reduces only the
rows the batch touched (sparse gradients).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = (  # (name, processes, threads per process, global batch as a multiple of --batch-size)
    ("1 proc x 1 thread", 1, 1, 1),
    ("2 procs x 1 thread, same global batch", 2, 1, 1),
    ("2 procs x 1 thread, 2x global batch", 2, 1, 2),
    ("1 proc x 2 threads", 1, 2, 1),
)


def worker(a: argparse.Namespace) -> int:
    """One cell, in every rank of the job (or alone): time --steps training steps."""
    import torch

    from canctr.bench import cycled, timed_steps
    from canctr.data.batch import BatchLoader, load_split
    from canctr.data.schema import Schema
    from canctr.memory import keep_freed_memory
    from canctr.models import create_model
    from canctr.models.base import negative_groups
    from canctr.threads import set_threads
    from canctr.train import distributed
    from canctr.train.optim import make_optimizer

    keep_freed_memory()
    set_threads(a.threads)  # per process; distributed.setup keeps it (canctr.threads.requested_threads)
    ddp = distributed.setup("cpu")
    schema = Schema.load(a.data)
    torch.manual_seed(0)
    model = create_model(a.model, schema)
    opt = make_optimizer(model, 1e-3, a.optimizer)
    loader = BatchLoader(load_split(a.data, "train", schema.spec), schema.spec,
                         batch_size=ddp.per_rank_batch(a.batch_size), shuffle=True, seed=0, max_len=100, bucket=20,
                         drop_last=True, negatives=negative_groups(model), rank=ddp.rank, world_size=ddp.world_size)
    train_model = ddp.wrap(model)
    batches = cycled(loader)
    timed_steps(train_model, batches, opt, a.warmup)
    seconds = timed_steps(train_model, batches, opt, a.steps, sync=ddp.barrier)
    if ddp.is_main:
        Path(a.result).write_text(json.dumps({
            "seconds": seconds, "samples_per_second": a.steps * a.batch_size / seconds,
            "world_size": ddp.world_size, "threads_per_process": torch.get_num_threads(),
            "n_params": sum(p.numel() for p in model.parameters()),
        }))
    ddp.teardown()
    return 0


def cell(data: str, model: str, optimizer: str, procs: int, threads: int, batch: int, warmup: int,
         steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        job = [__file__, "--worker", "--data", data, "--model", model, "--batch-size", str(batch),
               "--optimizer", optimizer, "--warmup", str(warmup), "--steps", str(steps), "--result", str(result),
               "--threads", str(threads)]
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] if procs > 1 else []
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, *launch, *job], env=env, check=True, timeout=1800,
                       stdout=subprocess.DEVNULL)
        return json.loads(result.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", required=False, help="prepared directories")
    ap.add_argument("--models", default="can-dnn,can-dien")
    ap.add_argument("--optimizers", default="adam,lazy_adam")
    ap.add_argument("--batch-size", type=int, default=128, help="global batch of the baseline")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--optimizer", default="adam", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.data = a.data[0]
        return worker(a)

    from canctr.bench import write_results
    from canctr.data.schema import Schema
    from canctr.env import cpu_model

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=Path(__file__).parent).stdout.strip()
    command = "python benchmarks/ddp_scaling.py " + " ".join(sys.argv[1:])
    cells = []
    for data in a.data:
        dataset = Schema.load(data).dataset
        for model, optimizer in itertools.product(a.models.split(","), a.optimizers.split(",")):
            sps: dict[str, list[float]] = {name: [] for name, *_ in CONFIGS}
            for r in range(a.rounds):
                for name, procs, threads, mult in (CONFIGS if r % 2 == 0 else CONFIGS[::-1]):
                    res = cell(data, model, optimizer, procs, threads, a.batch_size * mult, a.warmup, a.steps)
                    sps[name].append(res["samples_per_second"])
                    print(f"{dataset} {model} {optimizer} {name}: {res['samples_per_second']:,.0f} samples/s",
                          flush=True)
            med = {k: statistics.median(v) for k, v in sps.items()}
            base = med[CONFIGS[0][0]]
            for name, procs, threads, mult in CONFIGS:
                cells.append({"dataset": dataset, "model": model, "optimizer": optimizer,
                              "n_params": res["n_params"], "config": name, "processes": procs,
                              "threads_per_process": threads, "global_batch": a.batch_size * mult,
                              "batch_per_process": a.batch_size * mult // procs, "samples_per_second": med[name],
                              "rounds": sps[name], "efficiency": med[name] / (2 * base) if procs == 2 else None,
                              "speedup": med[name] / base})
    lines = [
        "# Data-parallel scaling on CPU (torchrun, gloo)", "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M')} UTC; commit {commit}{' + uncommitted changes' if dirty else ''}; "
        f"machine: {cpu_model()}, {os.cpu_count()} cores; {a.warmup} warm-up + {a.steps} timed steps per cell, "
        f"median of {a.rounds} rounds (order alternated; other jobs may share the cores: the rounds show the "
        "spread).", "",
        "samples/s = global samples / rank 0's wall time; efficiency = samples/s(2 procs) / (2 x samples/s(1 proc "
        "x 1 thread)); speedup = samples/s / samples/s(1 proc x 1 thread).", "",
        "| dataset | model (parameters) | optimizer | configuration | global batch | per process | samples/s | speedup "
        "| efficiency | rounds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        eff = f"{c['efficiency']:.2f}" if c["efficiency"] is not None else ""
        lines.append(f"| {c['dataset']} | {c['model']} ({c['n_params'] / 1e6:.1f}M) | {c['optimizer']} | "
                     f"{c['config']} | {c['global_batch']} | "
                     f"{c['batch_per_process']} | {c['samples_per_second']:,.0f} | {c['speedup']:.2f} | {eff} | "
                     f"{' '.join(f'{x:,.0f}' for x in c['rounds'])} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if a.out:
        write_results(a.out, {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit,
                              "uncommitted_changes": bool(dirty), "machine": f"{cpu_model()}, {os.cpu_count()} cores",
                              "warmup": a.warmup, "steps": a.steps, "cells": cells}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
