"""Training on a prepared set larger than the machine's memory: samples/s and peak RSS against a small set
that sits in the page cache (issue 12, "data larger than memory").

    python benchmarks/beyond_ram.py --big data/big --samples 118000000 --steps 400 \
        --out benchmarks/results/beyond_ram_cpu

1. `--big` (written once, reused if its schema.json exists): a random CAN-shaped set (user, item, cate and
   a 2-field history of up to 50 positions, 232 bytes a sample) of `--samples` training samples, written
   through the store's `SplitWriter` in bounded memory with a progress bar. Drawing Zipf ids is slow
   (0.16 M samples/s), so `--distinct` chunks of 1 M samples are drawn and the split cycles through them;
   the bytes on disk, and so the reads, are those of a set of that size. A small set (`--small` samples,
   the same generator) is written beside it.
2. Each cell trains `--steps` steps of `--model` in its own process (fresh RSS high-water mark, torch's
   threads), on length-bucketed shuffled batches as `canctr train` makes them:
   small set in the page cache (read once before), big set with the page cache dropped first and the
   block-shuffled order (`--shuffle-blocks`), and, for contrast, the big set with the strided windows
   (`--shuffle-blocks 0`, fewer steps): every batch then reads random pages across the whole file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CELL = r"""
import json, resource, sys, time, torch
from canctr.data.batch import BatchLoader, load_split
from canctr.data.schema import Schema
from canctr.memory import keep_freed_memory
from canctr.models import create_model
from canctr.train.loop import train_step
from canctr.train.optim import make_optimizer
data, model_name, bs, steps, blocks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
keep_freed_memory()
schema = Schema.load(data)
torch.manual_seed(0)
model = create_model(model_name, schema)
opt = make_optimizer(model, 1e-3, "lazy_adam")
loader = BatchLoader(load_split(data, "train", schema.spec), schema.spec, batch_size=bs, shuffle=True, seed=3,
                     max_len=100, bucket=20, drop_last=True, shuffle_blocks=blocks)
it = loader.iter_epoch(0)
for _ in range(5):
    train_step(model, next(it), opt)
t = time.perf_counter()
for _ in range(steps):
    train_step(model, next(it), opt)
sec = time.perf_counter() - t
print(json.dumps({"samples_per_s": steps * bs / sec, "seconds": sec,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def spec():  # noqa: ANN201
    from canctr.data.spec import FeatureSpec, Field, Pair, SequenceGroup

    return FeatureSpec(
        fields=[Field("user", side="user"), Field("item", side="item"), Field("cate", side="item"),
                Field("hist_item", kind="sequence", side="user", table="item", group="hist"),
                Field("hist_cate", kind="sequence", side="user", table="cate", group="hist")],
        sequences=[SequenceGroup("hist", 50)],
        coaction=[Pair("item", "hist_item"), Pair("cate", "hist_cate")],
    )


VOCAB = {"user": 100_000, "item": 1_000_000, "cate": 1_000}


def write_set(out: Path, n_train: int, distinct: int, seed: int) -> float:
    """A random set of n_train training samples (cycling through `distinct` drawn chunks of 1 M) and 100 k test
    samples; returns the seconds it took."""
    from tqdm import tqdm

    from canctr.data.random_data import random_columns
    from canctr.data.schema import Schema
    from canctr.data.store import SplitWriter

    t = time.perf_counter()
    s = spec()
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    pool = [random_columns(s, VOCAB, min(chunk, n_train), rng) for _ in range(min(distinct, -(-n_train // chunk)))]
    with SplitWriter(out, "train", s) as w, tqdm(total=n_train, unit="sample", desc=f"write {out}") as bar:
        done, i = 0, 0
        while done < n_train:
            c = pool[i % len(pool)]
            k = min(c.n, n_train - done)
            if k < c.n:  # the last, partial chunk
                lens = np.diff(c.offsets["hist"])[:k]
                off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
                c = type(c)(label=c.label[:k], group=c.group[:k], ids={f: v[:k] for f, v in c.ids.items()},
                            offsets={"hist": off}, values={f: v[: off[-1]] for f, v in c.values.items()})
            w.append(c)
            done, i = done + k, i + 1
            bar.update(k)
    with SplitWriter(out, "test", s) as w:
        w.append(random_columns(s, VOCAB, 100_000, rng))
    Schema(dataset=f"random:{out.name}", protocol="random", seed=seed, spec=s, vocab=VOCAB,
           splits={"train": n_train, "test": 100_000}).save(out / "schema.json")
    return time.perf_counter() - t


def disk_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*.npy"))


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def warm(d: Path) -> None:
    for p in (d / "train").glob("*.npy"):
        with open(p, "rb") as fh:
            while fh.read(64 << 20):
                pass


def run_cell(data: Path, model: str, bs: int, steps: int, blocks: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CELL, str(data), model, str(bs), str(steps), str(blocks)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big", default="data/big")
    ap.add_argument("--small", type=int, default=2_000_000)
    ap.add_argument("--samples", type=int, default=118_000_000)
    ap.add_argument("--distinct", type=int, default=8)
    ap.add_argument("--model", default="can-dnn")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--strided-steps", type=int, default=40)
    ap.add_argument("--shuffle-blocks", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/beyond_ram_cpu")
    a = ap.parse_args()
    big = Path(a.big)
    small = big.with_name(big.name + "_small")
    wrote = {}
    for d, n in ((big, a.samples), (small, a.small)):
        if not (d / "schema.json").exists():
            shutil.rmtree(d, ignore_errors=True)
            wrote[str(d)] = write_set(d, n, a.distinct, seed=0)
    sizes = {str(d): disk_bytes(d) for d in (big, small)}
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cells = []
    warm(small)
    cells.append({"set": "small, in the page cache", "blocks": a.shuffle_blocks,
                  **run_cell(small, a.model, a.batch_size, a.steps, a.shuffle_blocks)})
    dropped = drop_page_cache()
    cells.append({"set": "big, page cache dropped first", "blocks": a.shuffle_blocks,
                  **run_cell(big, a.model, a.batch_size, a.steps, a.shuffle_blocks)})
    warm(small)
    cells.append({"set": "small, in the page cache (again)", "blocks": a.shuffle_blocks,
                  **run_cell(small, a.model, a.batch_size, a.steps, a.shuffle_blocks)})
    drop_page_cache()
    cells.append({"set": "big, page cache dropped first, strided windows", "blocks": 0,
                  **run_cell(big, a.model, a.batch_size, a.strided_steps, 0)})
    from canctr.env import machine_description

    command = "python benchmarks/beyond_ram.py " + " ".join(sys.argv[1:])
    small_rate = min(c["samples_per_s"] for c in cells if c["set"].startswith("small"))
    big_rate = cells[1]["samples_per_s"]
    result = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(),
              "memory_bytes": mem, "disk_bytes": sizes, "write_seconds": wrote, "page_cache_dropped": dropped,
              "cells": cells, "big_over_small": big_rate / small_rate}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Training on a set larger than memory (CPU)", "",
        f"Command: `{command}`  ", f"Date: {result['date']}; machine: {result['machine']}, "
        f"{mem / 2**30:.1f} GiB of memory", "",
        f"Big set: {a.samples:,} training samples, {sizes[str(big)] / 2**30:.1f} GiB on disk (more than the "
        f"machine's memory); small set: {a.small:,} samples, {sizes[str(small)] / 2**30:.2f} GiB. "
        f"Writing them took {', '.join(f'{v:.0f} s ({k})' for k, v in wrote.items()) or 'nothing (reused)'}. "
        f"Model {a.model}, batch {a.batch_size}, lazy Adam, {a.steps} timed steps after 5 (strided: "
        f"{a.strided_steps}); page cache dropped before each big-set cell: {dropped}.", "",
        "| set | order | samples/s | peak RSS MB |", "|---|---|---|---|",
        *(f"| {c['set']} | {'blocks of ' + str(c['blocks']) if c['blocks'] else 'strided windows'} | "
          f"{c['samples_per_s']:,.0f} | {c['peak_rss_mb']:,.0f} |" for c in cells), "",
        f"Big set with block-shuffled windows / small in-cache set (the slower of its two runs): "
        f"**{result['big_over_small']:.2f}** (target >= 0.80).", "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
