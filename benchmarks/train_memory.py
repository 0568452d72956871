"""Training memory against the number of samples: the same model trained a fixed number of steps on
datasets of different sizes, each in a fresh process.

Reported per run: peak RSS (ru_maxrss: every resident page, the memory-mapped data's page cache
included), peak anonymous RSS (RssAnon, sampled every 5 ms on a thread: what the process itself
allocates, the part that must not grow with the data) and samples/s. With `--generate N ...` the datasets are random
data of the Amazon preset (`canctr.data.random_data`, history max_len 50), written in bounded memory.

    python benchmarks/train_memory.py --generate 1000000 20000000 --model can-dien --steps 1000 \
        --out benchmarks/results/train_memory_cpu
    python benchmarks/train_memory.py --data data/ml1m --model can-dien --steps 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CELL = r"""
import json, resource, sys, time, torch
from canctr.data.batch import BatchLoader, load_split
from canctr.data.schema import Schema
from canctr.models import create_model
from canctr.models.base import negative_groups
from canctr.train.loop import train_step
from canctr.train.optim import make_optimizer

def rss_anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")

import threading
from canctr.memory import keep_freed_memory
keep_freed_memory()  # as `canctr train` does
peak = [rss_anon_mb()]
def sample():  # every 5 ms, so short-lived allocations (an epoch's order) are seen too
    while True:
        peak[0] = max(peak[0], rss_anon_mb())
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
data, model_name, bs, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
schema = Schema.load(data)
torch.manual_seed(0)
model = create_model(model_name, schema)
loader = BatchLoader(load_split(data, "train", schema.spec), schema.spec, batch_size=bs, shuffle=True, seed=0,
                     max_len=100, bucket=20, drop_last=True, negatives=negative_groups(model))
opt = make_optimizer(model, 1e-3)
n, t0 = 0, time.perf_counter()
epoch = 0
while n < steps:
    for b in loader.iter_epoch(epoch):
        train_step(model, b, opt)
        n += 1
        if n == steps:
            break
    epoch += 1
seconds = time.perf_counter() - t0
print(json.dumps({"samples": loader.n, "steps": n, "samples_per_second": n * bs / seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_rss_anon_mb": max(peak[0], rss_anon_mb())}))
"""


def run(data: str, model: str, batch_size: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CELL, data, model, str(batch_size), str(steps)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="*", default=[], help="prepared directories")
    ap.add_argument("--generate", type=int, nargs="*", default=[], help="train sample counts of random data")
    ap.add_argument("--workdir", default=None, help="where generated data goes (default: a temp dir)")
    ap.add_argument("--model", default="can-dien")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", default=None, help="results file stem (.json + .md)")
    a = ap.parse_args()
    from canctr.data.random_data import write_random_dataset
    from canctr.data.spec import behaviour_spec
    from canctr.env import machine_description

    rows = []
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        datas = [(d, d) for d in a.data]
        for n in a.generate:
            d = Path(tmp) / f"random_{n}"
            t0 = time.perf_counter()
            spec = dataclasses.replace(behaviour_spec(max_len=50), cartesian=[])  # no pair tables: not trained here
            write_random_dataset(spec, d, n_train=n, n_test=1000, seed=0,
                                 vocab={"user": 100_000, "item": 100_000, "cate": 1000})
            print(f"generated {n:,} samples in {time.perf_counter() - t0:.0f}s", flush=True)
            datas.append((f"random, {n:,} samples", str(d)))
        for label, d in datas:
            disk = sum(f.stat().st_size for f in Path(d).rglob("*.npy"))
            r = run(d, a.model, a.batch_size, a.steps)
            rows.append({"data": label, "disk_mb": disk / 2**20, **r})
            print(rows[-1], flush=True)
    meta = {"command": "python benchmarks/train_memory.py " + " ".join(sys.argv[1:]), "model": a.model,
            "batch_size": a.batch_size, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description()}
    lines = [f"# Training memory against data size ({a.model}, batch {a.batch_size}, {a.steps} steps)", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", "",
             "Peak RSS counts the memory-mapped data's resident page cache (shared, reclaimable); peak anonymous "
             "RSS is what the process allocates itself.", "",
             "| data | train samples | data on disk MB | peak RSS MB | peak anonymous RSS MB | samples/s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {r['samples']:,} | {r['disk_mb']:,.0f} | {r['peak_rss_mb']:,.0f} "
              f"| {r['peak_rss_anon_mb']:,.0f} | {r['samples_per_second']:,.0f} |" for r in rows]
    from canctr.bench import publish

    publish(a.out, {"meta": meta, "rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
