"""Training step time of the working tree against an earlier commit, on the same data and batches.

The earlier commit is checked out into a temporary git worktree; each (version, model) cell runs in a
fresh interpreter whose PYTHONPATH points at that version's src/, and rounds alternate the versions so
machine noise hits both alike. Reports the median ms/step per cell and the speed-up.

    python benchmarks/before_after.py --before 134f500 --data data/beauty --models dien can-dien
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CELL = r"""
import json, resource, sys, time, torch
from canctr.data.batch import BatchLoader, load_split
from canctr.data.schema import Schema
from canctr.models import create_model
from canctr.train.loop import train_step
try:
    from canctr.train.optim import make_optimizer
except ImportError:  # versions before train/optim.py
    from canctr.train.loop import make_optimizer
data, model_name, bs, steps, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
try:  # what `canctr train` does at start, in versions that have it (CANCTR_MALLOC_TUNING=0 turns it off)
    try:
        from canctr.memory import keep_freed_memory
    except ImportError:  # its first home
        from canctr.train.allocator import keep_freed_memory
    tuned = keep_freed_memory()
except ImportError:
    tuned = False
schema = Schema.load(data)
torch.manual_seed(0)
model = create_model(model_name, schema)
if hasattr(schema, "spec"):  # the ragged store and keyed batch (feature spec)
    from canctr.models.base import negative_groups
    loader = BatchLoader(load_split(data, "train", schema.spec), schema.spec, batch_size=bs, shuffle=True, seed=0,
                         max_len=100, bucket=20, drop_last=True, negatives=negative_groups(model))
else:
    loader = BatchLoader(load_split(data, "train"), batch_size=bs, shuffle=True, seed=0, max_len=100, bucket=20,
                         drop_last=True)
opt = make_optimizer(model, 1e-3)
# the loader is timed too: this is what training costs per step, batch building included
it = loader.iter_epoch(0)
for _, b in zip(range(warmup), it):
    train_step(model, b, opt)
faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t0 = time.perf_counter()
n = 0
for _, b in zip(range(steps), it):
    train_step(model, b, opt)
    n += 1
print(json.dumps({"ms": 1000 * (time.perf_counter() - t0) / n, "tuned": tuned,
                  "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / n,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_cell(src: Path, data: str, model: str, bs: int, steps: int, warmup: int,
             untuned: bool = False) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    if untuned:
        env["CANCTR_MALLOC_TUNING"] = "0"
    out = subprocess.run([sys.executable, "-c", CELL, data, model, str(bs), str(steps), str(warmup)],
                         env=env, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="git revision to compare against")
    ap.add_argument("--data", required=True)
    ap.add_argument("--before-data", default=None,
                    help="the same dataset prepared by the earlier version, when the format changed (default: --data)")
    ap.add_argument("--models", nargs="+", default=["dien", "can-dien"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--untuned", action="store_true",
                    help="also time the working tree with the allocator tuning off (CANCTR_MALLOC_TUNING=0)")
    ap.add_argument("--out", default=None, help="results stem (JSON + markdown)")
    a = ap.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", a.before], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), rev], cwd=ROOT, check=True, capture_output=True)
        try:
            srcs = {"before": wt / "src", "after": ROOT / "src", "untuned": ROOT / "src"}
            datas = {"before": a.before_data or a.data, "after": a.data, "untuned": a.data}
            versions = ("before", "after", "untuned") if a.untuned else ("before", "after")
            ms: dict[tuple[str, str], list[float]] = {}
            rss: dict[tuple[str, str], list[float]] = {}
            faults: dict[tuple[str, str], list[float]] = {}
            for r in range(a.rounds):
                for model in a.models:
                    for version in (versions if r % 2 == 0 else versions[::-1]):
                        cell = run_cell(srcs[version], datas[version], model, a.batch_size, a.steps, a.warmup,
                                        untuned=version == "untuned")
                        ms.setdefault((model, version), []).append(cell["ms"])
                        rss.setdefault((model, version), []).append(cell["peak_rss_mb"])
                        faults.setdefault((model, version), []).append(cell.get("faults_per_step", float("nan")))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=False)
    from canctr.env import machine_description

    rows = [{"model": m, **{f"{v}_ms": statistics.median(ms[(m, v)]) for v in versions},
             **{f"{v}_rounds": ms[(m, v)] for v in versions},
             **{f"{v}_peak_rss_mb": max(rss[(m, v)]) for v in versions},
             **{f"{v}_faults_per_step": statistics.median(faults[(m, v)]) for v in versions}}
            for m in a.models]
    for r in rows:
        r["speedup"] = r["before_ms"] / r["after_ms"]
    meta = {"command": "python benchmarks/before_after.py " + " ".join(sys.argv[1:]), "before": rev,
            "after": f"{head} + working tree", "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine_description(), "batch_size": a.batch_size}
    lines = [f"# Step time before ({rev}) and after ({head}), batch {a.batch_size}, {Path(a.data).name}", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", "",
             "Each cell is a fresh process training `--steps` steps after `--warmup` (batch building included); "
             "rounds alternate the versions; medians of the rounds, peak RSS the largest; faults = minor page "
             "faults per timed step (median of the rounds).", "",
             "| model | before ms/step | after ms/step | speed-up | before samples/s | after samples/s "
             "| before peak RSS MB | after peak RSS MB | before faults | after faults |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['before_ms']:.2f} | {r['after_ms']:.2f} | {r['speedup']:.2f}× "
              f"| {1000 * a.batch_size / r['before_ms']:,.0f} | {1000 * a.batch_size / r['after_ms']:,.0f} "
              f"| {r['before_peak_rss_mb']:,.0f} | {r['after_peak_rss_mb']:,.0f} "
              f"| {r['before_faults_per_step']:.0f} | {r['after_faults_per_step']:.0f} |" for r in rows]
    if a.untuned:
        lines += ["", "The working tree with the allocator tuning off (`CANCTR_MALLOC_TUNING=0`, "
                  "canctr/memory.py), timed in the same rounds:", "",
                  "| model | untuned ms/step | after / untuned speed-up | untuned faults |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['untuned_ms']:.2f} | {r['untuned_ms'] / r['after_ms']:.2f}× "
                  f"| {r['untuned_faults_per_step']:.0f} |" for r in rows]
    from canctr.bench import publish

    publish(a.out, {"meta": meta, "rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
