"""`canctr bench`: throughput, latency and memory, recorded with the machine and the command.

Every (model, batch size) training cell runs in its own process, so its peak memory (RSS high-water mark
on CPU, max allocated on GPU) is its own. Measured:
    train      samples/s in steady state (after warm-up steps) with the training loader (length bucketing)
    infer      one request of 1 user x C candidates: latency p50 / p99; bulk scoring of the test split
    loader     the BatchLoader alone (samples/s), to show data loading is not the bottleneck
    pipeline   `canctr prepare amazon` on a generated McAuley-format file (reviews/s end to end, peak memory of
               all its processes)
`run` measures the sections and returns one record; `to_markdown` and `write_results` write it. The command
(`canctr.cli.bench`) writes benchmarks/results/bench_<device>.json and .md (or --out). Nothing here needs a
source checkout: the pipeline's input comes from `canctr.data.gen_amazon`, which ships with the package.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from canctr.data.batch import Batch, BatchLoader, load_split
from canctr.data.schema import Schema
from canctr.env import machine_description
from canctr.memory import keep_freed_memory
from canctr.models import create_model
from canctr.models.base import negative_groups
from canctr.train.loop import resolve_device, train_step
from canctr.train.optim import make_optimizer

DEFAULT_MODELS = ("dnn", "can-dnn", "din", "dien", "can-dien")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


SECTIONS = ("train", "infer", "loader", "pipeline")


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """The machine's measured float32 matmul rate with torch's current threads: the best of `reps` [n, n] @ [n, n]
    products, in GFLOP/s (2 n^3 FLOPs each). What a training step's achieved FLOP/s is compared against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def untrained_run(model_name: str, schema: Schema, data: str | Path, run_dir: str | Path) -> Path:
    """A run directory holding a freshly initialised model (seed 0) for `schema`, its config naming `data`:
    what the scoring benchmarks load, since latency and throughput do not depend on the weights."""
    from canctr.train.checkpoint import save_checkpoint

    run_dir = Path(run_dir)
    torch.manual_seed(0)
    save_checkpoint(run_dir / "checkpoint", create_model(model_name, schema), schema)
    (run_dir / "config.json").write_text(json.dumps({"data": str(Path(data).resolve()), "model": model_name}))
    return run_dir


def train_cell(data: str, model_name: str, batch_size: int, device: str, warmup: int, steps: int,
               seed: int = 0, optimizer: str = "adam") -> dict[str, Any]:
    """Steady-state training throughput of one model at one batch size (run in a fresh process)."""
    keep_freed_memory()  # as `canctr train` does
    dev = resolve_device(device)
    schema = Schema.load(data)
    torch.manual_seed(seed)
    model = create_model(model_name, schema).to(dev)
    opt = make_optimizer(model, 1e-3, optimizer)
    loader = BatchLoader(load_split(data, "train", schema.spec), schema.spec, batch_size=batch_size, shuffle=True,
                         seed=seed, device=dev, max_len=100, bucket=20, drop_last=True,
                         negatives=negative_groups(model))
    batches = cycled(loader)
    timed_steps(model, batches, opt, warmup)
    seconds = timed_steps(model, batches, opt, steps, sync=lambda: _sync(dev))
    return {"model": model_name, "batch_size": batch_size, "steps": steps, "seconds": seconds,
            "samples_per_second": steps * batch_size / seconds, "step_ms": 1000 * seconds / steps,
            "peak_memory_mb": _peak_memory_mb(dev), "n_params": sum(p.numel() for p in model.parameters())}


def cycled(loader: BatchLoader) -> Iterator[Batch]:
    """The loader's epochs one after another, without end (epoch 0, 1, ...: each its own shuffle)."""
    epoch = 0
    while True:
        yield from loader.iter_epoch(epoch)
        epoch += 1


def timed_steps(model: torch.nn.Module, batches: Iterator[Batch], optimizer: torch.optim.Optimizer, steps: int, *,
                sync: Callable[[], None] | None = None) -> float:
    """Seconds taken by `steps` training steps on the next batches; `sync` (a CUDA synchronize, a DDP barrier)
    runs before the clock starts and before it stops. A warm-up is the same call with its result ignored."""
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, next(batches), optimizer)
    if sync is not None:
        sync()
    return time.perf_counter() - t0


def training_batches(data: str | Path, batch_size: int, n: int, *, bucket: int = 20, seed: int = 0,
                     device: torch.device | str = "cpu", negatives: tuple[str, ...] = (),
                     max_len: int | None = 100) -> list[Batch]:
    """The first n training batches (length-bucketed, full-size, crossing epochs if needed): the fixed batch
    sequence the benchmark scripts time every variant on (negatives: the groups DIEN needs, see
    models.base.negative_groups; max_len: the training history cut-off, 100 as `canctr train`'s default)."""
    spec = Schema.load(data).spec
    loader = BatchLoader(load_split(data, "train", spec), spec, batch_size=batch_size, shuffle=True, seed=seed,
                         max_len=max_len, bucket=bucket, drop_last=True, device=device, negatives=negatives)
    return list(itertools.islice(cycled(loader), n))


def request_batch(loader: BatchLoader, row: int, candidates: dict[str, np.ndarray], device: torch.device) -> Batch:
    """One user's features (row `row` of the loader's split) scored against C candidates: `candidates` maps
    each item-side categorical field to its [C] ids; every other field is the user's, repeated."""
    one = loader.batch(torch.tensor([row]))
    C = len(next(iter(candidates.values())))

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.expand(C, *t.shape[1:])

    sparse = {k: torch.from_numpy(candidates[k]) if k in candidates else rep(v) for k, v in one.sparse.items()}
    return Batch(
        label=torch.zeros(C), group=torch.zeros(C, dtype=torch.long), sparse=sparse,
        lengths={k: rep(v) for k, v in one.lengths.items()}, masks={k: rep(v) for k, v in one.masks.items()},
        dense=None if one.dense is None else rep(one.dense),
    ).to(device)


def infer_cell(data: str, model_name: str, device: str, candidates: int, requests: int,
               bulk_batch: int) -> dict[str, Any]:
    """Latency of 1 user x `candidates` requests (p50/p99) and bulk scoring throughput, eval mode."""
    keep_freed_memory()
    dev = resolve_device(device)
    schema = Schema.load(data)
    torch.manual_seed(0)
    model = create_model(model_name, schema).to(dev).eval()
    cols = load_split(data, "test", schema.spec)
    loader = BatchLoader(cols, schema.spec, batch_size=bulk_batch, shuffle=False, device=dev)
    rng = np.random.default_rng(0)
    # requests for users with a typical history: rows cycle over the split
    rows = rng.integers(0, cols.n, requests + 20)
    item_side = [f.name for f in schema.spec.categorical if f.side == "item"]
    lat = []
    with torch.inference_mode():
        for k, row in enumerate(rows):
            pick = rng.integers(0, cols.n, candidates)  # candidates: the item-side fields of random samples
            cand = {f: np.asarray(cols.ids[f][pick], np.int64) for f in item_side}
            batch = request_batch(loader, int(row), cand, dev)
            _sync(dev)
            t0 = time.perf_counter()
            model(batch).logits.sigmoid()
            _sync(dev)
            if k >= 20:  # warm-up
                lat.append(time.perf_counter() - t0)
        for b in loader.iter_epoch(0):  # warm-up pass
            model(b).logits.sigmoid()
        _sync(dev)
        t0 = time.perf_counter()
        for b in loader.iter_epoch(0):
            model(b).logits.sigmoid()
        _sync(dev)
        bulk = time.perf_counter() - t0
    lat_ms = np.array(lat) * 1000
    return {"model": model_name, "candidates": candidates, "requests": len(lat),
            "latency_p50_ms": float(np.percentile(lat_ms, 50)), "latency_p99_ms": float(np.percentile(lat_ms, 99)),
            "bulk_batch": bulk_batch, "bulk_samples_per_second": loader.n / bulk}


def loader_cell(data: str, device: str, batch_size: int) -> dict[str, Any]:
    """The loader alone: one epoch of training batches (bucketed, trimmed), samples/s."""
    dev = resolve_device(device)
    spec = Schema.load(data).spec
    loader = BatchLoader(load_split(data, "train", spec), spec, batch_size=batch_size, shuffle=True, seed=0,
                         device=dev, max_len=100, bucket=20)
    for _ in loader.iter_epoch(0):
        pass
    _sync(dev)
    t0 = time.perf_counter()
    n = 0
    for b in loader.iter_epoch(1):
        n += b.size
    _sync(dev)
    return {"batch_size": batch_size, "samples_per_second": n / (time.perf_counter() - t0)}


def _pss_bytes(pid: int) -> int | None:
    """Proportional set size: pages shared between processes (fork's copy-on-write) count once in total."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tree_memory_mb(root: int) -> float:
    """Memory of `root` and all its descendants now (Linux /proc), MB: the sum of their PSS, or of their RSS
    where smaps_rollup is unreadable (which counts shared pages once per process)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))  # fields[1]: ppid
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # fields[21]: rss pages
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        pss = _pss_bytes(pid)
        total += pss if pss is not None else rss.get(pid, 0)
        todo += children.get(pid, [])
    return total / 2**20


def _watch_tree_memory(proc: subprocess.Popen, every: float = 0.25) -> float:
    """Wait for proc, sampling its process tree's memory (summed PSS); the peak in MB (0 where /proc is missing).

    A sample reads smaps_rollup of every process in the tree, ~10 ms for a 2 GB one: every 0.25 s it takes
    a few % of one core from the 2-core run it measures (every 0.05 s it took ~20 %)."""
    peak = 0.0
    while proc.poll() is None:
        if Path("/proc").is_dir():
            peak = max(peak, _tree_memory_mb(proc.pid))
        time.sleep(every)
    return peak


def pipeline_cell(reviews: int, workdir: str) -> dict[str, Any]:
    """Generate (once) a McAuley-format file of `reviews` lines, then time `canctr prepare amazon` on it."""
    work = Path(workdir)
    raw = work / f"amazon_{reviews}"
    if not (raw / "reviews.json").exists():
        subprocess.run([sys.executable, "-m", "canctr.data.gen_amazon", "--reviews", str(reviews), "--out", str(raw)],
                       check=True)
    out = work / f"amazon_{reviews}_prepared"
    cmd = [sys.executable, "-m", "canctr.cli", "prepare", "amazon", "--reviews", str(raw / "reviews.json"),
           "--meta", str(raw / "meta.json"), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak_tree = _watch_tree_memory(proc)  # the command and its parse workers together
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    seconds = time.perf_counter() - t0
    # the tree's summed PSS; the largest single process' RSS high-water mark where /proc is missing
    peak = peak_tree or resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    return {"reviews": reviews, "input_mb": (raw / "reviews.json").stat().st_size / 2**20, "seconds": seconds,
            "reviews_per_second": reviews / seconds, "peak_memory_mb": peak, "output_mb": out_mb,
            "command": " ".join(["python", *cmd[1:]]).replace(str(work), "<work>")}


def _in_subprocess(fn: str, **kwargs: Any) -> dict[str, Any]:
    """Run `fn(**kwargs)` of this module in a fresh interpreter; its result comes back as JSON."""
    code = f"import json,sys; from canctr import bench; print(json.dumps(bench.{fn}(**json.loads(sys.argv[1]))))"
    res = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(data: str, *, models: Sequence[str] = DEFAULT_MODELS, device: str = "auto", large_batch: int = 0,
        optimizer: str = "adam", warmup: int = 10, steps: int = 100, candidates: int = 100, requests: int = 300,
        pipeline_reviews: Sequence[int] = (), sections: Sequence[str] = SECTIONS, workdir: str = "/tmp/canctr-bench",
        command: str = "") -> dict[str, Any]:
    """Measure `sections` (each training, inference and loader cell in a fresh interpreter; see the module
    docstring) and print one line per cell; the record `to_markdown` renders. large_batch 0: 1024 on CPU,
    4096 on GPU; command: how the run was asked for, kept in the record."""
    dev = resolve_device(device)
    big = large_batch or (4096 if dev.type == "cuda" else 1024)
    result: dict[str, Any] = {
        "command": command, "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_description(dev), "device": str(dev), "data": data,
        "dataset": Schema.load(data).dataset, "train": [], "infer": [], "loader": [], "pipeline": [],
    }
    for model in models if "train" in sections else ():
        for bs in (128, big):
            cell = _in_subprocess("train_cell", data=data, model_name=model, batch_size=bs, device=device,
                                  warmup=warmup, steps=steps, optimizer=optimizer)
            print(f"train  {model:<10} batch {bs:>5}: {cell['samples_per_second']:>10,.0f} samples/s  "
                  f"{cell['step_ms']:.2f} ms/step  peak {cell['peak_memory_mb']:,.0f} MB", flush=True)
            result["train"].append(cell)
    for model in models if "infer" in sections else ():
        cell = _in_subprocess("infer_cell", data=data, model_name=model, device=device,
                              candidates=candidates, requests=requests, bulk_batch=big)
        print(f"infer  {model:<10} 1x{candidates}: p50 {cell['latency_p50_ms']:.2f} ms  p99 "
              f"{cell['latency_p99_ms']:.2f} ms; bulk {cell['bulk_samples_per_second']:,.0f} samples/s", flush=True)
        result["infer"].append(cell)
    for bs in (128, big) if "loader" in sections else ():
        cell = _in_subprocess("loader_cell", data=data, device=device, batch_size=bs)
        print(f"loader batch {bs}: {cell['samples_per_second']:,.0f} samples/s", flush=True)
        result["loader"].append(cell)
    for n in pipeline_reviews if "pipeline" in sections else ():
        cell = pipeline_cell(n, workdir)
        print(f"pipeline {cell['reviews']:,} reviews: {cell['reviews_per_second']:,.0f} reviews/s, "
              f"peak memory {cell['peak_memory_mb']:,.0f} MB", flush=True)
        result["pipeline"].append(cell)
    return result


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# canctr bench on {r['device']}", "", f"Command: `{r['command']}`  ", f"Date: {r['date']}  ",
             f"Machine: {r['machine']}  ", f"Data: {r['dataset']} ({r['data']})", "",
             "## Training (steady state, length-bucketed batches)", "",
             "| model | batch | samples/s | ms/step | peak memory MB | params |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['batch_size']} | {c['samples_per_second']:,.0f} | {c['step_ms']:.2f} | "
              f"{c['peak_memory_mb']:,.0f} | {c['n_params']:,} |" for c in r["train"]]
    lines += ["", "## Inference", "", "| model | request | p50 ms | p99 ms | bulk batch | bulk samples/s |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {c['model']} | 1 user x {c['candidates']} | {c['latency_p50_ms']:.2f} | {c['latency_p99_ms']:.2f} | "
              f"{c['bulk_batch']} | {c['bulk_samples_per_second']:,.0f} |" for c in r["infer"]]
    if r["loader"]:
        def fastest(batch: int | None) -> tuple[float, str]:  # the fastest training cell (at this batch)
            cells = [c for c in r["train"] if batch is None or c["batch_size"] == batch]
            best = max(cells, key=lambda c: c["samples_per_second"], default=None)
            return (best["samples_per_second"], f"{best['model']} b{best['batch_size']}") if best else (
                float("nan"), "none")

        lines += ["", "## Loader alone", "",
                  "| batch | samples/s | × the fastest training at this batch | × the fastest training at any batch |",
                  "|---|---|---|---|"]
        for c in r["loader"]:
            (same, same_name), (best, best_name) = fastest(c["batch_size"]), fastest(None)
            sps = c["samples_per_second"]
            lines.append(f"| {c['batch_size']} | {sps:,.0f} | {sps / same:.1f} ({same_name}) | "
                         f"{sps / best:.1f} ({best_name}) |")
    if r["pipeline"]:
        lines += ["", "## Data pipeline (`canctr prepare amazon`, generated McAuley JSON)", "",
                  "| reviews | input MB | seconds | reviews/s | peak memory MB (PSS, all processes) | output MB "
                  "| peak / output |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['reviews']:,} | {c['input_mb']:,.0f} | {c['seconds']:.1f} | {c['reviews_per_second']:,.0f} | "
                  f"{c['peak_memory_mb']:,.0f} | {c['output_mb']:,.0f} | {c['peak_memory_mb'] / c['output_mb']:.1f} |"
                  for c in r["pipeline"]]
    return "\n".join(lines) + "\n"


def write_results(stem: str | Path, data: dict[str, Any], markdown: str) -> None:
    """A benchmark's record: STEM.json (the numbers) and STEM.md (the table, with its command)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown.rstrip("\n") + "\n")


def publish(stem: str | Path | None, data: dict[str, Any], markdown: str) -> None:
    """Print a benchmark's markdown and, given a stem (--out), record it there (`write_results`)."""
    print(markdown)
    if stem:
        write_results(stem, data, markdown)
